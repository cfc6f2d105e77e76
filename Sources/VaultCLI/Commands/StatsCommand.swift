import ArgumentParser

/// `shredvault stats` (operator token).
struct StatsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats",
        abstract: "Show the vault's figures: tenants, records, audit entries, key generation, sizes, batching (operator token).")

    @OptionGroup var client: ClientOptions

    func run() throws {
        try withDaemon(client) { daemon in
            try daemon.show(try daemon.call("GET", "/v1/admin/stats"))
        }
    }
}
