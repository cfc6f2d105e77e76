import ArgumentParser
import VaultClient

/// `shredvault audit tail|follow|verify|rotate-key`.
struct AuditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Read and verify the tamper-evident audit log.",
        subcommands: [Tail.self, Follow.self, Verify.self, RotateKey.self])

    struct RotateKey: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rotate-key",
            abstract: "Sign the audit's tree heads with a new key from now on (operator token).",
            discussion: """
                The daemon makes a new Ed25519 key in its audit key file (the old file is \
                overwritten and removed) and lists its public key after the others, so heads \
                signed before still verify with GET /v1/audit/keys. Prints the new key. Copy the \
                new key file to any standby before it may be promoted.
                """)

        @OptionGroup var client: ClientOptions

        func run() throws {
            try withDaemon(client) { daemon in
                try daemon.show(try daemon.call("POST", "/v1/admin/audit/keys")) { v in
                    "audit heads are signed by key \(v["key_id"]?.plainText ?? "?") from \(v["from"]?.plainText ?? "?") on"
                }
            }
        }
    }

    struct Tail: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show audit entries (admin: the tenant's own; operator: all, without targets).",
            discussion: """
                Without --after, shows the last --limit entries. With --after N, shows the entries \
                after sequence number N, oldest first; the number to continue from is printed on \
                stderr as `next: N`.
                """)

        @Option(help: ArgumentHelp("Show entries after this sequence number.", valueName: "seq"))
        var after: UInt64?

        @Option(help: ArgumentHelp("How many entries to show, 1 to 1000.", valueName: "n"))
        var limit = 20

        @OptionGroup var client: ClientOptions

        func validate() throws {
            guard (1...1000).contains(limit) else { throw ValidationError("--limit must be 1 to 1000") }
        }

        func run() throws {
            try withDaemon(client) { daemon in
                // Tenant admins read /v1/audit; the operator's view is /v1/admin/audit.
                var route = "/v1/audit"
                var response = try daemon.send("GET", "\(route)?after=\(after ?? 0)&limit=\(limit)")
                if response.status == 403 {
                    route = "/v1/admin/audit"
                    response = try daemon.send("GET", "\(route)?after=\(after ?? 0)&limit=\(limit)")
                }
                try Daemon.check(response)
                if after == nil {
                    let start = try lastPageStart(daemon, route: route, firstPage: response)
                    if start != 0 { response = try daemon.call("GET", "\(route)?after=\(start)&limit=\(limit)") }
                }
                try daemon.show(response) { v in
                    let entries = v["entries"]?.array ?? []
                    if let next = v["next"]?.plainText, after != nil { Terminal.error("next: \(next)") }
                    guard !entries.isEmpty else { return "no audit entries" }
                    let columns = ["seq", "at", "tenant", "actor", "action", "target", "outcome", "count", "reference"]
                    let rows = entries.map { e in columns.map { e[$0]?.plainText ?? "-" } }
                    return Readable.table(columns.map { $0.uppercased() }, rows)
                }
            }
        }

        /// The sequence number after which the last `limit` entries start. The operator's view
        /// is the whole log, numbered from 1 without gaps, so its length says it; a tenant's
        /// view is a subset, paged through to its end.
        func lastPageStart(_ daemon: Daemon, route: String, firstPage: HTTPResponse) throws -> UInt64 {
            if route == "/v1/admin/audit" {
                let stats = try JSONValue.parse(try daemon.call("GET", "/v1/admin/stats").body)
                let total = UInt64(stats["audit_entries"]?.plainText ?? "") ?? 0
                return total > UInt64(limit) ? total - UInt64(limit) : 0
            }
            var seqs: [UInt64] = []
            var page = try JSONValue.parse(firstPage.body)
            var pageSize = limit
            while true {
                let entries = page["entries"]?.array ?? []
                seqs += entries.compactMap { UInt64($0["seq"]?.plainText ?? "") }
                if seqs.count > limit + 1 { seqs.removeFirst(seqs.count - limit - 1) }
                guard entries.count == pageSize, let last = seqs.last else { break }
                pageSize = 1000
                page = try JSONValue.parse(try daemon.call("GET", "\(route)?after=\(last)&limit=\(pageSize)").body)
            }
            return seqs.count > limit ? seqs[seqs.count - limit - 1] : 0
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Recompute the audit hash chain (operator token); exit 1 naming the first broken entry.",
            discussion: """
                With --offline DIR: no daemon, socket, token or key file. Checks what a client company \
                saved in DIR (keys.json, heads/, entries/, consistency/, proofs/, pruned.json: docs/api.md, \
                "Checking the audit offline") as scripts/verify-audit does, with its messages: one \
                `BROKEN:` line per problem, then notes and a summary. Exit status: 0 every check \
                passed; 1 a check failed; 2 unreadable input; 3 Ed25519 does not work.
                """)

        @Option(help: ArgumentHelp("Check the saved heads, entries and proofs in this directory, offline.", valueName: "dir"))
        var offline: String?

        @OptionGroup var client: ClientOptions

        func run() throws {
            if let offline {
                throw ExitCode(OfflineAuditCheck.run(offline, json: client.json))
            }
            try withDaemon(client, defaultTimeout: 3600) { daemon in
                let progress = Progress("verifying the audit chain")
                let response: HTTPResponse
                do {
                    defer { progress.finish() }
                    response = try daemon.call("GET", "/v1/admin/audit/verify")
                }
                let v = try JSONValue.parse(response.body)
                let entries = v["entries"]?.plainText ?? "?"
                if v["intact"]?.bool == true {
                    let pruned = v["pruned"]?.plainText ?? "0"
                    try daemon.show(response) { _ in
                        "audit chain intact: \(entries) entries verified" + (pruned == "0" ? "" : " (the first \(pruned) pruned: their links)")
                    }
                    return
                }
                try daemon.show(response) { _ in "" }
                let broken = v["first_broken"]?.plainText ?? "?"
                throw CLIError("the audit chain is broken at entry \(broken) (of \(entries))"
                    + (v["reason"]?.string.map { ": \($0)" } ?? ""))
            }
        }
    }
}
