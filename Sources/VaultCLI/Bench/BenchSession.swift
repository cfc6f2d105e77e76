import VaultAPI
import VaultClient

/// `shredvault bench`'s options, checked, in a form its own thread can take along.
struct BenchSettings: Sendable {
    var mode: BenchMode
    var connections: Int
    var duration: Double?
    var count: Int?
    var payload: Int
    var batchSize: Int
    var prepopulate: Int
    var subjects: Int
    var recordsPerSubject: Int
    var offboard: Bool
    var socketPath: String
    var tokenFile: String?
    var timeout: Double
}

/// One `shredvault bench` run against a daemon: its own tenant and tokens, the pre-population the
/// mode needs, the measured phase, and the daemon's group-commit figures around it.
///
/// Blocking throughout (sockets, threads): run it on a thread of its own.
struct BenchSession {
    let settings: BenchSettings

    /// Records per pre-population request: large, yet well under the daemon's 1 MiB body limit.
    private var populateBatch: Int { max(1, min(500, (768 << 10) / (settings.payload + 100))) }

    func run() throws -> BenchReport {
        var report = BenchReport(settings: settings)
        guard settings.mode != .health else {
            let clients = connections(settings.connections, token: nil)
            report.phase = try BenchEngine.run(measuredPlan(), clients: clients)
            return report
        }

        // The operator token only sets up a tenant of the bench's own, with an agent and an admin token.
        var operatorToken = try Daemon.loadToken(file: settings.tokenFile)
        let operatorClient = VaultHTTPClient(endpoint: .unixSocket(path: settings.socketPath), token: operatorToken,
                                             timeout: settings.timeout)
        wipe(&operatorToken)
        let tenant = "bench-" + String(UInt32.random(in: 0...UInt32.max) | 0x1000_0000, radix: 16)
        try call(operatorClient, "POST", "/v1/admin/tenants") { w in w.field("id", tenant) }
        report.tenant = tenant
        var agentToken = try issueToken(operatorClient, tenant: tenant, role: "agent")
        defer { wipe(&agentToken) }
        var adminToken = try issueToken(operatorClient, tenant: tenant, role: "admin")
        defer { wipe(&adminToken) }

        var plan = measuredPlan()
        switch settings.mode {
        case .read, .mixed:
            let started = monotonicNanoseconds()
            let phase = try populate(records: settings.prepopulate, collectIDs: true, token: agentToken)
            report.prepopulated = phase.tally.records
            report.prepopulateSeconds = Double(monotonicNanoseconds() - started) / 1e9
            plan.ids = phase.tally.ids
            plan.firstRecord = settings.prepopulate
            guard !plan.ids.isEmpty else { throw CLIError("pre-population returned no record ids") }
        case .erase:
            let started = monotonicNanoseconds()
            let phase = try populate(records: settings.subjects * settings.recordsPerSubject, collectIDs: false,
                                     token: agentToken)
            report.prepopulated = phase.tally.records
            report.prepopulateSeconds = Double(monotonicNanoseconds() - started) / 1e9
        case .proof:
            let started = monotonicNanoseconds()
            let phase = try populate(records: settings.prepopulate, collectIDs: false, token: agentToken)
            report.prepopulated = phase.tally.records
            report.prepopulateSeconds = Double(monotonicNanoseconds() - started) / 1e9
            let admin = VaultHTTPClient(endpoint: .unixSocket(path: settings.socketPath), token: adminToken, timeout: settings.timeout)
            let size = try JSONValue.parse(try call(admin, "GET", "/v1/audit/head").body)["size"]?.int ?? 0
            guard size > 0 else { throw CLIError("the bench tenant's audit log is empty") }
            plan.logSize = UInt64(size)
        default:
            break
        }

        let before = try statistics(operatorClient)
        let clients = connections(settings.connections, token: settings.mode == .erase || settings.mode == .proof ? adminToken : agentToken)
        report.phase = try BenchEngine.run(plan, clients: clients)
        let after = try statistics(operatorClient)
        report.commitBatches = after.batches - before.batches
        report.committedOperations = after.operations - before.operations

        if settings.offboard {
            try call(operatorClient, "DELETE", "/v1/admin/tenants/\(tenant)")
            report.offboarded = true
        }
        return report
    }

    /// The measured phase as the options describe it.
    private func measuredPlan() -> BenchPlan {
        let operation: BenchOperation = switch settings.mode {
        case .health: .health
        case .write: .write
        case .writeBatch: .writeBatch
        case .read: .read
        case .mixed: .mixed
        case .erase: .erase
        case .proof: .proof
        }
        var plan = BenchPlan(operation: operation, count: settings.count, duration: settings.duration,
                             label: settings.mode.rawValue)
        plan.batchSize = settings.mode == .writeBatch ? settings.batchSize : 1
        plan.recordsPerSubject = settings.recordsPerSubject
        plan.payload = benchPayload(bytes: settings.payload)
        plan.subjects = settings.subjects
        return plan
    }

    /// Writes `records` records (subject n / K for record n) in large batches on a few connections;
    /// every one must succeed.
    private func populate(records: Int, collectIDs: Bool, token: [UInt8]) throws -> BenchPhase {
        var plan = BenchPlan(operation: .writeBatch, label: "pre-populating \(records) records")
        plan.batchSize = populateBatch
        plan.recordLimit = records
        plan.recordsPerSubject = settings.recordsPerSubject
        plan.payload = benchPayload(bytes: settings.payload)
        plan.collectIDs = collectIDs
        let phase = try BenchEngine.run(plan, clients: connections(min(settings.connections, 4), token: token))
        let t = phase.tally
        guard t.failed == 0, t.itemErrors == 0, t.records == records else {
            let failures = t.failures.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", ")
            throw CLIError("pre-population failed: \(t.records) of \(records) records written"
                + (failures.isEmpty ? "" : "; failed requests: \(failures)")
                + (t.itemErrors > 0 ? "; \(t.itemErrors) batch items refused" : ""))
        }
        return phase
    }

    /// One client (one keep-alive connection) per bench connection; each copies the token into
    /// its own header line and wipes it when released.
    private func connections(_ n: Int, token: [UInt8]?) -> [VaultHTTPClient] {
        (0..<n).map { _ in
            VaultHTTPClient(endpoint: .unixSocket(path: settings.socketPath), token: token, timeout: settings.timeout)
        }
    }

    @discardableResult
    private func call(_ client: VaultHTTPClient, _ method: String, _ path: String,
                      building build: ((inout JSONWriter) -> Void)? = nil) throws -> HTTPResponse {
        var body: [UInt8]?
        if let build {
            var w = JSONWriter(capacity: 128)
            w.beginObject()
            build(&w)
            w.endObject()
            body = w.bytes
        }
        let response = try client.request(method, path, body: body, headers: [("Accept", "application/json")])
        try Daemon.check(response)
        return response
    }

    /// Issues a token of the bench tenant; returns its secret.
    private func issueToken(_ client: VaultHTTPClient, tenant: String, role: String) throws -> [UInt8] {
        let response = try call(client, "POST", "/v1/admin/tokens") { w in
            w.field("tenant", tenant)
            w.field("role", role)
            w.field("name", "shredvault bench \(role)")
        }
        return try response.body.withUnsafeBytes { raw -> [UInt8] in
            guard let member = try JSONScanner.objectMembers(raw).first(where: { $0.key == "token" }) else {
                throw CLIError("the daemon's answer has no token")
            }
            let secret = try JSONRead.sensitiveString(UnsafeRawBufferPointer(rebasing: raw[member.range]))
            return secret.withUnsafeBytes { Array($0) }
        }
    }

    /// The daemon's group-commit counters (`GET /v1/admin/stats`).
    private func statistics(_ client: VaultHTTPClient) throws -> (batches: Int64, operations: Int64) {
        let value = try JSONValue.parse(try call(client, "GET", "/v1/admin/stats").body)
        return (value["batches"]?.int ?? 0, value["batched_operations"]?.int ?? 0)
    }
}
