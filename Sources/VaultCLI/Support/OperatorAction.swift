import VaultClient

/// The operator's maintenance calls (rotate, sweep, compact): a POST that may take minutes,
/// shown with a spinner on a terminal, then the daemon's summary.
func runOperatorAction(_ client: ClientOptions, path: String, doing: String, done: String) throws {
    try withDaemon(client, defaultTimeout: 3600) { daemon in
        let progress = Progress(doing)
        let response: HTTPResponse
        do {
            defer { progress.finish() }
            response = try daemon.call("POST", path)
        }
        try daemon.show(response) { "\(done)\n" + Readable.render($0) }
    }
}
