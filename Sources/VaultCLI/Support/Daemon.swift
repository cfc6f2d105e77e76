import VaultAPI
import VaultClient

/// One client command's connection to the daemon: the socket, the bearer token (read once,
/// kept only inside the HTTP client's header line), and the output mode.
final class Daemon {
    let options: ClientOptions
    private let client: VaultHTTPClient

    /// Reads the token and prepares the client; nothing is connected until the first call.
    init(_ options: ClientOptions, defaultTimeout: Double = 30) throws {
        self.options = options
        var token = try Daemon.loadToken(file: options.tokenFile)
        defer { wipe(&token) }
        client = VaultHTTPClient(endpoint: .unixSocket(path: options.socketPath), token: token,
                                 timeout: options.timeout ?? defaultTimeout)
    }

    /// The token from `--token-file`, else `$SHREDVAULT_TOKEN`; trailing newline trimmed.
    static func loadToken(file: String?) throws -> [UInt8] {
        var token: [UInt8]
        let source: String
        if let file {
            if let mode = Files.mode(file), mode & 0o077 != 0 {
                Terminal.error("shredvault: warning: token file \(file) is readable by group or others; run chmod 600 \(file)")
            }
            token = try Files.read(file, what: "token file")
            source = "token file \(file)"
        } else if let bytes = environmentBytes("SHREDVAULT_TOKEN") {
            token = bytes
            source = "SHREDVAULT_TOKEN"
        } else {
            throw CLIError("no token: set SHREDVAULT_TOKEN or pass --token-file FILE")
        }
        Files.trimTrailingWhitespace(&token)
        guard !token.isEmpty else { throw CLIError("\(source) is empty") }
        return token
    }

    /// Sends a request and returns the answer whatever its status; `accept` is the media type
    /// asked for (`report --html` asks for the page).
    func send(_ method: String, _ path: String, body: [UInt8]? = nil, accept: String = "application/json") throws -> HTTPResponse {
        try client.request(method, path, body: body, headers: [("Accept", accept)])
    }

    /// Opens a streaming `GET` on a connection of its own (`audit follow`).
    func openStream(_ path: String) throws -> HTTPLineStream {
        try client.openStream(path, headers: [("Accept", "application/x-ndjson")])
    }

    /// Sends a request; a non-2xx answer becomes a ``DaemonProblem``.
    @discardableResult
    func call(_ method: String, _ path: String, body: [UInt8]? = nil, accept: String = "application/json") throws -> HTTPResponse {
        let response = try send(method, path, body: body, accept: accept)
        try Daemon.check(response)
        return response
    }

    /// Sends a request with a body built by `build`, and wipes that body afterwards
    /// (it may carry a subject or record data).
    @discardableResult
    func call(_ method: String, _ path: String, building build: (inout JSONWriter) throws -> Void) throws -> HTTPResponse {
        var w = JSONWriter(capacity: 256)
        defer { w.wipe() }
        try build(&w)
        var body = w.bytes
        defer { wipe(&body) }
        return try call(method, path, body: body)
    }

    static func check(_ response: HTTPResponse) throws {
        guard !(200..<300).contains(response.status) else { return }
        throw problem(response)
    }

    /// The problem+json fields of an error answer (or the bare status when the body is not one).
    static func problem(_ response: HTTPResponse) -> DaemonProblem {
        let value = try? JSONValue.parse(response.body)
        return DaemonProblem(status: response.status,
                             title: value?["title"]?.string ?? reasonPhrase(response.status),
                             detail: value?["detail"]?.string ?? "")
    }

    static func reasonPhrase(_ status: Int) -> String {
        switch status {
        case 400: "Bad Request"
        case 401: "Unauthorized"
        case 403: "Forbidden"
        case 404: "Not Found"
        case 409: "Conflict"
        case 413: "Content Too Large"
        case 422: "Unprocessable Content"
        case 500: "Internal Server Error"
        case 503: "Service Unavailable"
        default: "HTTP error"
        }
    }

    /// Prints an answer: the raw body with `--json`, else `readable(parsed)`.
    func show(_ response: HTTPResponse, readable: (JSONValue) -> String = Readable.render) throws {
        if options.json {
            guard !response.body.isEmpty else { return }
            Terminal.outBytes(response.body)
            if response.body.last != 0x0A { Terminal.outBytes([0x0A]) }
            return
        }
        let value: JSONValue
        do { value = try JSONValue.parse(response.body) } catch {
            throw CLIError("the daemon's answer is not JSON (\(error))")
        }
        let text = readable(value)
        if !text.isEmpty { Terminal.out(text) }
    }

    /// Prints a confirmation for answers without a body (204), unless `--json`.
    func confirm(_ message: String) {
        if !options.json { Terminal.out(message) }
    }
}

/// Runs a client command: builds the ``Daemon`` and reports failures in the CLI's format.
func withDaemon(_ options: ClientOptions, defaultTimeout: Double = 30, _ body: (Daemon) throws -> Void) throws {
    try reportingFailures {
        let daemon = try Daemon(options, defaultTimeout: defaultTimeout)
        try body(daemon)
    }
}
