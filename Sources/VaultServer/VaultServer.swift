public import Hummingbird
public import UnixSignals
public import Logging
import NIOCore
import NIOPosix
import Sodium
public import VaultCore
#if canImport(Glibc)
import Glibc
#endif

public struct ServerConfiguration: Sendable {
    /// The Unix socket the daemon serves on (API.md: `<data-dir>/shredvault.sock`, mode 0660).
    public var socketPath: String
    /// An optional loopback TCP listener, `127.0.0.1:PORT`.
    public var listen: (host: String, port: Int)?
    /// Largest request body accepted (413 above it).
    public var maxBody: Int = 1 << 20
    /// Event-loop threads for the HTTP side. Default: one core fewer than the machine has
    /// (at least one), leaving a core to the group-commit writer and the handlers: on 2 cores,
    /// one event loop measured 2–19% more writes/s than two (h2load, 64 connections).
    public var ioThreads: Int = max(1, System.coreCount - 1)

    public init(socketPath: String, listen: (host: String, port: Int)? = nil, maxBody: Int = 1 << 20) {
        self.socketPath = socketPath
        self.listen = listen
        self.maxBody = maxBody
    }
}

/// The HTTP face of a vault: every route of API.md, on a Unix socket.
public struct VaultServer: Sendable {
    public let vault: Vault
    public let configuration: ServerConfiguration

    public init(vault: Vault, configuration: ServerConfiguration) {
        ServerMetrics.bootstrap()
        self.vault = vault
        self.configuration = configuration
    }

    /// The router with every route and the middleware; what tests and the daemon share.
    public func router() -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        router.add(middleware: MetricsMiddleware())
        router.add(middleware: ProblemMiddleware())
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
        let table = RouteTable(Router(context: BasicRequestContext.self))
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
    /// at the end.
    public func run(logger: Logger, gracefulShutdownSignals: [UnixSignal] = [.sigterm, .sigint],
                    onRunning: @escaping @Sendable () async -> Void = {}) async throws {
        try Self.prepareSocket(configuration.socketPath)
        let socketPath = configuration.socketPath
        let previous = umask(0o117)
        defer {
            umask(previous)
            unlink(socketPath)
        }
        let eventLoops = MultiThreadedEventLoopGroup(numberOfThreads: max(1, configuration.ioThreads))
        defer { eventLoops.shutdownGracefully { _ in } }
        var apps: [any ApplicationProtocol] = []
        let router = self.router()
        let unixApp = Application(
            router: router,
            configuration: .init(address: .unixDomainSocket(path: socketPath), serverName: "shredvault"),
            onServerRunning: { _ in
                // Bound with the narrow umask: put the process's own back for everything else.
                umask(previous)
                chmod(socketPath, 0o660)
                await onRunning()
            },
            eventLoopGroupProvider: .shared(eventLoops),
            logger: logger)
        apps.append(unixApp)
        if let listen = configuration.listen {
            apps.append(Application(router: router,
                                    configuration: .init(address: .hostname(listen.host, port: listen.port), serverName: "shredvault"),
                                    eventLoopGroupProvider: .shared(eventLoops),
                                    logger: logger))
        }
        if apps.count == 1 {
            try await unixApp.runService(gracefulShutdownSignals: gracefulShutdownSignals)
        } else {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for app in apps { group.addTask { try await app.runService(gracefulShutdownSignals: gracefulShutdownSignals) } }
                try await group.next()
                group.cancelAll()
            }
        }
    }
}
