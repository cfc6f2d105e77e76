import ArgumentParser

/// `shredvault snapshot` (operator token).
struct SnapshotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot",
        abstract: "Take a sealed snapshot of the vault into its journal (operator token).",
        discussion: "Writes go on while it is taken; the change sets it covers and older snapshots are then removed.")

    @OptionGroup var client: ClientOptions

    func run() throws {
        try runOperatorAction(client, path: "/v1/admin/snapshot", doing: "taking a snapshot", done: "snapshot taken")
    }
}
