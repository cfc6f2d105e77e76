import ArgumentParser
import VaultAPI
import VaultCore

/// `shredvault put`: write one record (agent or admin token).
struct PutCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "put",
        abstract: "Write a record (agent or admin token).",
        discussion: """
            The record's data is a JSON value read from --data-file, or from standard input. \
            The subject comes from a file or standard input, never from the command line: \
            it is personal data, and command lines are visible to every user of the machine.
            """)

    @Option(help: ArgumentHelp("personal, non_personal or privacy_related.", valueName: "category"))
    var category: String

    @Option(help: ArgumentHelp("phone, email, chat, sms, web or other.", valueName: "channel"))
    var channel: String

    @OptionGroup var subject: SubjectInput

    @Option(name: .customLong("data-file"),
            help: ArgumentHelp("A file holding the record's data as JSON (default: standard input).", valueName: "file"))
    var dataFile: String?

    @Option(help: ArgumentHelp("Keep this record for less than the policy says, e.g. P30D.", valueName: "duration"))
    var retention: String?

    @OptionGroup var client: ClientOptions

    func validate() throws {
        do {
            _ = try DataCategory(parsing: category)
            _ = try Channel(parsing: channel)
        } catch let e as VaultError { throw ValidationError("\(e)") }
        if let retention { try checkDuration(retention, option: "--retention") }
        if subject.subjectStdin && dataFile == nil {
            throw ValidationError("--subject-stdin takes standard input: give the data with --data-file")
        }
    }

    func run() throws {
        try withDaemon(client) { daemon in
            var subjectBytes = try subject.read()
            defer { wipe(&subjectBytes) }
            if dataFile == nil && Terminal.stdinIsTerminal {
                Terminal.error("reading the record data (JSON) from standard input; end it with Ctrl-D")
            }
            var data = try dataFile.map { try Files.read($0, what: "data file") }
                ?? Files.readStandardInput(what: "the record data on standard input")
            defer { wipe(&data) }
            do {
                _ = try data.withUnsafeBytes { (raw) throws(JSONError) in try JSONScanner.validate(raw) }
            } catch {
                throw CLIError("the record data (\(dataFile ?? "standard input")) is not valid JSON: \(error)")
            }
            let response = try daemon.call("POST", "/v1/records") { w in
                w.beginObject()
                w.key("subject")
                subjectBytes.withUnsafeBytes { w.string(bytes: $0) }
                w.field("category", category)
                w.field("channel", channel)
                if let retention { w.field("retention", retention) }
                w.key("data")
                data.withUnsafeBytes { w.raw($0) }
                w.endObject()
            }
            try daemon.show(response)
        }
    }
}
