import ArgumentParser

/// `shredvault rotate` (operator token).
struct RotateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rotate",
        abstract: "Rotate keys: re-key dirty buckets, renew tenant root keys, write a new master key generation, compact the keystore (operator token).",
        discussion: "After an erasure or expiry, one rotation makes the destroyed key material unrecoverable even from old copies of the data directory. scripts/rotate-keys runs it daily, followed by compact.")

    @OptionGroup var client: ClientOptions

    func run() throws {
        try runOperatorAction(client, path: "/v1/admin/rotate", doing: "rotating keys", done: "rotation done")
    }
}
