import Dispatch
import Foundation
import Synchronization
import Locking
import VaultAPI
import VaultClient
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What one phase of a bench sends on every connection.
enum BenchOperation: Sendable {
    /// `GET /healthz`: the HTTP stack alone, the reference figure.
    case health
    /// `POST /v1/records`, one record per request.
    case write
    /// `POST /v1/records/batch`, `batchSize` records per request.
    case writeBatch
    /// `GET /v1/records/{id}` of a random pre-populated record.
    case read
    /// 90 % `read`, 10 % `write`.
    case mixed
    /// `POST /v1/subjects/erase` of the next pre-populated subject.
    case erase
    /// `GET /v1/audit/proof` of a random entry of the tenant's log, in the tree of `logSize`.
    case proof
}

/// One phase (the measured run, or the pre-population before it): immutable, shared by every
/// connection thread.
struct BenchPlan: Sendable {
    var operation: BenchOperation
    /// Requests in all (erase: subjects); nil: until `duration` passes or the work runs out.
    var count: Int?
    /// Seconds; nil: until `count` or the work runs out.
    var duration: Double?
    var batchSize = 1
    var recordsPerSubject = 20
    /// Records to write in all (pre-population): the last batch is shorter, then the phase ends.
    var recordLimit: Int?
    /// Number of the first record written: record n belongs to subject n / recordsPerSubject.
    var firstRecord = 0
    /// The records' `data`, a JSON value.
    var payload: [UInt8] = []
    /// Records to read (`read`, `mixed`).
    var ids: [String] = []
    /// `erase`: subjects 0..<subjects exist.
    var subjects = 0
    /// `proof`: the size of the tenant's log when the phase starts.
    var logSize: UInt64 = 0
    /// Keep the ids the daemon returns (pre-population for `read` and `mixed`).
    var collectIDs = false
    /// Shown in the progress line.
    var label: String
}

/// What a phase produced: every connection's tally merged, and the wall time from the start
/// signal to the last connection's last answer.
struct BenchPhase: Sendable {
    var tally: BenchTally
    var seconds: Double
}

/// One connection's counts (merged into the phase's at the end).
struct BenchTally: Sendable {
    var histogram = LatencyHistogram()
    var requests = 0
    /// Requests answered 2xx.
    var succeeded = 0
    /// Records written or read by the 2xx requests (erase: records erased).
    var records = 0
    /// Subjects erased.
    var subjects = 0
    /// Items of a 200 batch answer that carry an error.
    var itemErrors = 0
    /// Failed requests by status ("503") or transport failure ("transport: timeout").
    var failures: [String: Int] = [:]
    var ids: [String] = []

    var failed: Int { requests - succeeded }

    mutating func merge(_ other: BenchTally) {
        histogram.merge(other.histogram)
        requests += other.requests
        succeeded += other.succeeded
        records += other.records
        subjects += other.subjects
        itemErrors += other.itemErrors
        failures.merge(other.failures, uniquingKeysWith: +)
        ids += other.ids
    }
}

/// State the connection threads share: ticket counters, the deadline, the results.
private final class BenchShared: Sendable {
    /// Next request number (erase: subject number; write-batch: batch number).
    let tickets = Atomic<Int>(0)
    /// Next record number for `mixed`'s writes.
    let writeTickets = Atomic<Int>(0)
    /// Requests answered so far, for the progress line.
    let completed = Atomic<Int>(0)
    /// `CLOCK_MONOTONIC` nanoseconds after which no request starts; 0: none.
    let deadline = Atomic<UInt64>(0)
    let stop = Atomic<Bool>(false)
    let tallies = Locked<[BenchTally]>([])
    /// Why a connection could not be made before the start.
    let warmUpFailure = Locked<String?>(nil)
}

/// A request of a phase, and how to count its answer.
private struct BenchRequest {
    enum Kind { case health, write, batch(records: Int), read, erase, proof }
    var kind: Kind
    var method: String
    var path: String
    var body: [UInt8]?
}

/// Runs phases: one thread per connection (each with its own keep-alive ``VaultHTTPClient``, so
/// the blocking socket calls never touch Swift's cooperative pool), a start signal once every
/// connection is up, and a latency sample of every request.
enum BenchEngine {
    /// Runs `plan` on `clients` (one connection each) and waits for every connection to finish.
    /// Blocks the calling thread: call it from a thread of its own.
    static func run(_ plan: BenchPlan, clients: [VaultHTTPClient]) throws -> BenchPhase {
        let shared = BenchShared()
        let finished = DispatchGroup()
        let ready = DispatchSemaphore(value: 0)
        let go = DispatchSemaphore(value: 0)
        for client in clients {
            finished.enter()
            let seed = UInt64.random(in: 1...UInt64.max)
            let thread = Thread {
                defer { finished.leave() }
                // The connection is made (and the server's accept path warmed) before the clock starts.
                do { _ = try client.request("GET", "/healthz") } catch {
                    shared.warmUpFailure.withLock { $0 = $0 ?? userDescription(error) }
                }
                ready.signal()
                go.wait()
                let tally = connection(plan, client: client, shared: shared, seed: seed)
                shared.tallies.withLock { $0.append(tally) }
            }
            thread.name = "bench connection"
            thread.start()
        }
        for _ in clients { ready.wait() }
        let warmUpFailure = shared.warmUpFailure.withLock { $0 }
        if warmUpFailure != nil { shared.stop.store(true, ordering: .relaxed) }

        let progress = Progress(plan.label)
        defer { progress.finish() }
        let start = monotonicNanoseconds()
        if let duration = plan.duration {
            shared.deadline.store(start + UInt64(duration * 1e9), ordering: .relaxed)
        }
        for _ in clients { go.signal() }
        while finished.wait(timeout: .now() + .milliseconds(250)) == .timedOut {
            let done = shared.completed.load(ordering: .relaxed)
            let seconds = Double(monotonicNanoseconds() - start) / 1e9
            progress.update("\(plan.label): \(done) requests, \(Int(Double(done) / max(seconds, 0.001)))/s")
        }
        let seconds = Double(monotonicNanoseconds() - start) / 1e9
        progress.finish()
        if let warmUpFailure { throw CLIError(warmUpFailure) }

        var tally = BenchTally()
        for t in shared.tallies.withLock({ $0 }) { tally.merge(t) }
        return BenchPhase(tally: tally, seconds: seconds)
    }

    /// One connection's loop: claim a ticket, send, time, count; until the count, the deadline or
    /// the work runs out, or the daemon cannot be reached any more.
    private static func connection(_ plan: BenchPlan, client: VaultHTTPClient, shared: BenchShared,
                                   seed: UInt64) -> BenchTally {
        var tally = BenchTally()
        var random = XorShift(seed: seed)
        let deadline = shared.deadline.load(ordering: .relaxed)
        requests: while !shared.stop.load(ordering: .relaxed) {
            let ticket = shared.tickets.wrappingAdd(1, ordering: .relaxed).oldValue
            if let count = plan.count, ticket >= count { break }
            if deadline != 0 && monotonicNanoseconds() >= deadline { break }
            guard let request = makeRequest(plan, ticket: ticket, random: &random, shared: shared) else { break }

            let started = monotonicNanoseconds()
            let result: Result<HTTPResponse, ClientError>
            do {
                result = .success(try client.request(request.method, request.path, body: request.body))
            } catch {
                result = .failure(error)
            }
            tally.histogram.record(microseconds: (monotonicNanoseconds() - started) / 1000)
            tally.requests += 1
            shared.completed.wrappingAdd(1, ordering: .relaxed)

            switch result {
            case .success(let response) where (200..<300).contains(response.status):
                tally.succeeded += 1
                count(response, of: request, plan: plan, into: &tally)
            case .success(let response):
                tally.failures["\(response.status)", default: 0] += 1
            case .failure(let error):
                tally.failures["transport: \(error.code)", default: 0] += 1
                // The daemon is gone: every further request would fail at once.
                if error.code == .connect { break requests }
            }
        }
        return tally
    }

    /// The request for `ticket`, or nil when the phase has no more work.
    private static func makeRequest(_ plan: BenchPlan, ticket: Int, random: inout XorShift,
                                    shared: BenchShared) -> BenchRequest? {
        switch plan.operation {
        case .health:
            return BenchRequest(kind: .health, method: "GET", path: "/healthz")
        case .write:
            return writeRequest(record: plan.firstRecord + ticket, plan: plan)
        case .writeBatch:
            let first = ticket * plan.batchSize
            var end = first + plan.batchSize
            if let limit = plan.recordLimit {
                guard first < limit else { return nil }
                end = min(end, limit)
            }
            var body: [UInt8] = []
            body.reserveCapacity((end - first) * (plan.payload.count + 96) + 16)
            body += #"{"records":["#.utf8
            for n in first..<end {
                if n > first { body.append(0x2C) }
                appendRecord(plan.firstRecord + n, plan: plan, to: &body)
            }
            body += "]}".utf8
            return BenchRequest(kind: .batch(records: end - first), method: "POST", path: "/v1/records/batch", body: body)
        case .read:
            return readRequest(plan, random: &random)
        case .mixed:
            if random.next() % 10 == 0 {
                let n = shared.writeTickets.wrappingAdd(1, ordering: .relaxed).oldValue
                return writeRequest(record: plan.firstRecord + n, plan: plan)
            }
            return readRequest(plan, random: &random)
        case .erase:
            guard ticket < plan.subjects else { return nil }
            var body: [UInt8] = []
            body.reserveCapacity(80)
            body += #"{"subject":"#.utf8
            appendSubject(ticket, to: &body)
            body += #","reference":"shredvault bench"}"#.utf8
            return BenchRequest(kind: .erase, method: "POST", path: "/v1/subjects/erase", body: body)
        case .proof:
            let seq = 1 + random.next() % plan.logSize
            return BenchRequest(kind: .proof, method: "GET", path: "/v1/audit/proof?seq=\(seq)&size=\(plan.logSize)")
        }
    }

    private static func writeRequest(record n: Int, plan: BenchPlan) -> BenchRequest {
        var body: [UInt8] = []
        body.reserveCapacity(plan.payload.count + 96)
        appendRecord(n, plan: plan, to: &body)
        return BenchRequest(kind: .write, method: "POST", path: "/v1/records", body: body)
    }

    private static func readRequest(_ plan: BenchPlan, random: inout XorShift) -> BenchRequest {
        let id = plan.ids[Int(random.next() % UInt64(plan.ids.count))]
        return BenchRequest(kind: .read, method: "GET", path: "/v1/records/" + id)
    }

    /// `{"subject":"bench-subject-<n/K>","category":"personal","channel":"phone","data":<payload>}`
    private static func appendRecord(_ n: Int, plan: BenchPlan, to body: inout [UInt8]) {
        body += #"{"subject":"#.utf8
        appendSubject(n / plan.recordsPerSubject, to: &body)
        body += #","category":"personal","channel":"phone","data":"#.utf8
        body += plan.payload
        body.append(0x7D)
    }

    /// `"bench-subject-<n>"`, quoted.
    static func appendSubject(_ n: Int, to body: inout [UInt8]) {
        body += #""bench-subject-"#.utf8
        body += String(n).utf8
        body.append(0x22)
    }

    /// Counts what a 2xx answer did.
    private static func count(_ response: HTTPResponse, of request: BenchRequest, plan: BenchPlan,
                              into tally: inout BenchTally) {
        switch request.kind {
        case .health, .proof:
            break
        case .write, .read:
            tally.records += 1
        case .batch(let records):
            let errors = occurrences(of: Array(#"{"error":"#.utf8), in: response.body)
            tally.itemErrors += errors
            tally.records += records - errors
            if plan.collectIDs { tally.ids += batchIDs(response.body) }
        case .erase:
            tally.subjects += 1
            tally.records += Int(erasedCount(response.body) ?? 0)
        }
    }

    /// The ids of a batch answer's successful items.
    private static func batchIDs(_ body: [UInt8]) -> [String] {
        (try? body.withUnsafeBytes { raw -> [String] in
            guard let results = try JSONScanner.objectMembers(raw).first(where: { $0.key == "results" }) else { return [] }
            var ids: [String] = []
            for item in try JSONScanner.arrayElements(UnsafeRawBufferPointer(rebasing: raw[results.range])) {
                let base = results.range.lowerBound + item.range.lowerBound
                let itemRaw = UnsafeRawBufferPointer(rebasing: raw[base..<(base + item.range.count)])
                guard let id = try JSONScanner.objectMembers(itemRaw).first(where: { $0.key == "id" }) else { continue }
                ids.append(try JSONRead.string(UnsafeRawBufferPointer(rebasing: itemRaw[id.range])))
            }
            return ids
        }) ?? []
    }

    /// `erased` in an erasure answer.
    private static func erasedCount(_ body: [UInt8]) -> Int64? {
        try? body.withUnsafeBytes { raw -> Int64? in
            guard let m = try JSONScanner.objectMembers(raw).first(where: { $0.key == "erased" }) else { return nil }
            return try JSONRead.int64(UnsafeRawBufferPointer(rebasing: raw[m.range]))
        }
    }

    private static func occurrences(of pattern: [UInt8], in bytes: [UInt8]) -> Int {
        guard !pattern.isEmpty, bytes.count >= pattern.count else { return 0 }
        var found = 0
        var i = 0
        let last = bytes.count - pattern.count
        while i <= last {
            if bytes[i] == pattern[0] && bytes[i..<(i + pattern.count)].elementsEqual(pattern) {
                found += 1
                i += pattern.count
            } else {
                i += 1
            }
        }
        return found
    }
}

/// The `data` of every bench record: `{"note":"xxx…"}`, exactly `bytes` long (at least 12).
func benchPayload(bytes: Int) -> [UInt8] {
    Array(#"{"note":""#.utf8) + [UInt8](repeating: UInt8(ascii: "x"), count: bytes - 11) + Array(#""}"#.utf8)
}

/// `CLOCK_MONOTONIC` in nanoseconds.
func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// xorshift64: the bench's own choices (which record to read, when to write in `mixed`), kept out
/// of the kernel's random source.
struct XorShift {
    private var state: UInt64

    init(seed: UInt64) { state = seed == 0 ? 0x9E37_79B9_7F4A_7C15 : seed }

    mutating func next() -> UInt64 {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return state
    }
}
