import ArgumentParser

/// `shredvault report`: the tenant's data map (admin token).
struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Show the tenant's data map: counts, bytes, oldest record, upcoming expiries, retention (admin token).",
        discussion: """
            Readable output lists only the days on which records expire; --json has all 92 days. \
            --html FILE writes the transparency page instead: one self-contained HTML file (data map, \
            retention rules and contracts in force, legal holds, a chart of the next 92 days' expiries), \
            the daemon's own rendering, to open in any browser or hand to the client.
            """)

    @OptionGroup var client: ClientOptions

    @Option(name: .customLong("html"),
            help: ArgumentHelp("Write the transparency page (HTML, mode 0644) to this file.", valueName: "file"))
    var htmlFile: String?

    @Flag(help: "With --html: replace the file if it exists.")
    var force = false

    func validate() throws {
        if let htmlFile, htmlFile.isEmpty { throw ValidationError("--html must not be empty") }
        if force && htmlFile == nil { throw ValidationError("--force applies to --html only") }
        if htmlFile != nil && client.json { throw ValidationError("--json and --html do not go together") }
    }

    func run() throws {
        try withDaemon(client) { daemon in
            guard let htmlFile else {
                try daemon.show(try daemon.call("GET", "/v1/report"), readable: ReportCommand.render)
                return
            }
            // Refused before asking the daemon (which audits every report); create's O_EXCL
            // refuses a file that appears in between.
            if !force && Files.exists(htmlFile) {
                throw CLIError("\(htmlFile) already exists; refusing to overwrite it (--force replaces it)")
            }
            let page = try daemon.call("GET", "/v1/report", accept: "text/html")
            guard page.header("content-type")?.lowercased().hasPrefix("text/html") == true else {
                throw CLIError("the daemon answered \(page.header("content-type") ?? "no content type"), not the HTML page "
                               + "(a daemon older than this shredvault?)")
            }
            if force {
                try Files.replace(htmlFile, mode: 0o644, contents: page.body)
            } else {
                try Files.create(htmlFile, mode: 0o644, contents: page.body)
            }
            daemon.confirm("wrote the transparency page to \(htmlFile) (\(page.body.count) bytes)")
        }
    }

    static func render(_ v: JSONValue) -> String {
        var lines: [String] = []
        for key in ["tenant", "generated_at", "records", "bytes", "oldest_record", "holds", "held_past_expiry"] {
            if let value = v[key] { lines.append("\(key): \(value.plainText)") }
        }
        for key in ["by_category", "by_channel"] {
            if let value = v[key] { Readable.member(key, value, indent: "", into: &lines) }
        }
        let days = (v["expiries_per_day"]?.array ?? []).filter { ($0["records"]?.int ?? 0) > 0 }
        if days.isEmpty {
            lines.append("expiries: none in the next 92 days")
        } else {
            lines.append("expiries:")
            for d in days { lines.append("  \(d["date"]?.plainText ?? "-"): \(d["records"]?.plainText ?? "0")") }
        }
        if let retention = v["retention"] { Readable.member("retention", retention, indent: "", into: &lines) }
        return lines.joined(separator: "\n")
    }
}
