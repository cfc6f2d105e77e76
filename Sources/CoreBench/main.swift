// shredvault-corebench — the vault core measured in process (no HTTP), in four modes:
//
// - write-read (default): N records of a fixed payload size written by C concurrent callers
//   through the group-commit writer (one `write` each), then read back (each read audited
//   durably).
// - expiry: N records written (writeBatch) with one retention into ONE expiry bucket; checks
//   that a sample is readable until 1 ms before its `expires_at` and `notFound` from it on
//   (no sweep), then moves past the bucket's end and times `sweep()`.
// - rotation: N records, ~20 per subject; erases subjects totalling --erase-percent of the
//   records, then times `rotate()` (re-key of dirty buckets, new TRKs and master key,
//   keystore compaction).
// - memory: N records written, then the process RSS (VmRSS, VmHWM, anonymous vs file pages)
//   after population, after a sample of reads, and after `close()`.
//
// The three new modes run the vault on a manual clock set one hour into a simulated day,
// with a one-day bucket width and one retention for every record, so all records share ONE
// expiry bucket. While writing, the clock runs in real time from that instant (`--clock
// running`, the default: record ids are time-ordered, as a daemon writes them, and the
// `expires_at` values span the population's duration) or stays frozen (`--clock frozen`:
// one `expires_at` for all). It is then set by hand to the instants checked, and runs in
// real time again from past the bucket's end during the sweep and the rotation, so the
// vault's own millisecond figures (SweepSummary) are real durations.
//
// Usage: shredvault-corebench [--mode write-read|expiry|rotation|memory] [--records N]
//          [--concurrency C] [--payload BYTES] [--batch MAX] [--write-batch RECORDS]
//          [--per-subject K] [--erase-percent P] [--retention-days D] [--samples S]
//          [--clock running|frozen] [--dir PATH]
import CVaultSystem
import Foundation
import Synchronization
import Locking
import Sodium
import VaultCore
#if canImport(Glibc)
import Glibc
#endif

enum Mode: String {
    case writeRead = "write-read", expiry, rotation, memory
}

let usage = """
usage: shredvault-corebench [--mode write-read|expiry|rotation|memory] [--records N] [--concurrency C]
                            [--payload BYTES] [--batch MAX] [--write-batch RECORDS] [--per-subject K]
                            [--erase-percent P] [--retention-days D] [--samples S] [--clock running|frozen]
                            [--dir PATH]
  --mode            write-read (default): write with C callers, read back; expiry, rotation, memory: see above
  --records         records to write (default 100000 for write-read, 1000000 otherwise)
  --concurrency     concurrent callers (default 256 for write-read; 8 writeBatch tasks otherwise)
  --payload         payload bytes per record (default 1024)
  --batch           most operations per group commit (VaultConfiguration.maxBatch, default 256)
  --write-batch     records per writeBatch call in the expiry/rotation/memory modes (default 500)
  --per-subject     records per subject in the expiry/rotation/memory modes (default 20)
  --erase-percent   rotation: share of the records erased, by whole subjects (default 1)
  --rotation-chunk  rotation: records re-wrapped per transaction (default: the vault's, 10000)
  --retention-days  retention of every record in the expiry/rotation/memory modes (default 30)
  --samples         records sampled for the read checks (default 1000)
  --clock           vault clock while writing: running (default; real time from a fixed simulated
                    instant: time-ordered ids, as a daemon writes them) or frozen (every record in
                    the same simulated millisecond: one expires_at, ids random within it)
  --dir             keep the vault in PATH (not removed); default a temporary directory, removed
"""

struct Options {
    var mode = Mode.writeRead
    var records: Int?
    var concurrency: Int?
    var payload = 1024
    var batch = 256
    var writeBatch = 500
    var perSubject = 20
    var erasePercent = 1.0
    var retentionDays: Int64 = 30
    var samples = 1000
    var rotationChunk: Int? = nil
    var dir: String? = nil
    /// While writing: `running` (real time from a fixed simulated instant, so ids are time
    /// ordered as in a daemon) or `frozen` (one simulated millisecond: every record has the
    /// same `expires_at`, and ids are random within that millisecond).
    var clock = "running"

    init(_ args: [String]) {
        var i = 1
        func value() -> String {
            i += 1
            guard i < args.count else { fatalError("missing value for \(args[i - 1])") }
            return args[i]
        }
        func number<T: LosslessStringConvertible>(_ name: String) -> T {
            let text = value()
            guard let v = T(text) else { fatalError("\(name): not a number: \(text)") }
            return v
        }
        while i < args.count {
            switch args[i] {
            case "--mode":
                let text = value()
                guard let m = Mode(rawValue: text) else { fatalError("unknown mode \(text)\n\(usage)") }
                mode = m
            case "--records": records = number("--records")
            case "--concurrency": concurrency = number("--concurrency")
            case "--payload": payload = number("--payload")
            case "--batch": batch = number("--batch")
            case "--write-batch": writeBatch = number("--write-batch")
            case "--per-subject": perSubject = number("--per-subject")
            case "--erase-percent": erasePercent = number("--erase-percent")
            case "--retention-days": retentionDays = number("--retention-days")
            case "--samples": samples = number("--samples")
            case "--rotation-chunk": rotationChunk = number("--rotation-chunk")
            case "--dir": dir = value()
            case "--clock":
                clock = value()
                guard ["running", "frozen"].contains(clock) else { fatalError("--clock: running or frozen") }
            case "-h", "--help":
                print(usage)
                exit(0)
            default: fatalError("unknown option \(args[i])\n\(usage)")
            }
            i += 1
        }
        precondition(writeBatch >= 1 && perSubject >= 1 && samples >= 1 && retentionDays >= 1 && payload >= 0)
    }
}

func seconds(since start: ContinuousClock.Instant) -> Double {
    let d = ContinuousClock.now - start
    return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
}

/// A line on stdout, written at once (unbuffered), so a long run can be followed live.
func line(_ text: String) { FileHandle.standardOutput.write(Data((text + "\n").utf8)) }
func emit(_ key: String, _ value: String) { line("\(key) \(value)") }
func emit(_ key: String, _ value: Int) { line("\(key) \(value)") }
func emit(_ key: String, _ value: Double, _ format: String = "%.3f") { line("\(key) \(String(format: format, value))") }
func progress(_ text: String) {
    FileHandle.standardError.write(Data("# \(text)\n".utf8))
}

// MARK: - A clock under the benchmark's control

/// The vault's clock, moved by hand (as Tests/VaultCoreTests/Support.swift's ManualClock):
/// frozen at a set instant, or running in real time from it (`run`), so that operations
/// which time themselves with the vault clock (sweep) report real durations.
final class BenchClock: Sendable {
    private struct State {
        var ms: Int64
        var runningSince: ContinuousClock.Instant?
    }
    private let state: Locked<State>

    init(_ start: Int64) { state = Locked(State(ms: start, runningSince: nil)) }

    private static func elapsed(_ s: State) -> Int64 {
        guard let since = s.runningSince else { return 0 }
        let d = ContinuousClock.now - since
        return d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000
    }

    var now: Int64 { state.withLock { $0.ms + BenchClock.elapsed($0) } }

    /// Freezes the clock at `ms`.
    func set(_ ms: Int64) { state.withLock { $0 = State(ms: ms, runningSince: nil) } }

    /// Lets the clock run in real time from where it is.
    func run() {
        state.withLock { s in
            s.ms += BenchClock.elapsed(s)
            s.runningSince = .now
        }
    }

    var vaultClock: VaultClock { VaultClock { self.now } }
}

// MARK: - Process memory

/// The peaks of VmRSS and RssAnon over one phase, sampled every 10 ms on a thread of its own
/// (VmHWM cannot be reset per phase everywhere, and says nothing of anonymous memory).
final class PeakSampler: @unchecked Sendable {
    // unchecked: the fields are guarded by `lock`.
    private let lock = NSLock()
    private var running = true
    private var rss = 0, anon = 0
    let anonAtStart: Int
    private let done = DispatchSemaphore(value: 0)

    init() {
        anonAtStart = memoryStatus()["RssAnon"] ?? 0
        Thread.detachNewThread { [self] in
            while true {
                let m = memoryStatus()
                lock.lock()
                rss = max(rss, m["VmRSS"] ?? 0)
                anon = max(anon, m["RssAnon"] ?? 0)
                let go = running
                lock.unlock()
                if !go { break }
                usleep(10_000)
            }
            done.signal()
        }
    }

    /// Stops sampling; the peaks in KiB.
    func stop() -> (rss: Int, anon: Int, anonAtStart: Int) {
        lock.lock()
        running = false
        lock.unlock()
        done.wait()
        lock.lock()
        defer { lock.unlock() }
        return (rss, anon, anonAtStart)
    }
}

/// Fields of /proc/self/status in KiB (VmRSS, VmHWM, RssAnon, RssFile, RssShmem).
func memoryStatus() -> [String: Int] {
    let text = procText("/proc/self/status")
    guard !text.isEmpty else { return [:] }
    var out: [String: Int] = [:]
    for line in text.split(separator: "\n") {
        let parts = line.split(separator: ":", maxSplits: 1)
        guard parts.count == 2 else { continue }
        let name = String(parts[0])
        guard ["VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"].contains(name) else { continue }
        let fields = parts[1].split(whereSeparator: { $0 == " " || $0 == "\t" })
        if let v = fields.first.flatMap({ Int($0) }) { out[name] = v }
    }
    return out
}

/// The whole text of a /proc file (they report size 0: read until EOF).
func procText(_ path: String) -> String {
    guard let f = fopen(path, "r") else { return "" }
    defer { fclose(f) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, f) }
        if n <= 0 { break }
        bytes += chunk[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// Resident KiB of the mappings of each LMDB data file (/proc/self/smaps), by store.
func lmdbResident() -> [String: Int] {
    var out: [String: Int] = [:]
    var current: String? = nil
    for line in procText("/proc/self/smaps").split(separator: "\n") {
        if let first = line.first, first.isHexDigit, line.contains("-") {
            // A mapping header: "start-end perms offset dev inode   path".
            if line.hasSuffix("/keystore/data.mdb") { current = "keystore" }
            else if line.hasSuffix("/records/data.mdb") { current = "records" }
            else { current = nil }
        } else if let store = current, line.hasPrefix("Rss:") {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if fields.count >= 2, let v = Int(fields[1]) { out[store, default: 0] += v }
        }
    }
    return out
}

func emitMemory(_ stage: String) {
    let m = memoryStatus()
    func mib(_ k: String) -> Double { Double(m[k] ?? -1024) / 1024 }
    emit("memory.\(stage).rss_mib", mib("VmRSS"), "%.1f")
    emit("memory.\(stage).hwm_mib", mib("VmHWM"), "%.1f")
    emit("memory.\(stage).rss_anon_mib", mib("RssAnon"), "%.1f")
    emit("memory.\(stage).rss_file_mib", mib("RssFile"), "%.1f")
    let lmdb = lmdbResident()
    emit("memory.\(stage).rss_lmdb_keystore_map_mib", Double(lmdb["keystore"] ?? 0) / 1024, "%.1f")
    emit("memory.\(stage).rss_lmdb_records_map_mib", Double(lmdb["records"] ?? 0) / 1024, "%.1f")
    // glibc's per-arena totals ("system bytes" held, "in use bytes") go to stderr.
    progress("malloc_stats at \(stage):")
    Glibc_malloc.stats()
}

/// glibc's malloc_stats and malloc_trim (malloc.h is not in Swift's Glibc module: CVaultSystem).
enum Glibc_malloc {
    static func stats() { shredvault_malloc_stats() }
    static func trim() { _ = shredvault_malloc_trim() }
}

func fileBytes(_ path: String) -> (apparent: Int, allocated: Int) {
    var st = stat()
    guard stat(path, &st) == 0 else { return (0, 0) }
    return (Int(st.st_size), Int(st.st_blocks) * 512)
}

func emitStoreSizes(_ stage: String, dataDirectory: String) {
    for store in ["keystore", "records"] {
        let (apparent, allocated) = fileBytes(dataDirectory + "/\(store)/data.mdb")
        emit("store.\(stage).\(store)_mib", Double(apparent) / 1_048_576, "%.1f")
        if allocated < apparent { emit("store.\(stage).\(store)_allocated_mib", Double(allocated) / 1_048_576, "%.1f") }
    }
}

// MARK: - Shared steps of the new modes

final class Counter: Sendable {
    let value = Atomic<Int>(0)
}

struct Population {
    var written = 0
    var failed = 0
    var firstError: String?
    /// (index of the record in the run, its receipt), about `samples` of them spread evenly.
    var samples: [(Int, RecordReceipt)] = []
}

/// Writes `count` records with `tasks` concurrent tasks, each calling `writeBatch` with
/// `batchSize` records at a time over its own contiguous range of indices. Record i belongs
/// to subject "customer-(i / perSubject)".
func populate(_ vault: Vault, tenant: TenantID, count: Int, tasks: Int, batchSize: Int, body: SensitiveBytes,
              perSubject: Int, retentionSeconds: Int64?, samples: Int) async throws -> Population {
    // A prime stride, so the sample does not alias with subjects (K records each) or with
    // the evenly spaced erased subjects.
    var stride = max(2, count / samples)
    func isPrime(_ n: Int) -> Bool { n >= 2 && !(2..<max(2, Int(Double(n).squareRoot()) + 1)).contains { n % $0 == 0 } }
    while !isPrime(stride) { stride += 1 }
    let sampleEvery = stride
    let done = Counter()
    let started = ContinuousClock.now
    let reporter = Task {
        var last = 0
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(10))
            if Task.isCancelled { break }
            let n = done.value.load(ordering: .relaxed)
            progress(String(format: "populate: %d records after %.0f s (%.0f/s over the last 10 s)",
                            n, seconds(since: started), Double(n - last) / 10))
            last = n
        }
    }
    defer { reporter.cancel() }
    return try await withThrowingTaskGroup(of: Population.self) { group in
        let per = count / tasks
        var start = 0
        for w in 0..<tasks {
            let n = per + (w < count % tasks ? 1 : 0)
            let range = start..<(start + n)
            start += n
            group.addTask {
                var mine = Population()
                var i = range.lowerBound
                while i < range.upperBound {
                    let end = min(range.upperBound, i + batchSize)
                    var batch: [NewRecord] = []
                    batch.reserveCapacity(end - i)
                    for j in i..<end {
                        batch.append(NewRecord(subject: try Subject("customer-\(j / perSubject)"), category: .personal,
                                               channel: .phone, data: body, retentionSeconds: retentionSeconds))
                    }
                    let results = await vault.writeBatch(batch, tenant: tenant, actor: Actor("bench"))
                    for (k, result) in results.enumerated() {
                        switch result {
                        case .success(let receipt):
                            mine.written += 1
                            if (i + k) % sampleEvery == 0 { mine.samples.append((i + k, receipt)) }
                        case .failure(let error):
                            mine.failed += 1
                            if mine.firstError == nil { mine.firstError = "\(error)" }
                        }
                    }
                    done.value.add(end - i, ordering: .relaxed)
                    i = end
                }
                return mine
            }
        }
        var all = Population()
        for try await part in group {
            all.written += part.written
            all.failed += part.failed
            if all.firstError == nil { all.firstError = part.firstError }
            all.samples += part.samples
        }
        all.samples.sort { $0.0 < $1.0 }
        return all
    }
}

struct ReadOutcome {
    var ok = 0
    var notFound = 0
    var other = 0
    var firstOther: String?
    var text: String { "ok=\(ok) not_found=\(notFound) other_error=\(other)" + (firstOther.map { " (\($0))" } ?? "") }
}

/// Reads each id once, `tasks` at a time.
func readAll(_ vault: Vault, _ ids: [RecordID], tenant: TenantID, tasks: Int) async -> ReadOutcome {
    await withTaskGroup(of: ReadOutcome.self) { group in
        let chunk = max(1, (ids.count + tasks - 1) / tasks)
        for w in 0..<tasks {
            let slice = ids[min(ids.count, w * chunk)..<min(ids.count, (w + 1) * chunk)]
            group.addTask {
                var o = ReadOutcome()
                for id in slice {
                    do {
                        _ = try await vault.read(id, tenant: tenant, actor: Actor("bench"))
                        o.ok += 1
                    } catch VaultError.notFound {
                        o.notFound += 1
                    } catch {
                        o.other += 1
                        if o.firstOther == nil { o.firstOther = "\(error)" }
                    }
                }
                return o
            }
        }
        var all = ReadOutcome()
        for await o in group {
            all.ok += o.ok
            all.notFound += o.notFound
            all.other += o.other
            if all.firstOther == nil { all.firstOther = o.firstOther }
        }
        return all
    }
}

// MARK: - Modes

let options = Options(CommandLine.arguments)
let base = options.dir ?? (NSTemporaryDirectory() + "shredvault-corebench-\(getpid())")
try FileManager.default.createDirectory(atPath: base + "/keys", withIntermediateDirectories: true,
                                        attributes: [.posixPermissions: 0o700])
defer { if options.dir == nil { try? FileManager.default.removeItem(atPath: base) } }
let dataDirectory = base + "/data"
let acme = try TenantID("bench")
let body = SensitiveBytes(copying: [UInt8](repeating: UInt8(ascii: "x"), count: options.payload))

/// The original benchmark: one `write` per record from C callers, then one `read` per record.
func writeRead() async throws {
    let records = options.records ?? 100_000
    let concurrency = options.concurrency ?? 256
    let config = VaultConfiguration(maxBatch: options.batch)
    let vault = try Vault.create(dataDirectory: dataDirectory, masterKeyFile: base + "/keys/master.key", configuration: config)
    _ = try await vault.createTenant(acme, actor: Actor("bench"))
    let subjects = max(1, records / 20)

    print("# shredvault-corebench mode=write-read records=\(records) concurrency=\(concurrency) payload=\(options.payload) batch=\(options.batch)")
    let writeStart = ContinuousClock.now
    let ids: [RecordID] = try await withThrowingTaskGroup(of: [RecordID].self) { group in
        let per = records / concurrency
        for w in 0..<concurrency {
            let count = per + (w < records % concurrency ? 1 : 0)
            group.addTask {
                var mine: [RecordID] = []
                mine.reserveCapacity(count)
                for _ in 0..<count {
                    let subject = try Subject("customer-\(Random.uniform(UInt32(subjects)))")
                    let record = NewRecord(subject: subject, category: .personal, channel: .phone, data: body)
                    mine.append(try await vault.write(record, tenant: acme, actor: Actor("bench")).id)
                }
                return mine
            }
        }
        var all: [RecordID] = []
        for try await part in group { all += part }
        return all
    }
    let writeSeconds = seconds(since: writeStart)
    let stats = vault.groupCommitStatistics
    print(String(format: "write.records_per_s %.0f", Double(ids.count) / writeSeconds))
    print(String(format: "write.mean_batch %.1f", Double(stats.operations) / Double(max(1, stats.batches))))

    let readStart = ContinuousClock.now
    try await withThrowingTaskGroup(of: Void.self) { group in
        let chunk = (ids.count + concurrency - 1) / concurrency
        for w in 0..<concurrency {
            let slice = ids[min(ids.count, w * chunk)..<min(ids.count, (w + 1) * chunk)]
            group.addTask {
                for id in slice { _ = try await vault.read(id, tenant: acme, actor: Actor("bench")) }
            }
        }
        try await group.waitForAll()
    }
    let readSeconds = seconds(since: readStart)
    print(String(format: "read.records_per_s %.0f", Double(ids.count) / readSeconds))
    let after = vault.groupCommitStatistics
    print(String(format: "read.mean_batch %.1f", Double(after.operations - stats.operations) / Double(max(1, after.batches - stats.batches))))
    vault.close()
}

/// Opens a vault on a manual clock and fills it; shared by expiry, rotation and memory.
func openAndPopulate(_ mode: Mode) async throws -> (Vault, BenchClock, Population) {
    let records = options.records ?? 1_000_000
    let tasks = options.concurrency ?? 8
    // A whole number of simulated seconds, well inside a bucket of one day (so the write
    // instant, and every `expires_at`, is far from a bucket boundary).
    let width: Int64 = 86_400
    let start: Int64 = 1_800_000_000_000 / (width * 1000) * (width * 1000) + 3_600_000
    let clock = BenchClock(start)
    var config = VaultConfiguration(bucketWidthSeconds: width, maxBatch: options.batch,
                                    keystoreMapSize: 16 << 30, recordsMapSize: 64 << 30, clock: clock.vaultClock)
    if let chunk = options.rotationChunk { config.rotationChunkSize = chunk }
    let vault = try Vault.create(dataDirectory: dataDirectory, masterKeyFile: base + "/keys/master.key", configuration: config)
    _ = try await vault.createTenant(acme, actor: Actor("bench"))
    line("# shredvault-corebench mode=\(mode.rawValue) records=\(records) tasks=\(tasks) write_batch=\(options.writeBatch) payload=\(options.payload) batch=\(options.batch) per_subject=\(options.perSubject) retention_days=\(options.retentionDays) bucket_width_s=\(width) clock=\(options.clock) dir=\(base)")
    emitMemory("start")

    let before = vault.groupCommitStatistics
    if options.clock == "running" { clock.run() }
    let t0 = ContinuousClock.now
    let population = try await populate(vault, tenant: acme, count: records, tasks: tasks, batchSize: options.writeBatch,
                                        body: body, perSubject: options.perSubject,
                                        retentionSeconds: options.retentionDays * 86_400, samples: options.samples)
    let s = seconds(since: t0)
    clock.set(clock.now)
    let after = vault.groupCommitStatistics
    emit("populate.records", population.written)
    emit("populate.failed", population.failed)
    if let e = population.firstError { emit("populate.first_error", e) }
    emit("populate.seconds", s)
    emit("populate.records_per_s", Double(population.written) / s, "%.0f")
    emit("populate.group_commits", after.batches - before.batches)
    emit("populate.records_per_commit", Double(population.written) / Double(max(1, after.batches - before.batches)), "%.0f")
    emitStoreSizes("after_populate", dataDirectory: dataDirectory)
    return (vault, clock, population)
}

func expiry() async throws {
    let (vault, clock, population) = try await openAndPopulate(.expiry)
    let samples = population.samples.map(\.1)
    let expiresAt = Set(samples.map(\.expiresAt))
    let buckets = Set(samples.map { $0.expiresAt / 86_400_000 })
    emit("expiry.sample_records", samples.count)
    emit("expiry.sample_distinct_expires_at", expiresAt.count)
    emit("expiry.sample_distinct_buckets", buckets.count)
    guard let first = expiresAt.min(), let last = expiresAt.max() else { fatalError("no records written") }
    emit("expiry.sample_expires_at_span_ms", Int(last - first))
    let bucketEnd = (last / 86_400_000 + 1) * 86_400_000
    let ids = samples.map(\.id)

    // Before any sweep, at instants around the sample's `expires_at` values: a record must be
    // readable until 1 ms before its `expires_at` and not found from it on.
    let sorted = samples.map(\.expiresAt).sorted()
    let instants: [(String, Int64)] = [
        ("first_minus_1ms", first - 1), ("first", first), ("median", sorted[sorted.count / 2]),
        ("last_minus_1ms", last - 1), ("last", last),
    ]
    var mismatches = 0
    for (label, t) in instants {
        clock.set(t)
        let outcome = await readAll(vault, ids, tenant: acme, tasks: 8)
        let expectedOK = sorted.filter { $0 > t }.count
        if outcome.ok != expectedOK || outcome.other != 0 { mismatches += 1 }
        emit("expiry.reads_at_\(label)", outcome.text + " expected_ok=\(expectedOK) expected_not_found=\(ids.count - expectedOK)")
    }
    emit("expiry.read_checks_failed", mismatches)

    // Past the bucket's window: the sweep destroys its key and removes the entries. The
    // clock runs in real time from here, so the sweep's own milliseconds are real.
    clock.set(bucketEnd + 1000)
    emitMemory("before_sweep")
    progress("sweep: starting (pid \(getpid()))")
    clock.run()
    let t0 = ContinuousClock.now
    let summary = try await vault.sweep()
    let wall = seconds(since: t0)
    emit("expiry.key_destruction_ms", Int(summary.keyDestructionMilliseconds))
    emit("expiry.sweep_total_ms", Int(summary.totalMilliseconds))
    emit("expiry.sweep_wall_s", wall)
    emit("expiry.buckets_destroyed", summary.bucketsDestroyed)
    emit("expiry.entries_removed", summary.entriesRemoved)
    emit("expiry.ciphertexts_removed", summary.ciphertextsRemoved)
    emit("expiry.orphans_removed", summary.orphansRemoved)
    emit("expiry.held_records_rewrapped", summary.heldRecordsRewrapped)
    let afterSweep = await readAll(vault, ids, tenant: acme, tasks: 8)
    emit("expiry.reads_after_sweep", afterSweep.text)
    emitMemory("after_sweep")
    emitStoreSizes("after_sweep", dataDirectory: dataDirectory)
    vault.close()
}

func rotation() async throws {
    let (vault, clock, population) = try await openAndPopulate(.rotation)
    let records = population.written
    let subjects = (records + options.perSubject - 1) / options.perSubject
    let eraseCount = max(1, Int((Double(subjects) * options.erasePercent / 100).rounded()))
    let erased = (0..<eraseCount).map { $0 * subjects / eraseCount }
    let tasks = options.concurrency ?? 8

    let t0 = ContinuousClock.now
    let erasedRecords: Int = try await withThrowingTaskGroup(of: Int.self) { group in
        let chunk = (erased.count + tasks - 1) / tasks
        for w in 0..<tasks {
            let slice = erased[min(erased.count, w * chunk)..<min(erased.count, (w + 1) * chunk)]
            group.addTask {
                var n = 0
                for s in slice {
                    n += try await vault.erase(subject: try Subject("customer-\(s)"), reference: "bench-\(s)",
                                               tenant: acme, actor: Actor("bench")).erased
                }
                return n
            }
        }
        return try await group.reduce(0, +)
    }
    let eraseSeconds = seconds(since: t0)
    emit("rotation.erased_subjects", erased.count)
    emit("rotation.erased_records", erasedRecords)
    emit("rotation.erased_percent", 100 * Double(erasedRecords) / Double(max(1, records)), "%.2f")
    emit("rotation.erase_seconds", eraseSeconds)
    emitStoreSizes("before_rotate", dataDirectory: dataDirectory)
    emitMemory("before_rotate")

    clock.run()
    progress("rotate: starting (pid \(getpid()))")
    let sampler = PeakSampler()
    let t1 = ContinuousClock.now
    let summary = try await vault.rotate()
    let rotateSeconds = seconds(since: t1)
    let peaks = sampler.stop()
    emit("rotation.peak_rss_mib", Double(peaks.rss) / 1024, "%.1f")
    emit("rotation.peak_rss_anon_mib", Double(peaks.anon) / 1024, "%.1f")
    emit("rotation.peak_rss_anon_at_start_mib", Double(peaks.anonAtStart) / 1024, "%.1f")
    emit("rotation.rewrap_transactions", summary.rewrapTransactions)
    emit("rotation.skipped_keys", summary.skipped.count)
    emit("rotation.seconds", rotateSeconds)
    emit("rotation.buckets_rekeyed", summary.bucketsRekeyed)
    emit("rotation.records_rewrapped", summary.recordsRewrapped)
    emit("rotation.tenants_renewed", summary.tenantsRenewed)
    emit("rotation.master_generation", Int(summary.masterGeneration))
    emit("rotation.keystore_bytes_before", summary.keystoreBytesBefore)
    emit("rotation.keystore_bytes_after", summary.keystoreBytesAfter)
    emitMemory("after_rotate")
    Glibc_malloc.trim()
    emitMemory("after_rotate_malloc_trim")

    // The same compaction again, alone: about the compaction's share of the rotation.
    let t2 = ContinuousClock.now
    let sizes = try await vault.compact()
    emit("rotation.compact_alone_seconds", seconds(since: t2))
    emit("rotation.compact_alone_bytes_before_after", "\(sizes.before) \(sizes.after)")

    let erasedSet = Set(erased)
    let kept = population.samples.filter { !erasedSet.contains($0.0 / options.perSubject) }.map(\.1.id)
    let gone = population.samples.filter { erasedSet.contains($0.0 / options.perSubject) }.map(\.1.id)
    emit("rotation.reads_of_kept_sample", await readAll(vault, kept, tenant: acme, tasks: 8).text)
    emit("rotation.reads_of_erased_sample", await readAll(vault, gone, tenant: acme, tasks: 8).text)
    emitStoreSizes("after_rotate", dataDirectory: dataDirectory)
    vault.close()
}

func memory() async throws {
    let (vault, _, population) = try await openAndPopulate(.memory)
    emitMemory("after_populate")
    let ids = population.samples.map(\.1.id)
    emit("memory.sample_reads", await readAll(vault, ids, tenant: acme, tasks: 8).text)
    emitMemory("after_sample_reads")
    vault.close()
    emitMemory("after_close")
    Glibc_malloc.trim()
    emitMemory("after_close_malloc_trim")
}

switch options.mode {
case .writeRead: try await writeRead()
case .expiry: try await expiry()
case .rotation: try await rotation()
case .memory: try await memory()
}
