import Dispatch
import Locking

/// The convenient form: one ``HTTPConnection`` guarded by a lock, reconnected on failure, with the
/// vault's default headers and bearer token added to every request.
///
/// Requests through one client run one at a time (they share the connection); `shredvault bench` makes one
/// client (or one ``HTTPConnection``) per concurrent connection. The first request connects; a failed
/// connect is tried again on the next request.
///
/// `@unchecked Sendable`: all mutable state — the connection and the `Authorization` line — lives in
/// `state`, a `Locked`, and is touched only inside `withLock`; the other stored properties are immutable
/// and `Sendable`.
public final class VaultHTTPClient: @unchecked Sendable {
    private struct State {
        var connection: HTTPConnection?
        /// `Authorization: Bearer <token>\r\n`, built once from the token bytes; empty without a token.
        var authorizationLine: [UInt8]
    }

    private let endpoint: ClientEndpoint
    private let timeout: Double
    /// Set when the token has bytes that cannot go in a header; every request then fails without sending.
    private let tokenProblem: String?
    private let state: Locked<State>
    /// Where ``send(_:_:body:headers:)`` blocks: a private serial queue, so the waits happen on a Dispatch
    /// thread (an overcommitting one: a blocked queue gets a new thread) and never on the cooperative pool.
    private let queue: DispatchQueue

    /// Makes the client; nothing is connected until the first request.
    ///
    /// - Parameter token: the bearer credential, sent as `Authorization: Bearer <token>` unless a request
    ///   gives its own `Authorization`. It must be visible ASCII (RFC 6750 `b64token`); the bytes are copied
    ///   into the header line and wiped when the client is released.
    public init(endpoint: ClientEndpoint, token: [UInt8]?, timeout: Double = 30) {
        self.endpoint = endpoint
        self.timeout = timeout
        var line: [UInt8] = []
        var problem: String?
        if let token {
            if token.isEmpty {
                problem = "the bearer token is empty"
            } else if !token.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) {
                problem = "the bearer token contains bytes that cannot appear in an HTTP header"
            } else {
                line.reserveCapacity(token.count + 24)
                line += "Authorization: Bearer ".utf8
                line += token
                line += "\r\n".utf8
            }
        }
        tokenProblem = problem
        state = Locked(State(connection: nil, authorizationLine: line))
        queue = DispatchQueue(label: "shredvault.client")
    }

    deinit {
        state.withLock { state in
            wipe(&state.authorizationLine)
            state.connection = nil
        }
    }

    /// Blocking request. Adds `Host: vault`, `Authorization: Bearer <token>` when a token is set,
    /// `Content-Type: application/json` and `Content-Length` when a body is given.
    ///
    /// A header in `headers` with one of those names replaces the default.
    public func request(_ method: String, _ path: String, body: [UInt8]? = nil,
                        headers: [(String, String)] = []) throws(ClientError) -> HTTPResponse {
        if let tokenProblem {
            throw ClientError(code: .protocolError, message: "invalid request to \(endpoint.displayName): \(tokenProblem)")
        }
        func given(_ name: String) -> Bool {
            headers.contains { asciiCaseInsensitiveEquals($0.0, name) }
        }
        var all: [(String, String)] = []
        all.reserveCapacity(headers.count + 2)
        if !given("host") { all.append(("Host", "vault")) }
        if body != nil, !given("content-type") { all.append(("Content-Type", "application/json")) }
        all += headers
        let addAuthorization = !given("authorization")
        let endpoint = self.endpoint
        let timeout = self.timeout
        return try state.withLock { (state) throws(ClientError) -> HTTPResponse in
            let connection: HTTPConnection
            if let existing = state.connection {
                connection = existing
            } else {
                connection = try HTTPConnection(endpoint: endpoint, timeout: timeout)
                state.connection = connection
            }
            return try connection.perform(
                method: method, path: path, headers: all,
                rawHeaderLines: addAuthorization ? state.authorizationLine : [], body: body)
        }
    }

    /// Opens a streaming `GET` (``HTTPLineStream``) on a connection of its own, with this client's
    /// token; the response head must arrive within the client's timeout, the body has none.
    public func openStream(_ path: String, headers: [(String, String)] = []) throws(ClientError) -> HTTPLineStream {
        if let tokenProblem {
            throw ClientError(code: .protocolError, message: "invalid request to \(endpoint.displayName): \(tokenProblem)")
        }
        // Shares the client's buffer (wiped when the client goes); the encoded head is wiped after use.
        let line = state.withLock { $0.authorizationLine }
        return try HTTPLineStream(endpoint: endpoint, path: path, headers: headers, rawHeaderLines: line, timeout: timeout)
    }

    /// Async form: runs the blocking call on a Dispatch queue (never blocks the Swift cooperative pool, which the
    /// server under test may need on a 2-core machine).
    ///
    /// Throws ``ClientError``, or `CancellationError` if the task was cancelled before the request started;
    /// a request that has started runs to completion or to its timeout.
    public func send(_ method: String, _ path: String, body: [UInt8]? = nil,
                     headers: [(String, String)] = []) async throws -> HTTPResponse {
        try Task.checkCancellation()
        return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<HTTPResponse, any Error>) in
            queue.async {
                do {
                    continuation.resume(returning: try self.request(method, path, body: body, headers: headers))
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        }
    }
}
