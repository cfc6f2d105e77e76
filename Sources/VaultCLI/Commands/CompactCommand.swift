import ArgumentParser

/// `shredvault compact` (operator token).
struct CompactCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compact",
        abstract: "Compact the keystore so freed pages holding destroyed keys are dropped (operator token).",
        discussion: "Copies the keystore with MDB_CP_COMPACT and swaps it in: LMDB does not wipe freed pages, a compacted copy leaves them behind.")

    @OptionGroup var client: ClientOptions

    func run() throws {
        try runOperatorAction(client, path: "/v1/admin/compact", doing: "compacting the keystore", done: "compaction done")
    }
}
