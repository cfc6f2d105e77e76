import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// End-to-end tests of `shredvault bench`: the binary `swift build --build-tests` leaves in
// .build/debug against a daemon started with `init` + `serve` on a short /tmp path. Every
// process runs under a deadline. Nothing here times throughput: only counts, errors, the order
// of the latency percentiles, and what the daemon holds afterwards.

/// A finished run of the binary.
private struct BenchRun {
    var status: Int32
    var exited: Bool
    var stdout: String
    var stderr: String
}

private struct BenchTestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A vault in a fresh short /tmp directory, its operator token in a 0600 file, and its daemon.
private final class BenchVault {
    static let binary: String = shredvaultTestBinary

    let directory: String
    var socket: String { directory + "/s.sock" }
    var tokenFile: String { directory + "/operator.token" }
    private var daemon: Process?

    init() throws {
        guard FileManager.default.isExecutableFile(atPath: BenchVault.binary) else {
            throw BenchTestError("\(BenchVault.binary) is missing: run `swift build --build-tests` first")
        }
        var template = Array("/tmp/svb-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw BenchTestError("mkdtemp failed: \(String(cString: strerror(errno)))")
        }
        directory = String(cString: made)
        do {
            let initialised = try run(["init", "--data-dir", directory + "/data", "--key-file", directory + "/keys/master.key"])
            let line = initialised.stdout.trimmingCharacters(in: .newlines)
            let prefix = #"{"operator_token": ""#, suffix = #""}"#
            guard initialised.exited, initialised.status == 0, line.hasPrefix(prefix), line.hasSuffix(suffix) else {
                throw BenchTestError("init failed (\(initialised.status)): \(initialised.stderr)")
            }
            let token = String(line.dropFirst(prefix.count).dropLast(suffix.count))
            guard FileManager.default.createFile(atPath: tokenFile, contents: Data((token + "\n").utf8),
                                                 attributes: [.posixPermissions: 0o600]) else {
                throw BenchTestError("cannot write \(tokenFile)")
            }
            try startDaemon()
        } catch {
            stop()
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func startDaemon() throws {
        let (process, _, log) = try start(["serve", "--data-dir", directory + "/data", "--key-file",
                                           directory + "/keys/master.key", "--socket", socket], name: "serve")
        daemon = process
        let end = Date().addingTimeInterval(30)
        while !isSocket(socket) {
            guard process.isRunning else { throw BenchTestError("serve exited early: \(read(log))") }
            guard Date() < end else { throw BenchTestError("serve did not create its socket within 30 s: \(read(log))") }
            usleep(20_000)
        }
    }

    private func stop() {
        guard let daemon, daemon.isRunning else { return }
        kill(daemon.processIdentifier, SIGKILL)
        daemon.waitUntilExit()
    }

    /// A client command against this vault's daemon with the operator token.
    func client(_ arguments: [String], seconds: Double = 120) throws -> BenchRun {
        try run(arguments + ["--socket", socket, "--token-file", tokenFile], seconds: seconds)
    }

    /// Runs the binary to completion; killed (and reported as not exited) past `seconds`.
    func run(_ arguments: [String], seconds: Double = 30) throws -> BenchRun {
        let (process, out, err) = try start(arguments, name: "run-\(UUID().uuidString.prefix(8))")
        let end = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < end { usleep(20_000) }
        var finished = true
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            finished = false
        }
        process.waitUntilExit()
        return BenchRun(status: process.terminationStatus, exited: finished && process.terminationReason == .exit,
                        stdout: read(out), stderr: read(err))
    }

    private func start(_ arguments: [String], name: String) throws -> (Process, stdout: String, stderr: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: BenchVault.binary)
        process.arguments = arguments
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        process.environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("SHREDVAULT_") }
        let out = "\(directory)/\(name).stdout", err = "\(directory)/\(name).stderr"
        for path in [out, err] {
            guard FileManager.default.createFile(atPath: path, contents: nil) else { throw BenchTestError("cannot create \(path)") }
        }
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: err))
        process.standardInput = FileHandle.nullDevice
        try process.run()
        return (process, out, err)
    }

    private func read(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }

    private func isSocket(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFSOCK
    }

    /// `records` in the daemon's statistics (`GET /v1/admin/stats`).
    func storedRecords() throws -> Int {
        let stats = try client(["stats", "--json"], seconds: 30)
        guard stats.exited, stats.status == 0 else { throw BenchTestError("stats failed: \(stats.stderr)") }
        return try #require(try object(stats.stdout)["records"] as? Int)
    }
}

/// The one JSON object a `--json` run printed.
private func object(_ text: String) throws -> [String: Any] {
    let value = try JSONSerialization.jsonObject(with: Data(text.utf8))
    return try #require(value as? [String: Any], "not a JSON object: \(text)")
}

/// p50 ≤ p90 ≤ p99 ≤ max, all present and non-negative.
private func expectOrderedLatencies(_ report: [String: Any]) throws {
    let latency = try #require(report["latency_ms"] as? [String: Any])
    let figures = try ["p50", "p90", "p99", "max"].map { try #require(latency[$0] as? Double, "latency_ms.\($0)") }
    #expect(figures[0] >= 0)
    #expect(figures[0] <= figures[1] && figures[1] <= figures[2] && figures[2] <= figures[3], "latencies \(figures)")
}

@Suite("shredvault bench, end to end")
struct BenchCommandTests {
    @Test("write: --count 200 on 4 connections writes 200 records, every one stored")
    func writeCount() throws {
        let vault = try BenchVault()
        let run = try vault.client(["bench", "--mode", "write", "--count", "200", "--connections", "4", "--json"])
        #expect(run.exited && run.status == 0, "bench: \(run.stderr)")
        #expect(run.stderr.isEmpty, "no progress line when stderr is not a terminal: \(run.stderr)")
        let report = try object(run.stdout)
        #expect(report["mode"] as? String == "write")
        #expect(report["connections"] as? Int == 4)
        #expect(report["requests"] as? Int == 200)
        #expect(report["ok"] as? Int == 200)
        #expect(report["records"] as? Int == 200)
        #expect(report["errors"] as? Int == 0)
        #expect((report["errors_by_status"] as? [String: Any])?.isEmpty == true)
        let tenant = try #require(report["tenant"] as? String)
        #expect(tenant.hasPrefix("bench-"))
        #expect((report["records_per_s"] as? Double ?? 0) > 0)
        try expectOrderedLatencies(report)

        #expect(try vault.storedRecords() >= 200)
        let tenants = try vault.client(["tenant", "list"])
        #expect(tenants.stdout.contains(tenant), "the bench tenant stays: \(tenants.stdout)")
    }

    @Test("erase: --count 5 pre-populates 5 subjects of 4 records and erases all of them")
    func eraseCount() throws {
        let vault = try BenchVault()
        let run = try vault.client(["bench", "--mode", "erase", "--count", "5", "--records-per-subject", "4",
                                    "--connections", "2", "--json"])
        #expect(run.exited && run.status == 0, "bench: \(run.stderr)")
        let report = try object(run.stdout)
        #expect(report["mode"] as? String == "erase")
        #expect(report["prepopulated"] as? Int == 20)
        #expect(report["requests"] as? Int == 5)
        #expect(report["ok"] as? Int == 5)
        #expect(report["subjects"] as? Int == 5)
        #expect(report["records"] as? Int == 20, "records erased, as the daemon's receipts count them")
        #expect(report["errors"] as? Int == 0)
        #expect((report["subjects_per_s"] as? Double ?? 0) > 0)
        try expectOrderedLatencies(report)

        // All 20 pre-populated records were written, then erased: none is left.
        #expect(try vault.storedRecords() == 0)
    }

    @Test("health needs no token; readable output names every figure")
    func healthReadable() throws {
        let vault = try BenchVault()
        let run = try vault.run(["bench", "--mode", "health", "--count", "50", "--connections", "2", "--socket", vault.socket])
        #expect(run.exited && run.status == 0, "bench: \(run.stderr)")
        #expect(run.stdout.hasPrefix("bench health: 2 connections, "))
        #expect(run.stdout.contains("requests   50 ok, 0 failed"))
        #expect(run.stdout.contains("latency    p50 "))
        #expect(run.stdout.contains("errors     none"))
    }

    @Test("a daemon that is not there: exit 1 in the documented format")
    func unreachable() throws {
        let vault = try BenchVault()
        let run = try vault.run(["bench", "--mode", "health", "--count", "5", "--socket", vault.directory + "/none.sock"])
        #expect(run.exited && run.status == 1)
        #expect(run.stdout.isEmpty)
        #expect(run.stderr.hasPrefix("shredvault: cannot reach the daemon"), "\(run.stderr)")
    }
}
