import ArgumentParser
import VaultAPI
import VaultCore

/// `shredvault token issue|revoke` (operator token).
struct TokenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token",
        abstract: "Issue and revoke bearer tokens (operator token).",
        subcommands: [Issue.self, Revoke.self])

    struct Issue: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Issue a token.",
            discussion: """
                Prints the new token alone on stdout (it is shown once; only its hash is kept), or \
                writes it to --output FILE (created 0600, never overwritten); the token's id, role \
                and tenant go to stderr. With --json, prints the daemon's answer instead.
                """)

        @Option(help: ArgumentHelp("The tenant an agent or admin token belongs to.", valueName: "id"))
        var tenant: String?

        @Option(help: ArgumentHelp("agent, admin or operator.", valueName: "role"))
        var role: String

        @Option(help: ArgumentHelp("Who or what holds the token (shown in listings and audit).", valueName: "name"))
        var name: String

        @Option(help: ArgumentHelp("Write the token to this new file (mode 0600) instead of stdout.", valueName: "file"))
        var output: String?

        @OptionGroup var client: ClientOptions

        func validate() throws {
            if let output {
                guard !output.isEmpty else { throw ValidationError("--output must not be empty") }
                guard !client.json else { throw ValidationError("--output and --json do not go together") }
            }
            guard let role = Role(rawValue: role) else { throw ValidationError("--role must be agent, admin or operator") }
            guard !name.isEmpty else { throw ValidationError("--name must not be empty") }
            switch (role, tenant) {
            case (.operator, .some): throw ValidationError("an operator token belongs to no tenant: drop --tenant")
            case (.agent, nil), (.admin, nil): throw ValidationError("an \(role.rawValue) token needs --tenant")
            case (_, .some(let t)):
                do { _ = try TenantID(t) } catch let e as VaultError { throw ValidationError("\(e)") }
            default: break
            }
        }

        func run() throws {
            try withDaemon(client) { daemon in
                // Fail before the token is issued rather than after, when it could not be stored.
                if let output, Files.exists(output) { throw CLIError("\(output) already exists; refusing to overwrite it") }
                let response = try daemon.call("POST", "/v1/admin/tokens") { w in
                    w.beginObject()
                    if let tenant { w.field("tenant", tenant) }
                    w.field("role", role)
                    w.field("name", name)
                    w.endObject()
                }
                if daemon.options.json {
                    try daemon.show(response)
                    return
                }
                // The token goes from the answer's bytes to stdout without becoming a String; the
                // rest of the answer is read from a copy with the token blanked out.
                var token = try response.body.withUnsafeBytes { raw -> [UInt8] in
                    guard let member = try JSONScanner.objectMembers(raw).first(where: { $0.key == "token" }) else {
                        throw CLIError("the daemon's answer has no token")
                    }
                    let secret = try JSONRead.sensitiveString(UnsafeRawBufferPointer(rebasing: raw[member.range]))
                    var line: [UInt8] = []
                    line.reserveCapacity(secret.count + 1)
                    secret.withUnsafeBytes { line.append(contentsOf: $0) }
                    line.append(0x0A)
                    return line
                }
                defer { wipe(&token) }
                let info = try JSONValue.parse(try response.body.blankingMember("token"))
                let scope = info["tenant"]?.string.map { "for tenant \($0)" } ?? "(no tenant)"
                Terminal.error("issued \(role) token \(info["id"]?.plainText ?? "?") \(scope), name \"\(name)\""
                    + (output.map { "; written to \($0)" } ?? "; the token is shown once"))
                if let output {
                    try Files.create(output, mode: 0o600, contents: token)
                } else {
                    Terminal.outBytes(token)
                }
            }
        }
    }

    struct Revoke: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke a token by its id.")

        @Argument(help: ArgumentHelp("The token's id (not the token).", valueName: "id"))
        var id: String

        @OptionGroup var client: ClientOptions

        func validate() throws { try checkPathID(id, what: "a token id") }

        func run() throws {
            try withDaemon(client) { daemon in
                try daemon.call("DELETE", "/v1/admin/tokens/\(id)")
                daemon.confirm("revoked token \(id)")
            }
        }
    }
}

extension Array where Element == UInt8 {
    /// A copy of a JSON object's bytes with one string member's content overwritten by `*`
    /// (same length, still valid JSON).
    func blankingMember(_ key: String) throws -> [UInt8] {
        var copy = self
        try copy.withUnsafeMutableBytes { raw in
            let members = try JSONScanner.objectMembers(UnsafeRawBufferPointer(raw))
            if let m = members.first(where: { $0.key == key }), m.kind == .string {
                for i in (m.range.lowerBound + 1)..<(m.range.upperBound - 1) { raw[i] = 0x2A }
            }
        }
        return copy
    }
}
