import ArgumentParser

/// `shredvault promote` (operator token): a standby becomes the journal's writer.
struct PromoteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "promote",
        abstract: "Make a standby (serve --standby) the journal's writer (operator token).",
        discussion: """
            Takes the PostgreSQL journal's lease under the next term (the old writer's appends fail from then on), \
            applies the change sets up to the head, and the daemon then serves as the writer on the same socket. \
            Refused while the old writer's lease still runs (it may be alive): try again after the time it names.
            """)

    @OptionGroup var client: ClientOptions

    func run() throws {
        try runOperatorAction(client, path: "/v1/admin/promote", doing: "promoting the standby", done: "promoted")
    }
}
