import Foundation
import Logging
import LMDB
import FuzzSupport
import Testing
import VaultClient
@testable import VaultCore
import VaultServer
#if canImport(Glibc)
import Glibc
#endif

/// The daemon in process on a directory that outlives it: `VaultServer.run` on the real
/// socket, stopped without touching the files, started again on the same directories.
/// (`ServerHarness.stop` deletes its directory, so the tamper suite brings its own.)
final class TamperDaemon: @unchecked Sendable {
    // unchecked: immutable after start().
    let vault: Vault
    let socket: String
    private var task: Task<Void, any Error>?

    private init(vault: Vault, socket: String) {
        self.vault = vault
        self.socket = socket
    }

    static let configuration = VaultConfiguration(keystoreMapSize: 256 << 20, recordsMapSize: 1 << 30)

    /// Opens (or creates) the vault of `dir` and serves it; throws what `Vault.open` throws.
    static func start(dir: String, create: Bool, auditTail: UInt64 = AuditArchive.defaultTail) async throws -> TamperDaemon {
        var configuration = configuration
        configuration.auditTail = auditTail
        let vault = create
            ? try Vault.create(dataDirectory: dir + "/data", masterKeyFile: dir + "/keys/master.key", configuration: configuration)
            : try Vault.open(dataDirectory: dir + "/data", masterKeyFile: dir + "/keys/master.key", configuration: configuration)
        let d = TamperDaemon(vault: vault, socket: dir + "/data/shredvault.sock")
        let server = VaultServer(vault: vault, configuration: .init(socketPath: d.socket))
        // The suite provokes hundreds of 500s on purpose: keep the server's error log quiet.
        var logger = Logger(label: "shredvault-tamper")
        logger.logLevel = .critical
        let (running, continuation) = AsyncStream<Void>.makeStream()
        d.task = Task {
            defer { continuation.finish() }
            try await server.run(logger: logger, gracefulShutdownSignals: []) { continuation.yield() }
        }
        for await _ in running { break }
        return d
    }

    func stop() async {
        task?.cancel()
        _ = try? await task?.value
        vault.close()
    }
}

/// A populated vault on disk for tamper tests: three tenants, records in two expiry
/// buckets, a corrected record (version 2, its bucket dirty), and the exact body of every
/// record's `GET /v1/records/{id}` before any tamper. Stopped, it is edited through the
/// repo's `LMDB` module (or the key file directly); every edit is logged so `undo()` puts
/// the original bytes back.
final class TamperVault: @unchecked Sendable {
    // unchecked: used by one test at a time, never concurrently.
    struct Record: Sendable {
        let label: String
        let tenant: String
        let subject: String
        let id: String
        var original: [UInt8]
    }

    enum Env: String, Sendable { case keystore, records }

    let dir: String
    private(set) var daemon: TamperDaemon?
    private(set) var operatorToken: [UInt8] = []
    private(set) var agentTokens: [String: [UInt8]] = [:]
    private(set) var adminTokens: [String: [UInt8]] = [:]
    var records: [String: Record] = [:]
    /// Each tenant's listing of `listedSubject` (POST /v1/subjects/records) before any tamper.
    var listings: [String: [UInt8]] = [:]
    private var undoLog: [() throws -> Void] = []

    static let tenants = ["acme", "globex", "initech"]
    /// label, tenant, subject, category, channel, retention. `a4` has a shorter retention, so
    /// another expiry bucket than the other acme records; `a5` is corrected after writing.
    static let recordSpecs: [(String, String, String, String, String, String?)] = [
        ("a1", "acme", "cust-1", "personal", "phone", nil),
        ("a2", "acme", "cust-2", "privacy_related", "email", nil),
        ("a3", "acme", "cust-1", "personal", "chat", nil),
        ("a4", "acme", "cust-3", "non_personal", "web", "P30D"),
        ("a5", "acme", "cust-4", "personal", "sms", nil),
        ("g1", "globex", "cust-1", "personal", "phone", nil),
        ("g2", "globex", "cust-9", "personal", "other", nil),
        ("i1", "initech", "cust-1", "personal", "phone", nil),
    ]

    var labels: [String] { records.keys.sorted() }
    /// The subject every tenant has records of.
    static let listedSubject = "cust-1"
    var keyFile: String { dir + "/keys/master.key" }
    var isRunning: Bool { daemon != nil }

    private init(dir: String) { self.dir = dir }

    /// A short fresh directory (sun_path is 108 bytes) with `keys/` (0700).
    private static func newDirectory(_ dir: String = "/tmp/svt-" + UUID().uuidString.prefix(8).lowercased()) throws -> String {
        try FileManager.default.createDirectory(atPath: dir + "/keys", withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        return dir
    }

    /// The populated vault every test starts from: made once per test process (through the
    /// API), stopped, then copied file by file for each test.
    private static let template = Task { () throws -> TamperVault in
        let t = try await TamperVault.populate(dir: try newDirectory(tamperTemplateDirectory))
        await t.stop()
        atexit { try? FileManager.default.removeItem(atPath: tamperTemplateDirectory) }
        return t
    }

    /// A stopped copy of the populated template in its own directory.
    static func make() async throws -> TamperVault {
        let t = try await template.value
        let v = TamperVault(dir: try newDirectory())
        for env in [Env.keystore, .records] {
            try FileManager.default.createDirectory(atPath: v.dir + "/data/" + env.rawValue, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
            try FileManager.default.copyItem(atPath: t.dir + "/data/\(env.rawValue)/data.mdb",
                                             toPath: v.dir + "/data/\(env.rawValue)/data.mdb")
        }
        chmod(v.dir + "/data", 0o700)
        try v.writeKeyFile(Array(try Data(contentsOf: URL(fileURLWithPath: t.keyFile))), mode: 0o600)
        // The audit signing key goes with the copy, as an operator's backup of keys/ would.
        try FileManager.default.copyItem(atPath: t.dir + "/keys/audit.key", toPath: v.dir + "/keys/audit.key")
        v.operatorToken = t.operatorToken
        v.agentTokens = t.agentTokens
        v.adminTokens = t.adminTokens
        v.records = t.records
        v.listings = t.listings
        return v
    }

    /// A new vault in `dir`, populated through the API; left running.
    private static func populate(dir: String) async throws -> TamperVault {
        let v = TamperVault(dir: dir)
        let d = try await TamperDaemon.start(dir: dir, create: true)
        v.daemon = d
        let issued = try await d.vault.issueToken(tenant: nil, role: .operator, name: "tamper operator", actor: .system)
        v.operatorToken = issued.secret.withUnsafeBytes { Array($0) }
        let op = v.operatorClient
        for t in tenants {
            try requireStatus(try await op.send("POST", "/v1/admin/tenants", body: json(["id": t])), 201, "create tenant \(t)")
            for role in ["agent", "admin"] {
                let r = try await op.send("POST", "/v1/admin/tokens", body: json(["tenant": t, "role": role, "name": "\(t)-\(role)"]))
                try requireStatus(r, 201, "issue \(role) token of \(t)")
                let token = Array((try r.object()["token"] as! String).utf8)
                if role == "agent" { v.agentTokens[t] = token } else { v.adminTokens[t] = token }
            }
        }
        for (label, tenant, subject, category, channel, retention) in recordSpecs {
            var body: [String: Any] = ["subject": subject, "category": category, "channel": channel,
                                       "data": ["note": "\(label) payload \(UUID().uuidString)", "label": label]]
            if let retention { body["retention"] = retention }
            let r = try await v.agent(tenant).send("POST", "/v1/records", body: json(body))
            try requireStatus(r, 201, "write \(label)")
            guard let id = try r.object()["id"] as? String else { throw TamperSetupError("write \(label): no id") }
            v.records[label] = Record(label: label, tenant: tenant, subject: subject, id: id, original: [])
        }
        let corrected = try await v.agent("acme").send("PUT", "/v1/records/\(v.id("a5"))",
                                                       body: json(["data": ["note": "a5 corrected", "label": "a5"]]))
        try requireStatus(corrected, 200, "correct a5")
        try await v.captureOriginals()
        return v
    }

    /// Reads every record back and keeps its exact body as the one a 200 may carry.
    func captureOriginals() async throws {
        for label in labels {
            let r = try await read(label)
            try requireStatus(r, 200, "read \(label)")
            records[label]!.original = r.body
        }
        for t in Self.tenants {
            let r = try await listing(t)
            try requireStatus(r, 200, "list \(Self.listedSubject) of \(t)")
            listings[t] = r.body
        }
    }

    func listing(_ tenant: String) async throws -> HTTPResponse {
        try await agent(tenant).send("POST", "/v1/subjects/records", body: json(["subject": Self.listedSubject]))
    }

    // MARK: Daemon

    /// How many audit entries the keystore keeps (the rest are in the record store's archive).
    var auditTail = AuditArchive.defaultTail

    func start() async throws {
        precondition(daemon == nil)
        daemon = try await TamperDaemon.start(dir: dir, create: false, auditTail: auditTail)
    }

    func stop() async {
        await daemon?.stop()
        daemon = nil
    }

    /// Stops the daemon and removes the directory.
    func remove() async {
        await stop()
        try? FileManager.default.removeItem(atPath: dir)
    }

    func client(_ token: [UInt8]?) -> VaultHTTPClient {
        VaultHTTPClient(endpoint: .unixSocket(path: dir + "/data/shredvault.sock"), token: token, timeout: 30)
    }

    var operatorClient: VaultHTTPClient { client(operatorToken) }
    func agent(_ tenant: String) -> VaultHTTPClient { client(agentTokens[tenant]) }
    func admin(_ tenant: String) -> VaultHTTPClient { client(adminTokens[tenant]) }

    func read(_ label: String) async throws -> HTTPResponse {
        let r = records[label]!
        return try await agent(r.tenant).send("GET", "/v1/records/\(r.id)")
    }

    func id(_ label: String) -> String { records[label]!.id }
    func recordID(_ label: String) -> RecordID { RecordID(records[label]!.id)! }

    // MARK: Editing the stopped vault

    /// Runs `body` in one write transaction of an environment (the daemon must be stopped).
    func write<R>(_ env: Env, _ body: (borrowing Transaction, Environment) throws -> R) throws -> R {
        precondition(daemon == nil, "edit the files only while the vault is stopped")
        let e = try Environment(path: dir + "/data/" + env.rawValue,
                                options: .init(mapSize: env == .keystore ? 256 << 20 : 1 << 30),
                                databases: env == .keystore ? Layout.keystoreDatabases : Layout.recordsDatabases)
        defer { e.close() }
        return try e.write { txn in try body(txn, e) }
    }

    func value(_ env: Env, _ db: String, _ key: [UInt8]) throws -> [UInt8]? {
        try write(env) { txn, e in try txn.value(forKey: key, in: e.database(db)) }
    }

    /// Every (key, value) of a database.
    func entries(_ env: Env, _ db: String) throws -> [([UInt8], [UInt8])] {
        try write(env) { txn, e in
            var out: [([UInt8], [UInt8])] = []
            try txn.forEach(in: e.database(db)) { k, v in
                out.append((Array(k), Array(v)))
                return .continue
            }
            return out
        }
    }

    /// Stores `value` (nil deletes), logging the previous value for `undo()`.
    func set(_ env: Env, _ db: String, _ key: [UInt8], _ value: [UInt8]?) throws {
        let previous = try write(env) { txn, e -> [UInt8]? in
            let d = e.database(db)
            let previous = try txn.value(forKey: key, in: d)
            if let value { try txn.put(value, forKey: key, in: d) } else { try txn.delete(key: key, in: d) }
            return previous
        }
        undoLog.append { [unowned self] in
            // An audit entry edited in the keystore's tail may have been moved to the archive
            // since (the daemon ran): it is put back where it is now.
            var moved = false
            if env == .keystore && db == Layout.audit && previous != nil, try self.value(.keystore, db, key) == nil {
                moved = try self.value(.records, db, key) != nil
            }
            try write(moved ? .records : env) { txn, e in
                let d = e.database(db)
                if let previous { try txn.put(previous, forKey: key, in: d) } else { try txn.delete(key: key, in: d) }
            }
        }
    }

    /// Rewrites the value under `key` (which must exist).
    func modify(_ env: Env, _ db: String, _ key: [UInt8], _ change: (inout [UInt8]) throws -> Void) throws {
        guard var v = try value(env, db, key) else { throw TamperSetupError("\(env)/\(db): no value under \(key.hex)") }
        try change(&v)
        try set(env, db, key, v)
    }

    /// Replaces the master key file's bytes (and mode), logging the original for `undo()`.
    func modifyKeyFile(_ change: (inout [UInt8]) throws -> Void, mode: mode_t = 0o600) throws {
        var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: keyFile)))
        saveKeyFile()
        try change(&bytes)
        try writeKeyFile(bytes, mode: mode)
    }

    /// Logs the key file's current bytes so `undo()` restores them (as a 0600 regular file).
    func saveKeyFile() {
        let original = Array((try? Data(contentsOf: URL(fileURLWithPath: keyFile))) ?? Data())
        undoLog.append { [unowned self] in try writeKeyFile(original, mode: 0o600) }
    }

    func writeKeyFile(_ bytes: [UInt8], mode: mode_t) throws {
        try removeKeyFile()
        let fd = open(keyFile, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw TamperSetupError("create \(keyFile): errno \(errno)") }
        defer { close(fd) }
        guard bytes.withUnsafeBytes({ Glibc.write(fd, $0.baseAddress, $0.count) }) == bytes.count else {
            throw TamperSetupError("write \(keyFile)")
        }
        guard fchmod(fd, mode) == 0 else { throw TamperSetupError("chmod \(keyFile)") }
    }

    /// Removes whatever is at the key file's path (file, symlink or directory).
    func removeKeyFile() throws {
        var st = stat()
        guard lstat(keyFile, &st) == 0 else { return }
        try FileManager.default.removeItem(atPath: keyFile)
    }

    /// Adds a step to `undo()` (run before the steps logged earlier).
    func onUndo(_ step: @escaping () throws -> Void) { undoLog.append(step) }

    /// Puts back every edited value and the key file, newest edit first.
    func undo() throws {
        precondition(daemon == nil)
        for step in undoLog.reversed() { try step() }
        undoLog = []
    }

    // MARK: Layout of the populated vault

    func tenantNumber(_ slug: String) throws -> UInt32 { try tenantRow(slug).number }

    func tenantRow(_ slug: String) throws -> TenantRow {
        let v = try #require(try value(.keystore, Layout.tenants, Array(slug.utf8)))
        return try v.withUnsafeBytes { try TenantRow.decode($0) }
    }

    func metaKey(_ label: String) throws -> [UInt8] {
        Layout.recordKey(try tenantNumber(records[label]!.tenant), recordID(label))
    }

    func meta(_ label: String) throws -> RecordMeta {
        let v = try #require(try value(.keystore, Layout.records, try metaKey(label)))
        return try v.withUnsafeBytes { try RecordMeta.decode($0) }
    }

    func modifyMeta(_ label: String, _ change: (inout RecordMeta) -> Void) throws {
        var m = try meta(label)
        change(&m)
        try set(.keystore, Layout.records, try metaKey(label), m.encode())
    }

    /// The key of the record's current ciphertext (its current version).
    func ciphertextKey(_ label: String) throws -> [UInt8] {
        Layout.ciphertextKey(try tenantNumber(records[label]!.tenant), recordID(label), try meta(label).version)
    }

    func bucketKey(_ label: String) throws -> [UInt8] {
        Layout.bucketKey(try tenantNumber(records[label]!.tenant), try meta(label).bucket)
    }

    /// For each record: its tenant number and expiry bucket (what a keystore value affects).
    func placement() throws -> [String: (tenant: UInt32, bucket: UInt64)] {
        var out: [String: (UInt32, UInt64)] = [:]
        for label in labels { out[label] = (try tenantNumber(records[label]!.tenant), try meta(label).bucket) }
        return out
    }
}

/// Where the template vault lives (removed when the test process exits).
let tamperTemplateDirectory = "/tmp/svt-t" + UUID().uuidString.prefix(8).lowercased()

struct TamperSetupError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

func requireStatus(_ r: HTTPResponse, _ status: Int, _ what: String) throws {
    guard r.status == status else { throw TamperSetupError("\(what): \(r.status) \(r.text)") }
}

/// Runs `shredvault serve` (`shredvaultTestBinary`: `$SHREDVAULT_TEST_BIN` or the debug
/// build) on the vault's directories; returns its exit status and stderr, or nil when it was
/// still running after `seconds` (it is then killed).
func runShredvaultServe(dir: String, seconds: Double = 20) async throws -> (status: Int32, stderr: String)? {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: shredvaultTestBinary)
    p.arguments = ["serve", "--data-dir", dir + "/data", "--key-file", dir + "/keys/master.key"]
    let err = Pipe()
    p.standardError = err
    p.standardOutput = FileHandle.nullDevice
    try p.run()
    let deadline = Date().addingTimeInterval(seconds)
    while p.isRunning && Date() < deadline { try await Task.sleep(nanoseconds: 20_000_000) }
    if p.isRunning {
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        return nil
    }
    let data = err.fileHandleForReading.readDataToEndOfFile()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}

typealias TamperRandom = SplitMix64
