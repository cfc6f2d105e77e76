import Foundation
import Logging
import Sodium
import VaultClient
import VaultCore
import VaultServer

/// The real daemon in process: a vault in a temporary directory, served by `VaultServer.run`
/// on a short Unix socket path, and clients that speak HTTP to it through that socket.
final class ServerHarness: @unchecked Sendable {
    // unchecked: immutable after start(), except `task`, which only start/stop touch.
    let directory: String
    let socket: String
    let vault: Vault
    let operatorToken: [UInt8]
    let clock: ManualClockBox
    private var task: Task<Void, any Error>?

    private init(directory: String, socket: String, vault: Vault, operatorToken: [UInt8], clock: ManualClockBox) {
        self.directory = directory
        self.socket = socket
        self.vault = vault
        self.operatorToken = operatorToken
        self.clock = clock
    }

    static func start(maxBody: Int = 1 << 20, bucketWidthSeconds: Int64 = 86_400, recordsMapSize: Int = 1 << 30,
                      manualClock: Bool = false, auditTail: UInt64 = AuditArchive.defaultTail,
                      configure: (inout ServerConfiguration) -> Void = { _ in },
                      logger customLogger: Logger? = nil, in existing: String? = nil) async throws -> ServerHarness {
        // sun_path is 108 bytes: keep the socket directory short.
        let directory = existing ?? "/tmp/sv-" + UUID().uuidString.prefix(8).lowercased()
        try FileManager.default.createDirectory(atPath: directory + "/keys", withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        let clock = ManualClockBox(manual: manualClock)
        var configuration = VaultConfiguration(bucketWidthSeconds: bucketWidthSeconds, keystoreMapSize: 256 << 20,
                                               recordsMapSize: recordsMapSize, clock: clock.vaultClock)
        configuration.commitObserver = ServerMetrics.commitObserver
        configuration.auditTail = auditTail
        let vault = try Vault.create(dataDirectory: directory + "/data", masterKeyFile: directory + "/keys/master.key",
                                     configuration: configuration)
        let issued = try await vault.issueToken(tenant: nil, role: .operator, name: "test operator", actor: .system)
        let token = issued.secret.withUnsafeBytes { Array($0) }
        let harness = ServerHarness(directory: directory, socket: directory + "/data/shredvault.sock", vault: vault,
                                    operatorToken: token, clock: clock)
        var serverConfiguration = ServerConfiguration(socketPath: harness.socket, maxBody: maxBody)
        configure(&serverConfiguration)
        let server = VaultServer(vault: vault, configuration: serverConfiguration)
        var logger = customLogger ?? Logger(label: "shredvault-test")
        if customLogger == nil { logger.logLevel = .warning }
        let (running, continuation) = AsyncStream<Void>.makeStream()
        harness.task = Task {
            try await server.run(logger: logger, gracefulShutdownSignals: []) { continuation.yield() }
        }
        for await _ in running { break }
        return harness
    }

    func stop() async {
        task?.cancel()
        _ = try? await task?.value
        vault.close()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Starts a server (as `start`), runs `body` with it, and awaits its shutdown before
    /// returning or rethrowing: the next test never meets this one's daemon, socket or files.
    static func with<R>(maxBody: Int = 1 << 20, bucketWidthSeconds: Int64 = 86_400, recordsMapSize: Int = 1 << 30,
                        manualClock: Bool = false, auditTail: UInt64 = AuditArchive.defaultTail,
                        configure: (inout ServerConfiguration) -> Void = { _ in },
                        logger: Logger? = nil, in existing: String? = nil,
                        _ body: (ServerHarness) async throws -> R) async throws -> R {
        let h = try await start(maxBody: maxBody, bucketWidthSeconds: bucketWidthSeconds, recordsMapSize: recordsMapSize,
                                manualClock: manualClock, auditTail: auditTail, configure: configure, logger: logger,
                                in: existing)
        do {
            let result = try await body(h)
            await h.stop()
            return result
        } catch {
            await h.stop()
            throw error
        }
    }

    func client(_ token: [UInt8]?) -> VaultHTTPClient {
        VaultHTTPClient(endpoint: .unixSocket(path: socket), token: token, timeout: 30)
    }

    var operatorClient: VaultHTTPClient { client(operatorToken) }

    /// Creates a tenant with an agent and an admin token through the API.
    func tenant(_ id: String) async throws -> (agent: VaultHTTPClient, admin: VaultHTTPClient, agentToken: [UInt8], adminToken: [UInt8]) {
        let op = operatorClient
        let created = try await op.send("POST", "/v1/admin/tenants", body: json(["id": id]))
        precondition(created.status == 201, "tenant create: \(created.status)")
        var tokens: [[UInt8]] = []
        for role in ["agent", "admin"] {
            let r = try await op.send("POST", "/v1/admin/tokens", body: json(["tenant": id, "role": role, "name": "\(id)-\(role)"]))
            precondition(r.status == 201, "token issue: \(r.status)")
            tokens.append(Array((try r.object()["token"] as! String).utf8))
        }
        return (client(tokens[0]), client(tokens[1]), tokens[0], tokens[1])
    }
}

/// A clock that is the system clock unless a test asks for a manual one.
final class ManualClockBox: @unchecked Sendable {
    // unchecked: `ms` is guarded by `lock`.
    private let lock = NSLock()
    private var ms: Int64?

    init(manual: Bool) { ms = manual ? 1_800_000_000_000 : nil }

    var vaultClock: VaultClock {
        VaultClock { [self] in
            lock.lock()
            defer { lock.unlock() }
            return ms ?? VaultClock.system.now()
        }
    }

    func advance(seconds: Int64) {
        lock.lock()
        ms = (ms ?? VaultClock.system.now()) + seconds * 1000
        lock.unlock()
    }
}

func json(_ object: [String: Any]) -> [UInt8] {
    Array(try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]))
}

extension HTTPResponse {
    func object() throws -> [String: Any] {
        guard let o = try JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] else {
            throw CocoaError(.propertyListReadCorrupt)
        }
        return o
    }

    var text: String { String(decoding: body, as: UTF8.self) }

    /// The problem+json shape of docs/api.md.
    var isProblem: Bool {
        guard header("content-type") == "application/problem+json", let o = try? object() else { return false }
        return o["type"] is String && o["title"] is String && (o["status"] as? Int) == status && o["detail"] is String
    }
}

/// A daemon over a directory that outlives it (restart tests).
final class DaemonInProcess: @unchecked Sendable {
    // unchecked: set once in start().
    let socket: String
    let vault: Vault
    let operatorToken: [UInt8]
    private var task: Task<Void, any Error>?

    private init(socket: String, vault: Vault, operatorToken: [UInt8]) {
        self.socket = socket
        self.vault = vault
        self.operatorToken = operatorToken
    }

    static func start(dir: String, create: Bool, operatorToken: [UInt8] = []) async throws -> DaemonInProcess {
        let config = VaultConfiguration(keystoreMapSize: 256 << 20, recordsMapSize: 1 << 30)
        let vault = create
            ? try Vault.create(dataDirectory: dir + "/data", masterKeyFile: dir + "/keys/master.key", configuration: config)
            : try Vault.open(dataDirectory: dir + "/data", masterKeyFile: dir + "/keys/master.key", configuration: config)
        var token = operatorToken
        if create {
            let issued = try await vault.issueToken(tenant: nil, role: .operator, name: "op", actor: .system)
            token = issued.secret.withUnsafeBytes { Array($0) }
        }
        let d = DaemonInProcess(socket: dir + "/data/shredvault.sock", vault: vault, operatorToken: token)
        let server = VaultServer(vault: vault, configuration: .init(socketPath: d.socket))
        var logger = Logger(label: "shredvault-test")
        logger.logLevel = .warning
        let (running, continuation) = AsyncStream<Void>.makeStream()
        d.task = Task { try await server.run(logger: logger, gracefulShutdownSignals: []) { continuation.yield() } }
        for await _ in running { break }
        return d
    }

    func client(_ token: [UInt8]) -> VaultHTTPClient { VaultHTTPClient(endpoint: .unixSocket(path: socket), token: token, timeout: 30) }

    func stop() async {
        task?.cancel()
        _ = try? await task?.value
        vault.close()
    }
}

/// The `shredvault` binary the tests run: `$SHREDVAULT_TEST_BIN` when set (scripts/sanitize
/// points it at the sanitized build), else `.build/debug/shredvault` of this package, as
/// `swift build --build-tests` leaves it.
let shredvaultTestBinary: String = {
    if let bin = ProcessInfo.processInfo.environment["SHREDVAULT_TEST_BIN"], !bin.isEmpty { return bin }
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }  // Harness.swift, VaultServerTests, Tests
    return url.appendingPathComponent(".build/debug/shredvault").path
}()
