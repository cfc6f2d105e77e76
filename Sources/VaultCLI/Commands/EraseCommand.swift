import ArgumentParser
import VaultCore

/// `shredvault erase`: a tenant's erasure instruction for one or more subjects (admin token).
struct EraseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "erase",
        abstract: "Erase every record of one or more subjects (admin token).",
        discussion: """
            --subject-file holds one subject per line (empty lines are skipped). Each subject is \
            erased in turn and gets a receipt line: records erased, subject tag, audit sequence \
            number and hash. The erasure is immediate; key material becomes unrecoverable after \
            the next rotation. On the first failure (e.g. 409: a legal hold covers the subject) \
            it stops and says which lines were and were not erased, exit 1. With --json, prints \
            one daemon answer per line.
            """)

    @Option(name: .customLong("subject-file"),
            help: ArgumentHelp("A file with one subject per line.", valueName: "file"))
    var subjectFile: String

    @Option(help: ArgumentHelp("The client's reference for this instruction (ticket, letter), kept in the audit log.",
                               valueName: "reference"))
    var reference: String?

    @OptionGroup var client: ClientOptions

    func validate() throws {
        guard !subjectFile.isEmpty else { throw ValidationError("--subject-file must not be empty") }
        if let reference, reference.isEmpty { throw ValidationError("--reference must not be empty") }
    }

    /// One subject of the file and the line it came from.
    struct Line {
        var number: Int
        var subject: [UInt8]
    }

    func run() throws {
        try withDaemon(client) { daemon in
            var content = try Files.read(subjectFile, what: "subject file")
            defer { wipe(&content) }
            var lines = EraseCommand.subjects(in: content)
            defer { for i in lines.indices { wipe(&lines[i].subject) } }
            guard !lines.isEmpty else { throw CLIError("\(subjectFile) holds no subject") }

            let many = lines.count > 1
            let progress = Progress(many ? "erasing 0/\(lines.count)" : "erasing")
            defer { progress.finish() }
            var subjectsDone = 0
            var recordsErased: Int64 = 0
            for (index, line) in lines.enumerated() {
                let prefix = many ? "line \(line.number): " : ""
                do {
                    guard line.subject.count <= Subject.maxBytes else {
                        throw CLIError("the subject is longer than \(Subject.maxBytes) bytes")
                    }
                    let response = try daemon.call("POST", "/v1/subjects/erase") { w in
                        w.beginObject()
                        w.key("subject")
                        line.subject.withUnsafeBytes { w.string(bytes: $0) }
                        if let reference { w.field("reference", reference) }
                        w.endObject()
                    }
                    let value = try JSONValue.parse(response.body)
                    let erased = value["erased"]?.int ?? 0
                    recordsErased += erased
                    subjectsDone += 1
                    if daemon.options.json {
                        progress.emit(String(decoding: response.body, as: UTF8.self))
                    } else {
                        let receipt = value["receipt"]
                        progress.emit(prefix + "erased \(erased) record(s), subject tag \(receipt?["subject_tag"]?.plainText ?? "-"), "
                            + "audit seq \(receipt?["audit_seq"]?.plainText ?? "-"), hash \(receipt?["audit_hash"]?.plainText ?? "-")")
                    }
                    progress.update("erasing \(index + 1)/\(lines.count)")
                } catch {
                    progress.finish()
                    guard many else { throw error }
                    let reason = userDescription(error)
                    let remaining = lines.count - index
                    throw CLIError("line \(line.number): \(reason). Erased before it: \(subjectsDone) subject(s), "
                        + "\(recordsErased) record(s). Not erased: line \(line.number) and the \(remaining - 1) subject(s) after it "
                        + "(\(remaining) in all)")
                }
            }
            progress.finish()
            if many && !daemon.options.json {
                Terminal.out("done: \(subjectsDone) subject(s), \(recordsErased) record(s) erased")
            }
        }
    }

    /// Non-empty lines (a trailing CR is dropped), numbered as in the file.
    static func subjects(in content: [UInt8]) -> [Line] {
        var out: [Line] = []
        var number = 0
        for var slice in content.split(separator: 0x0A, omittingEmptySubsequences: false) {
            number += 1
            if slice.last == 0x0D { slice = slice.dropLast() }
            if !slice.isEmpty { out.append(Line(number: number, subject: Array(slice))) }
        }
        return out
    }
}
