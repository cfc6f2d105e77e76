import Foundation
import VaultAPI

/// What `shredvault bench` prints: readable lines, or one JSON object with `--json`.
struct BenchReport: Sendable {
    var settings: BenchSettings
    /// The bench's own tenant (nil for `health`, which needs none).
    var tenant: String?
    var offboarded = false
    var prepopulated = 0
    var prepopulateSeconds = 0.0
    var phase = BenchPhase(tally: BenchTally(), seconds: 0)
    /// The daemon's write transactions (groups) and the operations in them during the measured phase.
    var commitBatches: Int64?
    var committedOperations: Int64?

    private var tally: BenchTally { phase.tally }
    private var seconds: Double { max(phase.seconds, 1e-9) }
    var requestsPerSecond: Double { Double(tally.succeeded) / seconds }
    var recordsPerSecond: Double { Double(tally.records) / seconds }
    var subjectsPerSecond: Double { Double(tally.subjects) / seconds }
    var meanCommitBatch: Double? {
        guard let commitBatches, let committedOperations, commitBatches > 0 else { return nil }
        return Double(committedOperations) / Double(commitBatches)
    }

    /// Latency figures in milliseconds, in print order.
    private var latencies: [(name: String, ms: Double)] {
        let h = tally.histogram
        return [("p50", h.percentile(0.50)), ("p90", h.percentile(0.90)), ("p99", h.percentile(0.99)), ("max", h.maximum)]
            .map { ($0.0, Double($0.1) / 1000) } + [("mean", h.mean / 1000)]
    }

    /// Failures as `503: 2, transport: timeout: 1`, most frequent first.
    private var failureList: [(key: String, value: Int)] {
        tally.failures.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }
    }

    func text() -> String {
        let s = settings
        var what = "\(s.connections) connection\(s.connections == 1 ? "" : "s"), \(fixed(phase.seconds, 2)) s"
        if let tenant { what += ", tenant \(tenant)" }
        var lines = ["bench \(s.mode.rawValue): \(what)"]
        var shape: [String] = []
        switch s.mode {
        case .health: break
        case .writeBatch: shape = ["\(s.batchSize) records per request", "\(s.payload)-byte payloads"]
        case .erase: shape = ["\(s.subjects) subjects of \(s.recordsPerSubject) records", "\(s.payload)-byte payloads"]
        default: shape = ["\(s.payload)-byte payloads", "\(s.recordsPerSubject) records per subject"]
        }
        if prepopulated > 0 {
            shape.append("pre-populated \(prepopulated) records in \(fixed(prepopulateSeconds, 1)) s")
        }
        if !shape.isEmpty { lines.append("  " + shape.joined(separator: ", ")) }

        func row(_ name: String, _ left: String, _ right: String) -> String {
            "  " + name.padding(toLength: 11, withPad: " ", startingAt: 0) + left.padding(toLength: 28, withPad: " ", startingAt: 0) + right
        }
        lines.append(row("requests", "\(tally.succeeded) ok, \(tally.failed) failed", "\(fixed(requestsPerSecond, 1)) requests/s"))
        if s.mode != .health {
            lines.append(row("records", "\(tally.records)", "\(fixed(recordsPerSecond, 1)) records/s"))
        }
        if s.mode == .erase {
            lines.append(row("subjects", "\(tally.subjects)", "\(fixed(subjectsPerSecond, 1)) subjects/s"))
        }
        lines.append("  latency    " + latencies.map { "\($0.name) \(fixed($0.ms, 2))" }.joined(separator: "  ")
            + " ms  (\(tally.requests) requests)")
        let failures = failureList.map { "\($0.key): \($0.value)" }
            + (tally.itemErrors > 0 ? ["batch items refused: \(tally.itemErrors)"] : [])
        lines.append("  errors     " + (failures.isEmpty ? "none" : failures.joined(separator: ", ")))
        if let batches = commitBatches, let mean = meanCommitBatch {
            lines.append("  daemon     \(batches) group commits, \(fixed(mean, 1)) operations per commit")
        }
        if offboarded, let tenant { lines.append("  offboarded tenant \(tenant)") }
        return lines.joined(separator: "\n")
    }

    func json() -> [UInt8] {
        let s = settings
        var w = JSONWriter(capacity: 1024)
        w.beginObject()
        w.field("mode", s.mode.rawValue)
        w.field("connections", Int64(s.connections))
        if let tenant { w.field("tenant", tenant) } else { w.key("tenant"); w.null() }
        w.field("payload_bytes", Int64(s.payload))
        if s.mode == .writeBatch { w.field("batch_size", Int64(s.batchSize)) }
        w.field("records_per_subject", Int64(s.recordsPerSubject))
        if s.mode == .erase { w.field("subjects_available", Int64(s.subjects)) }
        w.field("prepopulated", Int64(prepopulated))
        number(&w, "prepopulate_s", prepopulateSeconds, 3)
        number(&w, "duration_s", phase.seconds, 3)
        w.field("requests", Int64(tally.requests))
        w.field("ok", Int64(tally.succeeded))
        w.field("errors", Int64(tally.failed))
        w.field("item_errors", Int64(tally.itemErrors))
        w.field("records", Int64(tally.records))
        w.field("subjects", Int64(tally.subjects))
        number(&w, "requests_per_s", requestsPerSecond, 1)
        number(&w, "records_per_s", recordsPerSecond, 1)
        number(&w, "subjects_per_s", subjectsPerSecond, 1)
        w.key("latency_ms")
        w.beginObject()
        for (name, ms) in latencies { number(&w, name, ms, 3) }
        w.endObject()
        w.key("errors_by_status")
        w.beginObject()
        for (key, value) in failureList { w.field(key, Int64(value)) }
        w.endObject()
        if let commitBatches, let committedOperations {
            w.field("daemon_commits", commitBatches)
            w.field("daemon_committed_operations", committedOperations)
        }
        w.field("offboarded", offboarded)
        w.endObject()
        return w.bytes + [0x0A]
    }

    private func number(_ w: inout JSONWriter, _ key: String, _ value: Double, _ digits: Int) {
        w.key(key)
        let text = fixed(value.isFinite ? value : 0, digits)
        text.utf8CString.withUnsafeBytes { w.raw(UnsafeRawBufferPointer(rebasing: $0.dropLast())) }
    }
}

/// `value` with `digits` decimals ("12.35").
func fixed(_ value: Double, _ digits: Int) -> String {
    String(format: "%.\(digits)f", value)
}
