import ArgumentParser
import Logging
import Sodium
import VaultCore
import VaultServer

/// `shredvault serve`: the daemon.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the daemon: serve the HTTP API on a Unix socket until SIGTERM or SIGINT.",
        discussion: """
            Refuses to start on a key file readable by others, a world-writable data directory, \
            a key that does not match the vault, or a data directory another process holds. \
            Logs to stderr; request bodies, tokens and subjects are never logged. On SIGTERM or \
            SIGINT it stops accepting, finishes in-flight requests, commits, closes the vault \
            and exits 0.
            """)

    @OptionGroup var location: VaultLocation

    @Option(help: ArgumentHelp("The Unix socket to serve on, created 0660 (default: <data-dir>/shredvault.sock).",
                               valueName: "path"))
    var socket: String?

    @Option(help: ArgumentHelp("Also listen on loopback TCP, e.g. 127.0.0.1:8080 (no TLS: loopback only).",
                               valueName: "host:port"))
    var listen: String?

    @Option(name: .customLong("bucket-width"),
            help: ArgumentHelp("The vault's expiry-bucket width, as a check: the daemon refuses to start if the "
                               + "vault was created with another (default: the vault's own, set by `init --bucket-width`).",
                               valueName: "duration"))
    var bucketWidth: String?

    @Option(name: .customLong("max-body"),
            help: ArgumentHelp("Largest request body accepted, in bytes (K/M/G suffixes allowed; default 1M).",
                               valueName: "bytes"))
    var maxBody: String?

    @Option(name: .customLong("map-size"),
            help: ArgumentHelp("Largest size each LMDB environment (keystore, records) may grow to, in bytes "
                               + "(K/M/G/T suffixes allowed; defaults 8G and 64G).",
                               valueName: "bytes"))
    var mapSize: String?

    @Option(name: .customLong("max-connections"),
            help: ArgumentHelp("Most connections open at once; past it new clients wait in the listen backlog "
                               + "(default 1024, lowered to fit the file-descriptor limit).",
                               valueName: "n"))
    var maxConnections: Int?

    @Option(name: .customLong("request-timeout"),
            help: ArgumentHelp("Time a connection has to send a whole request, from its opening or the previous "
                               + "response, as an ISO 8601 duration (default PT30S); slower clients are disconnected.",
                               valueName: "duration"))
    var requestTimeout: String?

    @Option(name: .customLong("audit-retention"),
            help: ArgumentHelp("How long audit entries keep their content, as an ISO 8601 duration (default P400D, "
                               + "at least P92D): the sweep prunes older ones, keeping their hashes, never before "
                               + "the longest record retention in force.",
                               valueName: "duration"))
    var auditRetention: String?

    @Option(name: .customLong("rotation-chunk"),
            help: ArgumentHelp("Records a rotation re-wraps per write transaction (default 10000): bounds the "
                               + "memory a rotation needs; other requests are served between chunks.",
                               valueName: "n"))
    var rotationChunk: Int?

    @Option(help: ArgumentHelp("The journal every write is appended to before it is acknowledged: a directory "
                               + "(on another disk than the data) or a PostgreSQL database (postgres://USER@HOST:PORT/DB, "
                               + "or postgres://USER@/DB?host=/socket/dir), that survives the loss of this one.",
                               valueName: "dir|url"))
    var journal: String?

    @Option(name: .customLong("journal-password-file"),
            help: ArgumentHelp("A file (mode 0600) holding the password of a postgres:// journal's user.", valueName: "file"))
    var journalPasswordFile: String?

    @Flag(name: .customLong("new-journal"),
          help: "Start a new journal in the (empty) --journal directory from a snapshot, although the vault wrote to another one.")
    var newJournal = false

    @Flag(help: ArgumentHelp("Follow the --journal postgres:// another vault writes, applying its change sets to this "
                             + "data directory (made from the journal's latest snapshot when empty); answer only /healthz "
                             + "and GET /v1/admin/journal until promoted (POST /v1/admin/promote), then serve as the writer."))
    var standby = false

    @Option(name: .customLong("journal-lease"),
            help: ArgumentHelp("How long a postgres:// journal's writer lease lasts without renewal, as an ISO 8601 "
                               + "duration (default PT10S): a standby may be promoted this long after the writer's last renewal.",
                               valueName: "duration"))
    var journalLease: String?

    @Flag(name: .customLong("detach-journal"),
          help: "Run a vault that wrote a journal without one (its journal falls behind for good).")
    var detachJournal = false

    @Flag(name: .customLong("new-audit-key"),
          help: ArgumentHelp("Sign the audit's heads with a new key from now on when --audit-key is missing or holds "
                             + "another key (a lost file): listed after the earlier keys; tenants will see the change."))
    var newAuditKey = false

    /// The options, checked and converted.
    struct Settings {
        var socketPath: String
        var listen: (host: String, port: Int)?
        var vault: VaultConfiguration
        var maxBody: Int
        var maxConnections = 1024
        var requestTimeoutSeconds: Int64 = 30
    }

    func validate() throws {
        _ = try settings()
    }

    func settings() throws -> Settings {
        var vault = VaultConfiguration()
        vault.requestedBucketWidthSeconds = try bucketWidth.map(bucketWidthSeconds)
        if let mapSize {
            let bytes = try byteCount(mapSize, option: "--map-size")
            guard bytes >= 1 << 20 else { throw ValidationError("--map-size must be at least 1M") }
            vault.keystoreMapSize = bytes
            vault.recordsMapSize = bytes
        }
        if let auditRetention {
            try checkDuration(auditRetention, option: "--audit-retention")
            let seconds = try ISODuration.seconds(auditRetention, field: "--audit-retention")
            guard seconds >= AuditRetention.minimumSeconds else {
                throw ValidationError("--audit-retention must be at least P92D, the standard record retention")
            }
            vault.auditRetentionSeconds = seconds
        }
        if let rotationChunk {
            guard rotationChunk >= 1 else { throw ValidationError("--rotation-chunk must be at least 1") }
            vault.rotationChunkSize = rotationChunk
        }
        if let journal {
            vault.journal = JournalSettings(location: try JournalLocation.parse(journal), startNew: newJournal)
            vault.journal?.passwordFile = journalPasswordFile
            if let journalLease {
                try checkDuration(journalLease, option: "--journal-lease")
                let seconds = try ISODuration.seconds(journalLease, field: "--journal-lease")
                guard (1...3600).contains(seconds) else { throw ValidationError("--journal-lease must be from PT1S to PT1H") }
                vault.journal?.leaseSeconds = Int(seconds)
            }
        } else if newJournal || journalPasswordFile != nil || journalLease != nil {
            throw ValidationError("--new-journal, --journal-password-file and --journal-lease need --journal")
        }
        if standby {
            guard journal?.hasPrefix("postgres") == true else {
                throw ValidationError("--standby follows a PostgreSQL journal: give --journal postgres://...")
            }
            guard !newJournal else { throw ValidationError("--standby and --new-journal do not go together") }
        }
        guard !(detachJournal && journal != nil) else { throw ValidationError("give --journal or --detach-journal, not both") }
        vault.detachJournal = detachJournal
        vault.auditKeyFile = location.auditKeyFile
        vault.newAuditKey = newAuditKey
        var body = 1 << 20
        if let maxBody {
            body = try byteCount(maxBody, option: "--max-body")
            guard body >= 1024 else { throw ValidationError("--max-body must be at least 1K") }
        }
        let socketPath = socket ?? location.dataDirectory + "/shredvault.sock"
        guard socketPath.utf8.count < 108 else {
            throw ValidationError("the socket path \(socketPath) is longer than 107 bytes (sun_path); pass a shorter --socket")
        }
        var settings = Settings(socketPath: socketPath, listen: try listen.map(loopback), vault: vault, maxBody: body)
        if let maxConnections {
            guard maxConnections >= 1 else { throw ValidationError("--max-connections must be at least 1") }
            settings.maxConnections = maxConnections
        }
        if let requestTimeout {
            try checkDuration(requestTimeout, option: "--request-timeout")
            settings.requestTimeoutSeconds = try ISODuration.seconds(requestTimeout, field: "--request-timeout")
            guard settings.requestTimeoutSeconds >= 1 else { throw ValidationError("--request-timeout must be at least PT1S") }
        }
        return settings
    }

    /// `127.0.0.1:8080`, `localhost:8080` or `[::1]:8080`. Tokens cross this listener in clear,
    /// so it is refused on anything but loopback.
    func loopback(_ text: String) throws -> (host: String, port: Int) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
              (1...65535).contains(port) else {
            throw ValidationError("--listen takes HOST:PORT, e.g. 127.0.0.1:8080")
        }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        let isLoopback = host == "localhost" || host == "::1" || host.split(separator: ".").count == 4 && host.hasPrefix("127.")
        guard isLoopback else {
            throw ValidationError("--listen accepts loopback addresses only (127.x.x.x, ::1, localhost): there is no TLS")
        }
        return (host == "localhost" ? "127.0.0.1" : host, port)
    }

    func run() async throws {
        // First, before any key is read: a core file would hold keys and plaintext.
        Sodium.disableCoreDumps()
        let settings = try settings()

        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .info
            return handler
        }
        let logger = {
            var logger = Logger(label: "shredvault")
            logger.logLevel = .info
            return logger
        }()

        // The registry bootstraps swift-metrics: it must exist before the first commit is observed.
        _ = ServerMetrics.registry
        var configuration = settings.vault
        configuration.commitObserver = ServerMetrics.commitObserver
        configuration.progress = { line in logger.notice("\(line)") }
        configuration.journal?.progress = { line in logger.info("journal", metadata: ["progress": "\(line)"]) }

        var serverConfiguration = ServerConfiguration(socketPath: settings.socketPath, listen: settings.listen,
                                                      maxBody: settings.maxBody)
        serverConfiguration.maxConnections = settings.maxConnections
        serverConfiguration.requestTimeout = .seconds(settings.requestTimeoutSeconds)
        let socketPath = settings.socketPath
        let listen = settings.listen

        // SIGTERM and SIGINT are watched for the process's whole life, not by each server: one that
        // arrives while a promoted standby opens its vault stops the vault's server at once.
        let shutdown = ShutdownTrigger()
        let signals = shutdown.watchSignals()
        defer { signals.cancel() }

        if standby {
            // Until promoted, a standby: then the same process opens the vault as the writer.
            guard let promotion = try await runStandby(configuration: configuration, server: serverConfiguration,
                                                       shutdown: shutdown, logger: logger) else { return }
            if shutdown.isRequested {
                logger.info("promoted, and asked to stop: the next start opens the vault as the writer")
                return
            }
            configuration.journal = promotion.settings
            logger.notice("promoted: opening the vault as the journal's writer", metadata: ["term": "\(promotion.term)"])
        }

        let vault = try reportingFailures {
            try Vault.open(dataDirectory: location.dataDirectory, masterKeyFile: location.keyFile,
                           configuration: configuration)
        }
        if !Sodium.areCoreDumpsDisabled {
            logger.warning("core dumps could not be disabled; keys could reach a core file")
        }
        logger.info("vault opened", metadata: [
            "data_dir": "\(location.dataDirectory)",
            "bucket_width": "\(ISODuration.format(seconds: vault.configuration.bucketWidthSeconds))",
            "audit_retention": "\(ISODuration.format(seconds: vault.configuration.auditRetentionSeconds))",
        ])
        if let journal = configuration.journal {
            logger.info("journal attached", metadata: ["journal": "\(journal.location)"])
        } else {
            logger.warning("no journal: the data has one copy, on this disk (serve --journal DIR on another disk)")
        }
        // A damaged token row does not stop the daemon: that token answers 401 until it is
        // revoked (which removes the row) and reissued.
        for failure in vault.tokenRowFailures {
            logger.error("token refused at start-up", metadata: ["error": "\(failure)"])
        }

        let server = VaultServer(vault: vault, configuration: serverConfiguration)
        do {
            try await server.run(logger: logger, gracefulShutdownSignals: [], shutdown: shutdown) {
                var metadata: Logger.Metadata = ["socket": "\(socketPath)", "mode": "0660"]
                if let listen { metadata["tcp"] = "\(listen.host):\(listen.port)" }
                logger.info("listening", metadata: metadata)
            }
        } catch {
            vault.close()
            // VaultError and friends describe themselves without secrets.
            Terminal.error("shredvault: \(error)")
            throw ExitCode.failure
        }
        logger.info("stopping: committing and closing the vault")
        vault.close()
        logger.info("stopped")
    }

    /// Follows the journal and serves the standby's routes until promoted (the promotion) or
    /// stopped by a signal (nil).
    func runStandby(configuration: VaultConfiguration, server: ServerConfiguration, shutdown: ShutdownTrigger,
                    logger: Logger) async throws -> StandbyServer.Promotion? {
        let node = try reportingFailures {
            try Standby.open(dataDirectory: location.dataDirectory, masterKeyFile: location.keyFile, configuration: configuration)
        }
        node.start()
        let status = node.status
        logger.info("standby: following the journal", metadata: ["journal": "\(status.location)",
                                                                 "applied": "\(status.applied)", "epoch": "\(status.epoch)"])
        let promotion: StandbyServer.Promotion?
        do {
            promotion = try await StandbyServer(standby: node, configuration: server)
                .run(logger: logger, gracefulShutdownSignals: [], shutdown: shutdown) {
                logger.info("listening (standby)", metadata: ["socket": "\(server.socketPath)", "mode": "0660"])
            }
        } catch {
            node.close()
            Terminal.error("shredvault: \(error)")
            throw ExitCode.failure
        }
        if promotion == nil {
            node.close()
            logger.info("stopped (standby)")
        }
        return promotion
    }
}

/// `--bucket-width` (of `init` and `serve`): an ISO 8601 duration of at least one second.
func bucketWidthSeconds(_ text: String) throws -> Int64 {
    try checkDuration(text, option: "--bucket-width")
    let seconds = try ISODuration.seconds(text, field: "--bucket-width")
    guard seconds >= 1 else { throw ValidationError("--bucket-width must be at least PT1S") }
    return seconds
}

/// `1048576`, `512K`, `64M`, `8G`, `1T` (binary multiples; `KiB`, `MB` and friends read the same).
func byteCount(_ text: String, option: String) throws -> Int {
    var digits = Substring(text.uppercased())
    if digits.hasSuffix("IB") { digits = digits.dropLast(2) } else if digits.hasSuffix("B") { digits = digits.dropLast() }
    var multiplier = 1
    let units: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
    if let last = digits.last, let unit = units[last] {
        multiplier = unit
        digits = digits.dropLast()
    }
    guard let value = Int(digits), value > 0 else {
        throw ValidationError("\(option) takes a size in bytes, e.g. 1048576, 512K, 64M or 8G")
    }
    let (product, overflow) = value.multipliedReportingOverflow(by: multiplier)
    guard !overflow else { throw ValidationError("\(option) is too large") }
    return product
}
