public import Hummingbird
import HummingbirdCore
import ServiceLifecycle
public import UnixSignals
public import Logging
import NIOCore
import NIOPosix
import Sodium
import Synchronization
import Locking
public import VaultCore
#if canImport(Glibc)
import Glibc
#endif

public struct ServerConfiguration: Sendable {
    /// The Unix socket the daemon serves on (docs/api.md: `<data-dir>/shredvault.sock`, mode 0660).
    public var socketPath: String
    /// An optional loopback TCP listener, `127.0.0.1:PORT`.
    public var listen: (host: String, port: Int)?
    /// Largest request body accepted (413 above it).
    public var maxBody: Int = 1 << 20
    /// Event-loop threads for the HTTP side. Default: one core fewer than the machine has
    /// (at least one), leaving a core to the group-commit writer and the handlers: on 2 cores,
    /// one event loop measured 2–19% more writes/s than two (h2load, 64 connections).
    public var ioThreads: Int = max(1, System.coreCount - 1)
    /// Most connections open at once; past it the daemon stops accepting until one closes
    /// (capped below the process's file-descriptor limit at start-up).
    public var maxConnections: Int = 1024
    /// Time a connection has to deliver a whole request, from its opening or from the end of
    /// the previous response (slow-loris and idle connections are closed after it).
    public var requestTimeout: Duration = .seconds(30)
    /// Per-peer back-off for repeated bad tokens; nil turns it off (tests that probe many
    /// bad tokens on purpose).
    public var authBackoff: AuthBackoffPolicy? = AuthBackoffPolicy()
    /// How often the daemon checks that its socket file is still there (re-created if removed).
    public var socketCheckInterval: Duration = .seconds(1)
    /// Most `GET /v1/audit/stream` answers open at once (503 with `Retry-After` past it).
    public var maxAuditStreams: Int = 64
    /// How often the operator log's head is signed and logged while entries arrive (`HeadPublisher`).
    public var headInterval: Duration = .seconds(60)

    public init(socketPath: String, listen: (host: String, port: Int)? = nil, maxBody: Int = 1 << 20) {
        self.socketPath = socketPath
        self.listen = listen
        self.maxBody = maxBody
    }
}

/// The HTTP face of a vault: every route of docs/api.md, on a Unix socket.
public struct VaultServer: Sendable {
    public let vault: Vault
    public let configuration: ServerConfiguration
    let authBackoff: AuthBackoff?
    let auditStreams: AuditStreams

    public init(vault: Vault, configuration: ServerConfiguration) {
        ServerMetrics.bootstrap()
        self.vault = vault
        self.configuration = configuration
        self.auditStreams = AuditStreams(limit: configuration.maxAuditStreams)
        self.authBackoff = configuration.authBackoff.map { AuthBackoff(policy: $0) }
    }

    /// The router with every route and the middleware; what tests and the daemon share.
    public func router(logger: Logger = Logger(label: "shredvault")) -> Router<VaultRequestContext> {
        let router = Router(context: VaultRequestContext.self)
        router.add(middleware: MetricsMiddleware())
        if let authBackoff { router.add(middleware: AuthBackoffMiddleware(backoff: authBackoff, logger: logger)) }
        router.add(middleware: ProblemMiddleware(routes: RouteIndex(routes)))
        addRoutes(RouteTable(router))
        return router
    }

    private func addRoutes(_ table: RouteTable) {
        addHealthRoutes(table)
        addRecordRoutes(table)
        addSubjectRoutes(table)
        addRetentionRoutes(table)
        addHoldRoutes(table)
        addAuditRoutes(table)
        addAuditStreamRoutes(table)
        addAdminRoutes(table)
    }

    /// Every (method, path) served, paths in OpenAPI form (`/v1/records/{id}`).
    public var routes: [(method: String, path: String)] {
        let table = RouteTable(Router(context: VaultRequestContext.self))
        addRoutes(table)
        return table.routes
    }

    /// Refuses to start when another daemon answers on the socket path; removes a stale
    /// socket file left by a crashed one (the caller holds the data directory's lock).
    public static func prepareSocket(_ path: String) throws {
        guard path.utf8.count < 108 else {
            throw VaultError.invalidArgument("socket path is longer than 107 bytes: \(path)")
        }
        guard PrivateSocketDirectory.stagingLength(for: path) < 108 else {
            throw VaultError.invalidArgument("the socket's directory path is too long to bind in (keep it under 97 bytes): \(path)")
        }
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        guard (st.st_mode & S_IFMT) == S_IFSOCK else {
            throw VaultError.dataDirectory("\(path) exists and is not a socket")
        }
        if socketAnswers(path) {
            throw VaultError.dataDirectory("another process is listening on \(path)")
        }
        guard unlink(path) == 0 else { throw VaultError.io("cannot remove stale socket \(path)") }
    }

    static func socketAnswers(_ path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            let bytes = Array(path.utf8)
            p.copyBytes(from: bytes.prefix(p.count - 1))
        }
        return withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0 }
        }
    }

    /// Runs the daemon until SIGTERM or SIGINT: stops accepting, lets in-flight requests
    /// finish, then the caller closes the vault. The socket is created 0660 (bound in a private
    /// directory and linked into place, so no request can arrive on a wider socket) and removed
    /// at the end. If the socket file is removed while the daemon runs, it says so and binds
    /// a new one (connections already open carry on).
    ///
    /// The listeners, the socket watch and any re-bound listener are services of one
    /// `ServiceGroup`, which alone handles the signals: once a graceful shutdown has begun the
    /// group takes no new service, so the socket file a stopping listener removes is never
    /// taken for an operator's deletion and re-bound by a listener no signal would reach.
    public func run(logger: Logger, gracefulShutdownSignals: [UnixSignal] = [.sigterm, .sigint],
                    shutdown: ShutdownTrigger? = nil,
                    onRunning: @escaping @Sendable () async -> Void = {}) async throws {
        let heads = HeadPublisher(vault: vault, interval: configuration.headInterval, logger: logger)
        try await Self.serve(responder: router(logger: logger).buildResponder(), configuration: configuration, logger: logger,
                             gracefulShutdownSignals: gracefulShutdownSignals, onRunning: onRunning,
                             onGroup: { group in shutdown?.attach(group) }, extraServices: [heads])
    }

    /// Serves `responder` as `run` describes (the daemon's routes, or a standby's); `onGroup` gets
    /// the service group before it runs (to end it from a route: a standby's promotion).
    static func serve<Responder: HTTPResponder>(
        responder: Responder, configuration: ServerConfiguration, logger: Logger, gracefulShutdownSignals: [UnixSignal],
        onRunning: @escaping @Sendable () async -> Void, onGroup: (ServiceGroup) -> Void = { _ in },
        extraServices: [any Service] = []
    ) async throws where Responder.Context == VaultRequestContext {
        try Self.prepareSocket(configuration.socketPath)
        let socketPath = configuration.socketPath
        let socketFile = SocketFile(path: socketPath)
        defer { socketFile.removeIfOurs() }
        let maxConnections = Self.connectionLimit(wanted: configuration.maxConnections, logger: logger)
        let eventLoops = MultiThreadedEventLoopGroup(numberOfThreads: max(1, configuration.ioThreads))
        defer { eventLoops.shutdownGracefully { _ in } }
        let deadline = TimeAmount.nanoseconds(Int64(configuration.requestTimeout.components.seconds) * 1_000_000_000
                                              + configuration.requestTimeout.components.attoseconds / 1_000_000_000)
        let server = HTTPServerBuilder.http1(configuration: .init(
            additionalChannelHandlers: [FlushBeforeCloseHandler(limit: deadline),
                                        RequestDeadlineHandler(limit: deadline, logger: logger)]))
        // The socket is bound inside a fresh 0700 directory beside its path, made 0660 there, then
        // hard-linked into place (link(2) never replaces a file that took the path meanwhile):
        // no client reaches it before it has its mode, and the process-wide umask is never
        // touched (children the daemon spawns meanwhile, `--alert-command`, would inherit it).
        let bindFailure = Locked<String?>(nil)
        @Sendable func unixApplication(onBound: @escaping @Sendable () async -> Void) throws -> some Service {
            let staging = try PrivateSocketDirectory(beside: socketPath)
            return Application(
                responder: responder, server: server,
                configuration: .init(address: .unixDomainSocket(path: staging.socketPath), serverName: "shredvault",
                                     availableConnectionsDelegate: ConnectionLimit(limit: maxConnections, logger: logger)),
                onServerRunning: { channel in
                    do {
                        try staging.publish(at: socketPath, mode: 0o660)
                    } catch {
                        logger.error("could not put the socket in place", metadata: ["socket": "\(socketPath)", "error": "\(error)"])
                        bindFailure.withLock { $0 = "\(error)" }
                        // Closed, the listener ends (and with it the daemon, for the first bind);
                        // a close that fails leaves it serving where no client can reach it: said.
                        do { try await channel.close() } catch {
                            logger.error("could not close the unreachable listener; restart the daemon",
                                         metadata: ["error": "\(error)"])
                        }
                        return
                    }
                    socketFile.remember()
                    await onBound()
                },
                eventLoopGroupProvider: .shared(eventLoops),
                logger: logger)
        }

        // A listener that ends ends the daemon (a signal reaches every listener anyway).
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: try unixApplication(onBound: onRunning), successTerminationBehavior: .gracefullyShutdownGroup),
        ]
        if let listen = configuration.listen {
            let tcp = Application(
                responder: responder, server: server,
                configuration: .init(address: .hostname(listen.host, port: listen.port), serverName: "shredvault",
                                     availableConnectionsDelegate: ConnectionLimit(limit: maxConnections, logger: logger)),
                eventLoopGroupProvider: .shared(eventLoops), logger: logger)
            services.append(.init(service: tcp, successTerminationBehavior: .gracefullyShutdownGroup))
        }
        let groupBox = Locked<ServiceGroup?>(nil)
        let watch = SocketWatch(file: socketFile, interval: configuration.socketCheckInterval, logger: logger) {
            guard let group = groupBox.withLock({ $0 }) else { return }
            let again: any Service
            do {
                again = try unixApplication { logger.notice("listening again", metadata: ["socket": "\(socketPath)"]) }
            } catch {
                logger.error("could not bind the socket again; restart the daemon",
                             metadata: ["socket": "\(socketPath)", "error": "\(error)"])
                return
            }
            // Not started once a graceful shutdown has begun (the group refuses it).
            await group.addServiceUnlessShutdown(.init(
                service: Rebind(listener: again, socketPath: socketPath, logger: logger),
                successTerminationBehavior: .ignore, failureTerminationBehavior: .ignore))
        }
        services.append(.init(service: watch, successTerminationBehavior: .ignore))
        for s in extraServices { services.append(.init(service: s, successTerminationBehavior: .ignore)) }
        let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: gracefulShutdownSignals,
                                                      logger: logger))
        groupBox.withLock { $0 = group }
        onGroup(group)
        try await group.run()
        if let failure = bindFailure.withLock({ $0 }) {
            throw VaultError.io("could not put the socket in place at \(socketPath): \(failure)")
        }
    }

    /// The connection limit, kept below the file-descriptor limit (raised to its hard limit
    /// first): each connection is a descriptor, and LMDB, the log and the listeners need some.
    static func connectionLimit(wanted: Int, logger: Logger) -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return wanted }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = min(limit.rlim_max, 1 << 20)
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
        }
        let reserve: rlim_t = 64
        let room = limit.rlim_cur > reserve ? Int(limit.rlim_cur - reserve) : 1
        if wanted > room {
            logger.warning("connection limit lowered to fit the file-descriptor limit",
                           metadata: ["wanted": "\(wanted)", "limit": "\(room)"])
        }
        return max(1, min(wanted, room))
    }
}

/// A fresh 0700 directory beside the socket's path, where the listener binds (as `s`) before its
/// socket is given its mode and linked into place. Path lengths: `prepareSocket` checks both.
struct PrivateSocketDirectory: Sendable {
    let directory: String
    var socketPath: String { directory + "/s" }

    /// The staging path for `path`'s socket, as long as `PrivateSocketDirectory(beside:)` makes it.
    static func stagingLength(for path: String) -> Int { parent(of: path).utf8.count + "/.sXXXXXX/s".utf8.count }

    static func parent(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    init(beside path: String) throws {
        var template = Array((Self.parent(of: path) + "/.sXXXXXX").utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw VaultError.io("cannot create a directory beside \(path) to bind the socket in (errno \(errno))")
        }
        directory = String(cString: made)
    }

    /// Gives the bound socket `mode`, links it at `path` (refused if anything is there), and
    /// removes the staging directory whatever happens.
    func publish(at path: String, mode: mode_t) throws {
        defer {
            unlink(socketPath)
            rmdir(directory)
        }
        guard chmod(socketPath, mode) == 0 else { throw VaultError.io("cannot set the socket's mode (errno \(errno))") }
        guard link(socketPath, path) == 0 else {
            let e = errno
            throw VaultError.io(e == EEXIST ? "another file took the socket path" : "cannot link the socket into place (errno \(e))")
        }
    }
}

/// The daemon's socket file: which inode it bound, so it removes only its own at exit and
/// notices when someone deletes it.
final class SocketFile: Sendable {
    let path: String
    private let identity = Locked<(dev: UInt64, ino: UInt64)?>(nil)

    init(path: String) { self.path = path }

    private func current() -> (dev: UInt64, ino: UInt64)? {
        var st = stat()
        guard lstat(path, &st) == 0 else { return nil }
        return (UInt64(st.st_dev), UInt64(st.st_ino))
    }

    func remember() { identity.withLock { $0 = current() } }

    /// Stops watching until the next `remember()` (a re-bind in progress).
    func forget() { identity.withLock { $0 = nil } }

    func removeIfOurs() {
        guard let ours = identity.withLock({ $0 }), let now = current(), now == ours else { return }
        unlink(path)
    }

    /// Polls the path; true once it is gone (it was ours and nothing else took its place),
    /// false when cancelled. Logs once if another file replaced it.
    func waitUntilRemoved(every interval: Duration, logger: Logger) async -> Bool {
        var warned = false
        while true {
            do { try await Task.sleep(for: interval) } catch { return false }
            guard let ours = identity.withLock({ $0 }) else { continue }
            guard let now = current() else { return true }
            if now != ours, !warned {
                warned = true
                logger.error("the socket path now holds another file; not touching it (restart the daemon)",
                             metadata: ["socket": "\(path)"])
            }
        }
    }
}

/// Watches the socket file for the daemon's life (until the graceful shutdown reaches it):
/// when it is removed, says so and asks for a new listener on the path.
struct SocketWatch: Service {
    let file: SocketFile
    let interval: Duration
    let logger: Logger
    let rebind: @Sendable () async -> Void

    func run() async {
        // Cancelled at the graceful shutdown, which reaches this service before the listeners
        // (the group stops its services in reverse order), so before any socket is removed.
        await cancelWhenGracefulShutdown {
            while await file.waitUntilRemoved(every: interval, logger: logger) {
                logger.error("the socket file was removed under the daemon; binding a new one",
                             metadata: ["socket": "\(file.path)"])
                // Not watched again until the new listener has bound (it remembers its inode).
                file.forget()
                await rebind()
            }
        }
    }
}

/// Signs the operator log's head every `interval` while entries arrive, off the request path,
/// and logs it (`audit head`: size, root, time, key, signature; no tenant, no count of any
/// tenant's): whoever keeps the daemon's log keeps signed heads outside the vault, which a
/// later rewrite of the keystore cannot make consistent. It also leaves the head cached, so a
/// `GET /v1/audit/head` of the operator's log seldom signs.
struct HeadPublisher: Service {
    let vault: Vault
    let interval: Duration
    let logger: Logger

    func run() async {
        await cancelWhenGracefulShutdown {
            var published: UInt64 = 0
            while true {
                do { try await Task.sleep(for: interval) } catch { return }
                let head: SignedTreeHead
                do { head = try await vault.auditTreeHead(tenant: nil) } catch {
                    logger.warning("could not sign the audit head", metadata: ["error": "\(error)"])
                    continue
                }
                guard head.size > published else { continue }
                published = head.size
                logger.info("audit head", metadata: [
                    "size": "\(head.size)", "root": "\(VaultServer.base64(head.root))",
                    "at": "\(RFC3339.format(milliseconds: head.at))", "key_id": "\(head.keyID)",
                    "signature": "\(VaultServer.base64(head.signature))",
                ])
            }
        }
    }
}

/// A listener bound again after its socket file was removed. Not bound (something took the
/// path meanwhile): the daemon keeps serving the connections it has rather than stop; new
/// clients cannot reach it until it restarts.
struct Rebind: Service {
    let listener: any Service
    let socketPath: String
    let logger: Logger

    func run() async {
        do {
            try await listener.run()
        } catch {
            logger.error("could not bind the socket again; restart the daemon",
                         metadata: ["socket": "\(socketPath)", "error": "\(error)"])
        }
    }
}

final class StopFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    func set() { flag.store(true, ordering: .relaxed) }
    var isSet: Bool { flag.load(ordering: .relaxed) }
}

/// A shutdown asked for once for the daemon's whole life, across the servers it runs one after
/// the other (a standby's, then the vault's after a promotion): a signal that arrives between
/// them is not lost, and the next server stops as soon as it starts. The caller watches the
/// signals (and passes `gracefulShutdownSignals: []` to the servers).
public final class ShutdownTrigger: Sendable {
    private let state = Locked<(requested: Bool, group: ServiceGroup?)>((false, nil))

    public init() {}

    public var isRequested: Bool { state.withLock { $0.requested } }

    /// Watches SIGTERM and SIGINT until cancelled, asking for the shutdown at each.
    public func watchSignals() -> Task<Void, Never> {
        Task {
            for await _ in await UnixSignalsSequence(trapping: .sigterm, .sigint) { self.request() }
        }
    }

    /// Asks the running server (or the next one) to stop gracefully.
    public func request() {
        let group = state.withLock { s -> ServiceGroup? in
            s.requested = true
            return s.group
        }
        if let group { Task { await group.triggerGracefulShutdown() } }
    }

    /// The server now running (a group told to stop before it runs stops as soon as it does).
    func attach(_ group: ServiceGroup) {
        let requested = state.withLock { s -> Bool in
            s.group = group
            return s.requested
        }
        if requested { Task { await group.triggerGracefulShutdown() } }
    }
}
