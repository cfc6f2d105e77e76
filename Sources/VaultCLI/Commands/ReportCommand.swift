import ArgumentParser

/// `shredvault report`: the tenant's data map (admin token).
struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Show the tenant's data map: counts, bytes, oldest record, upcoming expiries, retention (admin token).",
        discussion: "Readable output lists only the days on which records expire; --json has all 92 days.")

    @OptionGroup var client: ClientOptions

    func run() throws {
        try withDaemon(client) { daemon in
            try daemon.show(try daemon.call("GET", "/v1/report"), readable: ReportCommand.render)
        }
    }

    static func render(_ v: JSONValue) -> String {
        var lines: [String] = []
        for key in ["tenant", "generated_at", "records", "bytes", "oldest_record", "held_past_expiry"] {
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
