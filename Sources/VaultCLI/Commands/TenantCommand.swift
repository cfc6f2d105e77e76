import ArgumentParser
import VaultCore

/// `shredvault tenant create|list|offboard` (operator token).
struct TenantCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tenant",
        abstract: "Manage tenants, the client companies that own their data (operator token).",
        subcommands: [Create.self, List.self, Offboard.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a tenant.")

        @Argument(help: ArgumentHelp("The tenant's slug: a-z, 0-9 and '-', at most 63 characters.", valueName: "id"))
        var id: String

        @OptionGroup var client: ClientOptions

        func validate() throws {
            do { _ = try TenantID(id) } catch let e as VaultError { throw ValidationError("\(e)") }
        }

        func run() throws {
            try withDaemon(client) { daemon in
                let response = try daemon.call("POST", "/v1/admin/tenants") { w in
                    w.beginObject()
                    w.field("id", id)
                    w.endObject()
                }
                try daemon.show(response) { t in "created tenant \(t["id"]?.plainText ?? id)" }
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List tenants.")

        @OptionGroup var client: ClientOptions

        func run() throws {
            try withDaemon(client) { daemon in
                try daemon.show(try daemon.call("GET", "/v1/admin/tenants")) { v in
                    let rows = (v["tenants"]?.array ?? []).map { t in
                        ["id", "status", "created_at"].map { t[$0]?.plainText ?? "-" }
                    }
                    return rows.isEmpty ? "no tenants" : Readable.table(["ID", "STATUS", "CREATED"], rows)
                }
            }
        }
    }

    struct Offboard: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Offboard a tenant: destroy its root key, so all its data is gone at once.",
            discussion: "This cannot be undone. Asks for the tenant id again on a terminal; pass --yes in scripts.")

        @Argument(help: ArgumentHelp("The tenant to offboard.", valueName: "id"))
        var id: String

        @Flag(help: "Do not ask for confirmation.")
        var yes = false

        @OptionGroup var client: ClientOptions

        func validate() throws {
            do { _ = try TenantID(id) } catch let e as VaultError { throw ValidationError("\(e)") }
        }

        func run() throws {
            try withDaemon(client) { daemon in
                if !yes {
                    guard Terminal.stdinIsTerminal else {
                        throw CLIError("offboarding destroys all of \(id)'s data; pass --yes to confirm")
                    }
                    Terminal.write(2, "Offboarding destroys all of \(id)'s data for good. Type the tenant id to confirm: ")
                    guard readLine(strippingNewline: true) == id else { throw CLIError("not confirmed; nothing was done") }
                }
                try daemon.call("DELETE", "/v1/admin/tenants/\(id)")
                daemon.confirm("offboarded tenant \(id): its root key is destroyed and its data unreadable")
            }
        }
    }
}
