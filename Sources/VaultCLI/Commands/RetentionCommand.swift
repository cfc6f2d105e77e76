import ArgumentParser
import VaultAPI
import VaultCore

/// `shredvault retention show|set|extend|end` (admin token).
struct RetentionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "retention",
        abstract: "Show and change how long the tenant's records are kept (admin token).",
        subcommands: [Show.self, Set.self, Extend.self, End.self])

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show the retention policy and extension contracts in force.")

        @OptionGroup var client: ClientOptions

        func run() throws {
            try withDaemon(client) { daemon in
                try daemon.show(try daemon.call("GET", "/v1/retention"))
            }
        }
    }

    struct Set: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Set the retention policy.",
            discussion: """
                Durations are ISO 8601 (P30D, PT12H). Anything above P92D is refused (422) unless \
                an active extension contract covers it. Categories not given follow the default.
                """)

        @Option(name: .customLong("default"),
                help: ArgumentHelp("How long records are kept unless their category says otherwise.", valueName: "duration"))
        var defaultRetention: String

        @Option(name: .customLong("category"), parsing: .singleValue,
                help: ArgumentHelp("A category's own retention, e.g. privacy_related=P7D (repeatable).",
                                   valueName: "category=duration"))
        var categories: [String] = []

        @OptionGroup var client: ClientOptions

        func validate() throws {
            try checkDuration(defaultRetention, option: "--default")
            var seen: Swift.Set<String> = []
            for pair in categories {
                let (name, duration) = try keyValue(pair, option: "--category")
                do { _ = try DataCategory(parsing: name) } catch let e as VaultError { throw ValidationError("--category: \(e)") }
                guard seen.insert(name).inserted else { throw ValidationError("--category \(name) is given twice") }
                try checkDuration(duration, option: "--category \(name)")
            }
        }

        func run() throws {
            try withDaemon(client) { daemon in
                let response = try daemon.call("PUT", "/v1/retention") { w in
                    w.beginObject()
                    w.field("default", defaultRetention)
                    w.key("categories")
                    w.beginObject()
                    for pair in categories {
                        let (name, duration) = try keyValue(pair, option: "--category")
                        w.field(name, duration)
                    }
                    w.endObject()
                    w.endObject()
                }
                try daemon.show(response) { "retention policy now in force:\n" + Readable.render($0) }
            }
        }
    }

    struct Extend: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Record an extension contract: keep records longer for a stated purpose.",
            discussion: """
                Applies to records written while the contract is active (until --until, or until \
                `retention end ID`). Without --category it covers every category.
                """)

        @Option(help: ArgumentHelp("quality, legal or other.", valueName: "purpose"))
        var purpose: String

        @Option(help: ArgumentHelp("The contract's reference, e.g. contract-7.", valueName: "reference"))
        var reference: String

        @Option(help: ArgumentHelp("How long covered records are kept, e.g. P365D.", valueName: "duration"))
        var retention: String

        @Option(name: .customLong("category"), parsing: .singleValue,
                help: ArgumentHelp("A category the contract covers (repeatable; default: all).", valueName: "category"))
        var categories: [String] = []

        @Option(help: ArgumentHelp("When the contract ends, RFC 3339 (e.g. 2027-01-01T00:00:00Z).", valueName: "time"))
        var until: String

        @OptionGroup var client: ClientOptions

        func validate() throws {
            guard RetentionExtension.Purpose(rawValue: purpose) != nil else {
                throw ValidationError("--purpose must be quality, legal or other")
            }
            guard !reference.isEmpty else { throw ValidationError("--reference must not be empty") }
            try checkDuration(retention, option: "--retention")
            for c in categories {
                do { _ = try DataCategory(parsing: c) } catch let e as VaultError { throw ValidationError("--category: \(e)") }
            }
            guard RFC3339.parse(until) != nil else {
                throw ValidationError("--until must be an RFC 3339 time, e.g. 2027-01-01T00:00:00Z")
            }
        }

        func run() throws {
            try withDaemon(client) { daemon in
                let response = try daemon.call("POST", "/v1/retention/extensions") { w in
                    w.beginObject()
                    w.field("purpose", purpose)
                    w.field("reference", reference)
                    w.field("retention", retention)
                    if !categories.isEmpty {
                        w.key("categories")
                        w.beginArray()
                        for c in categories { w.string(c) }
                        w.endArray()
                    }
                    w.field("until", until)
                    w.endObject()
                }
                try daemon.show(response) { "extension contract recorded:\n" + Readable.render($0) }
            }
        }
    }

    struct End: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "End an extension contract now (records already written keep their expiry).")

        @Argument(help: ArgumentHelp("The extension's id.", valueName: "id"))
        var id: String

        @OptionGroup var client: ClientOptions

        func validate() throws { try checkPathID(id, what: "an extension id") }

        func run() throws {
            try withDaemon(client) { daemon in
                try daemon.call("DELETE", "/v1/retention/extensions/\(id)")
                daemon.confirm("ended extension contract \(id)")
            }
        }
    }
}
