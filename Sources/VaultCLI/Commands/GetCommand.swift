import ArgumentParser

/// `shredvault get ID`: read one record (agent or admin token).
struct GetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "get",
        abstract: "Read a record by its id (agent or admin token).",
        discussion: "Unknown, erased, expired and other tenants' records all answer 404 alike.")

    @Argument(help: ArgumentHelp("The record id (26 characters, Crockford base32).", valueName: "id"))
    var id: String

    @OptionGroup var client: ClientOptions

    func validate() throws { try checkPathID(id, what: "a record id") }

    func run() throws {
        try withDaemon(client) { daemon in
            try daemon.show(try daemon.call("GET", "/v1/records/\(id)"))
        }
    }
}
