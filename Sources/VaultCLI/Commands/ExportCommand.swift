import ArgumentParser

/// `shredvault export`: the disclosure export of one subject's records (admin token).
struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Export every record of a subject: the disclosure a person may ask for (admin token).",
        discussion: "Audited as a disclosure. Use --json for a machine-readable export.")

    @OptionGroup var subject: SubjectInput

    @OptionGroup var client: ClientOptions

    func run() throws {
        try withDaemon(client) { daemon in
            var subjectBytes = try subject.read()
            defer { wipe(&subjectBytes) }
            let response = try daemon.call("POST", "/v1/subjects/records") { w in
                w.beginObject()
                w.key("subject")
                subjectBytes.withUnsafeBytes { w.string(bytes: $0) }
                w.field("export", true)
                w.endObject()
            }
            try daemon.show(response) { v in
                let records = v["records"]?.array ?? []
                guard !records.isEmpty else { return "no records for this subject" }
                var lines: [String] = []
                Readable.render(.array(records), indent: "", into: &lines)
                return "\(records.count) record(s)\n" + lines.joined(separator: "\n")
            }
        }
    }
}
