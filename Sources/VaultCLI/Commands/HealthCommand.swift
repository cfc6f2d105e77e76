import ArgumentParser
import VaultClient

/// `shredvault health`: is the daemon up? (no token; for scripts and service checks).
struct HealthCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "health",
        abstract: "Check that the daemon answers on its socket (no token needed); exit 1 if not.")

    @Option(help: ArgumentHelp("The daemon's Unix socket (default: $SHREDVAULT_SOCKET, else ./data/shredvault.sock).",
                               valueName: "path"))
    var socket: String?

    @Option(help: ArgumentHelp("Seconds to wait for the answer.", valueName: "seconds"))
    var timeout: Double = 5

    func validate() throws {
        guard timeout > 0 else { throw ValidationError("--timeout must be a positive number of seconds") }
    }

    func run() throws {
        try reportingFailures {
            let path = socket ?? environmentString("SHREDVAULT_SOCKET") ?? "./data/shredvault.sock"
            let client = VaultHTTPClient(endpoint: .unixSocket(path: path), token: nil, timeout: timeout)
            let response = try client.request("GET", "/healthz")
            try Daemon.check(response)
            Terminal.out("ok: the daemon answers on \(path)")
        }
    }
}
