import ArgumentParser
import Foundation

/// What `shredvault bench` sends.
enum BenchMode: String, CaseIterable, ExpressibleByArgument, Sendable {
    case health, write
    case writeBatch = "write-batch"
    case read, mixed, erase, proof
}

/// `shredvault bench`: a load generator for a running daemon (as `pgbench` and `redis-benchmark`
/// are for theirs).
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Load a running daemon and measure throughput and latency (operator token; none for health).",
        discussion: """
            Opens --connections keep-alive connections to the daemon's socket, each driven by a \
            thread of its own, and sends requests for --duration seconds or --count requests in \
            all. With an operator token it creates a tenant of its own (bench-<random>) with an \
            agent and an admin token; the tenant and its records stay in the vault unless \
            --offboard. Subjects are generated (bench-subject-<n>, --records-per-subject records \
            each); record data is a JSON object of --payload bytes.

            Modes: health (GET /healthz, no token: the HTTP stack alone, the reference figure); \
            write (one record per POST /v1/records); write-batch (--batch-size records per POST \
            /v1/records/batch); read (pre-populates --prepopulate records, then GETs random ones; \
            every read is audited durably); mixed (the same pre-population, then 90% reads and \
            10% writes); erase (pre-populates --subjects subjects of --records-per-subject \
            records, then erases them concurrently with POST /v1/subjects/erase; runs until all \
            are erased unless --duration or --count stops it first); proof (pre-populates \
            --prepopulate records, then asks GET /v1/audit/proof for a random entry of the \
            tenant's log at its size then, with the admin token: the transparency log's read path).

            Prints requests/s, records/s (erase: subjects/s), latency p50/p90/p99/max of every \
            request (ms), failures by status, and the daemon's group commits during the run; \
            --json prints one JSON object instead. A progress line goes to stderr when it is a \
            terminal. Exit 1 when no request succeeded.
            """)

    @Option(help: ArgumentHelp("health, write, write-batch, read, mixed, erase or proof.", valueName: "mode"))
    var mode: BenchMode = .write

    @Option(help: ArgumentHelp("Concurrent keep-alive connections, one thread each.", valueName: "n"))
    var connections = 16

    @Option(help: ArgumentHelp("Seconds to run (default: 10, or until every subject is erased in erase mode).",
                               valueName: "seconds"))
    var duration: Double?

    @Option(help: ArgumentHelp("Requests to send in all (write-batch: batches; erase: subjects), instead of a duration.",
                               valueName: "n"))
    var count: Int?

    @Option(help: ArgumentHelp("Size of each record's JSON data in bytes.", valueName: "bytes"))
    var payload = 1024

    @Option(name: .customLong("batch-size"), help: ArgumentHelp("Records per request in write-batch mode (at most 1000).",
                                                               valueName: "n"))
    var batchSize = 100

    @Option(help: ArgumentHelp("Records written before a read or mixed run.", valueName: "n"))
    var prepopulate = 10_000

    @Option(help: ArgumentHelp("Subjects written before an erase run (default: --count, else 1000).", valueName: "n"))
    var subjects: Int?

    @Option(name: .customLong("records-per-subject"), help: ArgumentHelp("Records of each generated subject.", valueName: "n"))
    var recordsPerSubject = 20

    @Flag(help: "Offboard the bench tenant at the end (its records become unreadable at once).")
    var offboard = false

    @OptionGroup var client: ClientOptions

    func validate() throws {
        guard (1...1024).contains(connections) else { throw ValidationError("--connections must be between 1 and 1024") }
        if let duration, !(duration > 0 && duration <= 86_400) {
            throw ValidationError("--duration must be a positive number of seconds (at most a day)")
        }
        if let count, count < 1 { throw ValidationError("--count must be at least 1") }
        guard (16...(1 << 20)).contains(payload) else { throw ValidationError("--payload must be between 16 and 1048576 bytes") }
        guard (1...1000).contains(batchSize) else { throw ValidationError("--batch-size must be between 1 and 1000") }
        guard (1...10_000_000).contains(prepopulate) else { throw ValidationError("--prepopulate must be between 1 and 10000000") }
        if let subjects, !(1...1_000_000).contains(subjects) {
            throw ValidationError("--subjects must be between 1 and 1000000")
        }
        guard (1...1000).contains(recordsPerSubject) else {
            throw ValidationError("--records-per-subject must be between 1 and 1000")
        }
        if mode == .erase, let count, let subjects, count > subjects {
            throw ValidationError("--count (\(count) subjects to erase) is more than --subjects (\(subjects))")
        }
        if offboard && mode == .health { throw ValidationError("--offboard needs a mode that creates a tenant (not health)") }
    }

    var settings: BenchSettings {
        var duration = self.duration
        if duration == nil && count == nil && mode != .erase { duration = 10 }
        return BenchSettings(
            mode: mode, connections: connections, duration: duration, count: count, payload: payload,
            batchSize: batchSize, prepopulate: prepopulate, subjects: subjects ?? count ?? 1000,
            recordsPerSubject: recordsPerSubject, offboard: offboard, socketPath: client.socketPath,
            tokenFile: client.tokenFile, timeout: client.timeout ?? 30)
    }

    func run() async throws {
        let settings = self.settings
        let json = client.json
        try await reportingFailures {
            // Sockets, threads and waits: all on a thread of the bench's own, never on the cooperative pool.
            let report = try await onOwnThread { try BenchSession(settings: settings).run() }
            if json {
                Terminal.outBytes(report.json())
            } else {
                Terminal.out(report.text())
            }
            if report.phase.tally.requests > 0 && report.phase.tally.succeeded == 0 {
                throw CLIError("no request succeeded")
            }
        }
    }
}

/// Runs blocking `body` on a new thread; the caller is suspended, not blocked, until it returns.
func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread {
            continuation.resume(with: Result { try body() })
        }
        thread.start()
    }
}
