import ArgumentParser
import VaultCore

/// Where a vault lives on disk: the commands that open it directly (`init`, `serve`).
struct VaultLocation: ParsableArguments {
    @Option(name: .customLong("data-dir"), help: ArgumentHelp("The vault's data directory.", valueName: "dir"))
    var dataDirectory: String

    @Option(name: .customLong("key-file"),
            help: ArgumentHelp("The master key file (0600; keep it apart from backups of the data directory).",
                               valueName: "file"))
    var keyFile: String

    @Option(name: .customLong("audit-key"),
            help: ArgumentHelp("The key file (0600) that signs the audit's tree heads (default: audit.key beside "
                               + "--key-file; made at the vault's first start).", valueName: "file"))
    var auditKeyFile: String?

    func validate() throws {
        guard !dataDirectory.isEmpty else { throw ValidationError("--data-dir must not be empty") }
        guard !keyFile.isEmpty else { throw ValidationError("--key-file must not be empty") }
        guard auditKeyFile?.isEmpty != true else { throw ValidationError("--audit-key must not be empty") }
    }
}

/// How a client command reaches the daemon and how it prints the answer.
///
/// The token is never an option value: command lines are visible to every user of the
/// machine (`ps`, `/proc/*/cmdline`) and land in shell history.
struct ClientOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The daemon's Unix socket (default: $SHREDVAULT_SOCKET, else ./data/shredvault.sock).",
                               valueName: "path"))
    var socket: String?

    @Option(name: .customLong("token-file"),
            help: ArgumentHelp("A file holding the bearer token (default: the token in $SHREDVAULT_TOKEN).",
                               valueName: "file"))
    var tokenFile: String?

    @Flag(help: "Print the daemon's JSON answer as received.")
    var json = false

    @Option(help: ArgumentHelp("Seconds to wait for the daemon's answer (default: 30; 3600 for rotate, sweep and compact).",
                               valueName: "seconds"))
    var timeout: Double?

    func validate() throws {
        if let timeout, !(timeout > 0) { throw ValidationError("--timeout must be a positive number of seconds") }
        if let socket, socket.isEmpty { throw ValidationError("--socket must not be empty") }
        if let tokenFile, tokenFile.isEmpty { throw ValidationError("--token-file must not be empty") }
    }

    var socketPath: String {
        socket ?? environmentString("SHREDVAULT_SOCKET") ?? "./data/shredvault.sock"
    }
}

/// Where a subject identifier comes from. Subjects are personal data, so never from argv.
struct SubjectInput: ParsableArguments {
    @Option(name: .customLong("subject-file"),
            help: ArgumentHelp("A file holding the subject identifier (a trailing newline is ignored).", valueName: "file"))
    var subjectFile: String?

    @Flag(name: .customLong("subject-stdin"), help: "Read the subject identifier from standard input.")
    var subjectStdin = false

    func validate() throws {
        switch (subjectFile != nil, subjectStdin) {
        case (true, true): throw ValidationError("give one of --subject-file and --subject-stdin, not both")
        case (false, false): throw ValidationError("give the subject with --subject-file FILE or --subject-stdin")
        default: break
        }
    }

    /// The one subject, trailing newline trimmed. The caller wipes it.
    func read() throws -> [UInt8] {
        try SubjectInput.read(file: subjectFile)
    }

    /// One subject from `file`, or from standard input when `file` is nil.
    static func read(file subjectFile: String?) throws -> [UInt8] {
        var bytes = try subjectFile.map { try Files.read($0, what: "subject file") }
            ?? Files.readStandardInput(what: "the subject on standard input")
        Files.trimTrailingNewlines(&bytes)
        let source = subjectFile ?? "standard input"
        guard !bytes.isEmpty else {
            throw CLIError("\(source) holds no subject")
        }
        if bytes.contains(0x0A) {
            wipe(&bytes)
            throw CLIError("\(source) holds more than one line; give one subject (`erase` takes one per line)")
        }
        guard bytes.count <= Subject.maxBytes else {
            wipe(&bytes)
            throw CLIError("the subject in \(source) is longer than \(Subject.maxBytes) bytes")
        }
        return bytes
    }
}

/// Parses `--name=value` pairs such as `privacy_related=P7D`.
func keyValue(_ text: String, option: String) throws -> (String, String) {
    guard let eq = text.firstIndex(of: "="), eq != text.startIndex, text.index(after: eq) != text.endIndex else {
        throw ValidationError("\(option) takes NAME=VALUE, e.g. privacy_related=P7D")
    }
    return (String(text[..<eq]), String(text[text.index(after: eq)...]))
}

/// Checks an ISO 8601 duration before it is sent (the daemon checks again).
func checkDuration(_ text: String, option: String) throws {
    do { _ = try ISODuration.seconds(text, field: option) } catch let e as VaultError {
        // VaultCore's message already names the option ("--default must be an ISO 8601 duration…").
        if case .invalidArgument(let message) = e { throw ValidationError(message) }
        if case .refused(let message) = e { throw ValidationError(message) }
        throw ValidationError("\(option): \(e)")
    }
}

/// Ids that go into a URL path: letters, digits, `-` and `_` only, so nothing can add a
/// path segment or a query.
func checkPathID(_ id: String, what: String) throws {
    let ok = !id.isEmpty && id.utf8.count <= 128 && id.utf8.allSatisfy { b in
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x2D || b == 0x5F
    }
    guard ok else { throw ValidationError("\(what) may hold only letters, digits, '-' and '_'") }
}
