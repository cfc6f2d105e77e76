import ArgumentParser

/// `shredvault sweep` (operator token).
struct SweepCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sweep",
        abstract: "Destroy the keys of expired buckets and remove dead entries (operator token).",
        discussion: "Expired records are already unreadable; the sweep destroys their bucket keys and reclaims space. scripts/sweep runs it hourly.")

    @OptionGroup var client: ClientOptions

    func run() throws {
        try runOperatorAction(client, path: "/v1/admin/sweep", doing: "sweeping expired records", done: "sweep done")
    }
}
