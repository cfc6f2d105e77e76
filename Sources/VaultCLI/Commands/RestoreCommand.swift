import ArgumentParser
import Sodium
import VaultCore

/// `shredvault restore`: a vault back from its journal, after the loss of its machine.
struct RestoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Restore a vault from its journal into a new data directory.",
        discussion: """
            Writes the journal's latest snapshot and every change set after it, to the head, into a new data \
            directory; then destroys the buckets expired by the clock and rotates the key hierarchy. --key-file \
            holds the master key of the snapshot's generation (the copy kept of the current keys/); on success it \
            holds the restored vault's new generation. When the machine was lost between a rotation and its \
            snapshot, the journal holds the switch to the next generation, whose key travels only sealed to the \
            standbys: give the kept key file of that generation too (--next-key-file). Refuses, writing nothing, when the journal is unreachable, \
            cut below its snapshot or at its end, of another vault, or damaged (the change set is named). \
            Serve the restored vault with the same --journal.
            """)

    @Option(help: ArgumentHelp("The journal to restore from: a directory or a postgres:// URL.", valueName: "dir|url"))
    var journal: String

    @Option(name: .customLong("journal-password-file"),
            help: ArgumentHelp("A file (mode 0600) holding the password of a postgres:// journal's user.", valueName: "file"))
    var journalPasswordFile: String?

    @Option(name: .customLong("next-key-file"),
            help: ArgumentHelp("The kept key file of the generation after the snapshot's, when the journal switched to it "
                               + "after its latest snapshot.", valueName: "file"))
    var nextKeyFile: String?

    @OptionGroup var location: VaultLocation

    func run() async throws {
        Sodium.disableCoreDumps()
        var settings = JournalSettings(location: try JournalLocation.parse(journal))
        settings.progress = { line in Terminal.error("restore: \(line)") }
        settings.passwordFile = journalPasswordFile
        do {
            var configuration = VaultConfiguration()
            configuration.auditKeyFile = location.auditKeyFile
            configuration.progress = { line in Terminal.error("restore: \(line)") }
            let s = try await Restore.run(journal: settings, dataDirectory: location.dataDirectory, keyFile: location.keyFile,
                                          nextKeyFile: nextKeyFile, configuration: configuration)
            print("""
                {"snapshot_epoch": \(s.snapshot.epoch), "snapshot_sequence": \(s.snapshot.sequence), \
                "head": \(s.head), "change_sets_replayed": \(s.changeSetsReplayed), "master_key_generation": \(s.generation)}
                """)
        } catch {
            Terminal.error("shredvault restore: \(error)")
            throw ExitCode.failure
        }
    }
}
