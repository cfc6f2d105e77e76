import ArgumentParser

/// `shredvault hold add|remove|list` (admin token).
struct HoldCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hold",
        abstract: "Legal holds: held records neither expire nor erase (admin token).",
        subcommands: [Add.self, Remove.self, List.self])

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Place a legal hold on a subject (from a file or stdin) or on one record.")

        @Option(name: .customLong("subject-file"),
                help: ArgumentHelp("A file holding the subject to hold.", valueName: "file"))
        var subjectFile: String?

        @Flag(name: .customLong("subject-stdin"), help: "Read the subject to hold from standard input.")
        var subjectStdin = false

        @Option(help: ArgumentHelp("The record id to hold.", valueName: "id"))
        var record: String?

        @Option(help: ArgumentHelp("Why the data must be kept.", valueName: "reason"))
        var reason: String

        @Option(help: ArgumentHelp("The order or case it comes from, e.g. case-2025-17.", valueName: "reference"))
        var reference: String

        @OptionGroup var client: ClientOptions

        func validate() throws {
            let given = [subjectFile != nil, subjectStdin, record != nil].filter { $0 }.count
            guard given == 1 else { throw ValidationError("give exactly one of --subject-file, --subject-stdin and --record") }
            if let record { try checkPathID(record, what: "a record id") }
            guard !reason.isEmpty else { throw ValidationError("--reason must not be empty") }
            guard !reference.isEmpty else { throw ValidationError("--reference must not be empty") }
        }

        func run() throws {
            try withDaemon(client) { daemon in
                var subject: [UInt8] = []
                defer { wipe(&subject) }
                if record == nil {
                    subject = try SubjectInput.read(file: subjectFile)
                }
                let response = try daemon.call("POST", "/v1/holds") { w in
                    w.beginObject()
                    if let record {
                        w.field("record", record)
                    } else {
                        w.key("subject")
                        subject.withUnsafeBytes { w.string(bytes: $0) }
                    }
                    w.field("reason", reason)
                    w.field("reference", reference)
                    w.endObject()
                }
                try daemon.show(response) { "placed legal hold \($0["id"]?.plainText ?? "-")\n" + Readable.render($0) }
            }
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Lift a legal hold (the records then expire and erase as usual).")

        @Argument(help: ArgumentHelp("The hold's id.", valueName: "id"))
        var id: String

        @OptionGroup var client: ClientOptions

        func validate() throws { try checkPathID(id, what: "a hold id") }

        func run() throws {
            try withDaemon(client) { daemon in
                try daemon.call("DELETE", "/v1/holds/\(id)")
                daemon.confirm("lifted legal hold \(id)")
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the tenant's legal holds.")

        @OptionGroup var client: ClientOptions

        func run() throws {
            try withDaemon(client) { daemon in
                try daemon.show(try daemon.call("GET", "/v1/holds")) { v in
                    let rows = (v["holds"]?.array ?? []).map { h in
                        [h["id"]?.plainText ?? "-",
                         h["record"].map { "record \($0.plainText)" } ?? "subject tag \(h["subject_tag"]?.plainText ?? "-")",
                         h["reference"]?.plainText ?? "-", h["reason"]?.plainText ?? "-", h["created_at"]?.plainText ?? "-"]
                    }
                    return rows.isEmpty ? "no legal holds" : Readable.table(["ID", "TARGET", "REFERENCE", "REASON", "CREATED"], rows)
                }
            }
        }
    }
}
