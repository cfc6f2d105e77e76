import ArgumentParser
import Sodium
import VaultCore

/// `shredvault init`: a new data directory, a new master key, the first operator token.
struct InitCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Create a vault: the data directory, a new master key and the first operator token.",
        discussion: """
            Refuses to overwrite an existing key file or vault. Prints the operator token once, \
            as {"operator_token": "svt_..."} on stdout: store it now (e.g. in a 0600 file); \
            only its hash is kept. The expiry-bucket width is recorded in the vault and cannot \
            change afterwards (`serve` uses it).
            """)

    @OptionGroup var location: VaultLocation

    @Option(help: ArgumentHelp("The name recorded for the first operator token.", valueName: "name"))
    var name = "initial operator"

    @Option(name: .customLong("bucket-width"),
            help: ArgumentHelp("Width of an expiry bucket as an ISO 8601 duration, recorded in the vault for good "
                               + "(default P1D; PT1S for tests).",
                               valueName: "duration"))
    var bucketWidth: String?

    func validate() throws {
        guard !name.isEmpty else { throw ValidationError("--name must not be empty") }
        _ = try bucketWidth.map(bucketWidthSeconds)
    }

    func run() async throws {
        try await reportingFailures {
            Sodium.disableCoreDumps()
            let keyFile = location.keyFile
            // Checked before anything is created, so a refused init leaves no empty directory behind.
            guard !Files.exists(keyFile) else {
                throw CLIError("\(keyFile) already exists; refusing to overwrite a master key")
            }
            try Files.makeDirectories(Files.directory(of: keyFile), mode: 0o700)

            var configuration = VaultConfiguration(bucketWidthSeconds: try bucketWidth.map(bucketWidthSeconds))
            configuration.auditKeyFile = location.auditKeyFile
            let vault = try Vault.create(dataDirectory: location.dataDirectory, masterKeyFile: keyFile,
                                         configuration: configuration)
            defer { vault.close() }
            let issued = try await vault.issueToken(tenant: nil, role: .operator, name: name, actor: .system)

            // Sized up front: a grown array would leave an unwiped copy of the token behind.
            var line: [UInt8] = []
            line.reserveCapacity(32 + issued.secret.count)
            defer { wipe(&line) }
            line.append(contentsOf: #"{"operator_token": ""#.utf8)
            issued.secret.withUnsafeBytes { line.append(contentsOf: $0) }
            line.append(contentsOf: "\"}\n".utf8)
            let auditKey = location.auditKeyFile ?? AuditKeyFile(besideMasterKey: keyFile).path
            Terminal.error("shredvault: created the vault in \(location.dataDirectory) with master key \(keyFile), "
                + "audit signing key \(auditKey) "
                + "and \(ISODuration.format(seconds: vault.configuration.bucketWidthSeconds)) expiry buckets; "
                + "the operator token below is shown once")
            Terminal.outBytes(line)
        }
    }
}
