public import Hummingbird
import HummingbirdCore
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

    public init(vault: Vault, configuration: ServerConfiguration) {
        ServerMetrics.bootstrap()
        self.vault = vault
        self.configuration = configuration
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
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
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
    /// finish, then the caller closes the vault. The socket is created 0660 (the umask is
    /// narrowed around the bind, so no request can arrive on a wider socket) and removed
    /// at the end. If the socket file is removed while the daemon runs, it says so and binds
    /// a new one (connections already open carry on).
    public func run(logger: Logger, gracefulShutdownSignals: [UnixSignal] = [.sigterm, .sigint],
                    onRunning: @escaping @Sendable () async -> Void = {}) async throws {
        try Self.prepareSocket(configuration.socketPath)
        let socketPath = configuration.socketPath
        let socketFile = SocketFile(path: socketPath)
        defer { socketFile.removeIfOurs() }
        let maxConnections = Self.connectionLimit(wanted: configuration.maxConnections, logger: logger)
        let eventLoops = MultiThreadedEventLoopGroup(numberOfThreads: max(1, configuration.ioThreads))
        defer { eventLoops.shutdownGracefully { _ in } }
        let responder = self.router(logger: logger).buildResponder()
        let deadline = TimeAmount.nanoseconds(Int64(configuration.requestTimeout.components.seconds) * 1_000_000_000
                                              + configuration.requestTimeout.components.attoseconds / 1_000_000_000)
        let server = HTTPServerBuilder.http1(configuration: .init(
            additionalChannelHandlers: [FlushBeforeCloseHandler(limit: deadline),
                                        RequestDeadlineHandler(limit: deadline, logger: logger)]))
        let signals = gracefulShutdownSignals
        // The process's own umask, put back if a re-bind fails before it could restore it.
        let processUmask = umask(0o077)
        umask(processUmask)

        @Sendable func unixApplication(onBound: @escaping @Sendable () async -> Void) -> some ApplicationProtocol {
            let previous = umask(0o117)
            return Application(
                responder: responder, server: server,
                configuration: .init(address: .unixDomainSocket(path: socketPath), serverName: "shredvault",
                                     availableConnectionsDelegate: ConnectionLimit(limit: maxConnections, logger: logger)),
                onServerRunning: { _ in
                    // Bound with the narrow umask: put the process's own back for everything else.
                    umask(previous)
                    chmod(socketPath, 0o660)
                    socketFile.remember()
                    await onBound()
                },
                eventLoopGroupProvider: .shared(eventLoops),
                logger: logger)
        }

        enum Event: Sendable { case stopped, socketGone, watchEnded }
        let stopping = StopFlag()
        try await withThrowingTaskGroup(of: Event.self) { group in
            let first = unixApplication(onBound: onRunning)
            group.addTask { try await first.runService(gracefulShutdownSignals: signals); return .stopped }
            if let listen = configuration.listen {
                let tcp = Application(
                    responder: responder, server: server,
                    configuration: .init(address: .hostname(listen.host, port: listen.port), serverName: "shredvault",
                                         availableConnectionsDelegate: ConnectionLimit(limit: maxConnections, logger: logger)),
                    eventLoopGroupProvider: .shared(eventLoops), logger: logger)
                group.addTask { try await tcp.runService(gracefulShutdownSignals: signals); return .stopped }
            }
            let interval = configuration.socketCheckInterval
            let watch: @Sendable () async -> Event = {
                await socketFile.waitUntilRemoved(every: interval, unless: stopping, logger: logger) ? .socketGone : .watchEnded
            }
            group.addTask(operation: watch)
            while let event = try await group.next() {
                switch event {
                case .stopped:
                    // A listener ended gracefully (a signal reaches every listener): stop
                    // watching and let the others finish their in-flight requests.
                    stopping.set()
                case .socketGone:
                    logger.error("the socket file was removed under the daemon; binding a new one",
                                 metadata: ["socket": "\(socketPath)"])
                    let again = unixApplication {
                        logger.notice("listening again", metadata: ["socket": "\(socketPath)"])
                    }
                    group.addTask {
                        do {
                            try await again.runService(gracefulShutdownSignals: signals)
                            return .stopped
                        } catch {
                            // Not bound (something took the path meanwhile): the daemon keeps
                            // serving the connections it has rather than stop; new clients
                            // cannot reach it until it restarts.
                            umask(processUmask)
                            logger.error("could not bind the socket again; restart the daemon",
                                         metadata: ["socket": "\(socketPath)", "error": "\(error)"])
                            return .watchEnded
                        }
                    }
                    group.addTask(operation: watch)
                case .watchEnded:
                    break
                }
            }
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

    func removeIfOurs() {
        guard let ours = identity.withLock({ $0 }), let now = current(), now == ours else { return }
        unlink(path)
    }

    /// Polls the path; true once it is gone (it was ours and nothing else took its place),
    /// false when asked to stop or cancelled. Logs once if another file replaced it.
    func waitUntilRemoved(every interval: Duration, unless stopping: StopFlag, logger: Logger) async -> Bool {
        var warned = false
        while !stopping.isSet {
            do { try await Task.sleep(for: interval) } catch { return false }
            guard let ours = identity.withLock({ $0 }) else { continue }
            guard let now = current() else { return !stopping.isSet }
            if now != ours, !warned {
                warned = true
                logger.error("the socket path now holds another file; not touching it (restart the daemon)",
                             metadata: ["socket": "\(path)"])
            }
        }
        return false
    }
}

final class StopFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    func set() { flag.store(true, ordering: .relaxed) }
    var isSet: Bool { flag.load(ordering: .relaxed) }
}
