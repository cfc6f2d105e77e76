#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// One keep-alive HTTP/1.1 connection (not thread-safe: one request at a time). Reconnects transparently
/// once if the server closed an idle keep-alive connection before the request was sent (EPIPE/ECONNRESET on
/// write or EOF before any response byte of a request that was fully written → retry once only for idempotent
/// methods GET/PUT/DELETE/HEAD; for POST, throw .closed so the caller decides).
///
/// Before writing on a connection that already existed, the socket is polled without waiting: if the server
/// has already closed it (or sent bytes nobody asked for), a new connection is made first. Nothing has been
/// sent at that point, so this is safe for every method, POST included; the retry rule above covers the
/// remaining race, where the server closes while the request is on its way.
///
/// After any failure the socket is dropped and the next ``send(method:path:headers:body:)`` connects again;
/// after ``close()`` it throws ``ClientError/Code/closed``.
///
/// The `timeout` bounds each call to ``send(method:path:headers:body:)`` as a whole — connecting again if
/// needed, writing the request, reading the complete response — and, in `init`, the connection itself.
/// A non-finite, zero or negative timeout waits without limit.
public final class HTTPConnection {
    private let endpoint: ClientEndpoint
    private let timeout: Double
    private var wire: Wire?
    private var closedByOwner = false

    /// Polls a kept-alive socket before reusing it (see the type's documentation). Tests turn it off to
    /// exercise the write-failure and EOF retry paths deterministically.
    var detectsClosedIdleConnection = true

    /// Connects to `endpoint` now.
    public init(endpoint: ClientEndpoint, timeout: Double = 30) throws(ClientError) {
        self.endpoint = endpoint
        self.timeout = timeout
        wire = Wire(socket: try Socket.connect(to: endpoint, deadline: Deadline(secondsFromNow: timeout)))
    }

    deinit {
        wire = nil  // Socket.deinit closes the descriptor
    }

    /// Closes the connection; later sends throw ``ClientError/Code/closed``.
    public func close() {
        closedByOwner = true
        wire = nil
    }

    /// Sends one request and reads the complete response.
    ///
    /// Adds `Host` (`vault` on a Unix socket, `host:port` over TCP) unless given, and `Content-Length` when
    /// there is a body (or for POST/PUT/PATCH). A `Content-Length` in `headers` must match the body;
    /// `Transfer-Encoding` is refused. `Connection: close` in `headers` drops the connection afterwards.
    public func send(method: String, path: String, headers: [(String, String)] = [],
                     body: [UInt8]? = nil) throws(ClientError) -> HTTPResponse {
        try perform(method: method, path: path, headers: headers, rawHeaderLines: [], body: body)
    }

    /// ``send(method:path:headers:body:)`` with extra header lines given as bytes (the `Authorization`
    /// line of ``VaultHTTPClient``, so the token never becomes a `String`). The encoded head is wiped after use.
    func perform(method: String, path: String, headers: [(String, String)], rawHeaderLines: [UInt8],
                 body: [UInt8]?) throws(ClientError) -> HTTPResponse {
        let context = "\(method.utf8.allSatisfy(isTokenByte) ? method : "request") to \(endpoint.displayName)"
        guard !closedByOwner else {
            throw ClientError(code: .closed, message: "\(context): the connection was closed by its owner")
        }
        var encoded = try RequestEncoder.encode(
            method: method, path: path, headers: headers, rawHeaderLines: rawHeaderLines,
            bodyCount: body?.count, defaultHost: endpoint.defaultHostHeader)
        defer { wipe(&encoded.head) }

        let deadline = Deadline(secondsFromNow: timeout)
        let idempotent = ["GET", "HEAD", "PUT", "DELETE"].contains(method)
        while true {
            // `reused`: the socket predates this call, so the server may have closed it while it sat idle.
            let current: Wire
            let reused: Bool
            if let existing = wire, !detectsClosedIdleConnection || existing.socket.isIdleAndOpen() {
                current = existing
                reused = true
            } else {
                wire = nil
                current = Wire(socket: try Socket.connect(to: endpoint, deadline: deadline))
                wire = current
                reused = false
            }
            do throws(ExchangeFailure) {
                let (response, keepAlive) = try exchange(
                    on: current, head: encoded.head, body: body ?? [], method: method,
                    deadline: deadline, context: context)
                // Bytes beyond the response cannot belong to a request we have not sent: the stream is out
                // of step, so start afresh next time.
                if !keepAlive || encoded.closeAfter || current.unconsumedCount > 0 {
                    wire = nil
                }
                return response
            } catch {
                wire = nil
                guard error.serverClosedBeforeResponding, reused else { throw error.clientError }
                guard idempotent else {
                    throw ClientError(
                        code: .closed,
                        message: "\(context): the server closed the kept-alive connection before responding; "
                            + "\(method) is not idempotent, so it was not sent again (it may or may not have been processed)"
                    )
                }
                // Once only: the next attempt runs on a new connection, where `reused` is false.
                continue
            }
        }
    }

    /// A failed exchange: the error to report, and whether the server closed the connection without sending
    /// one byte of a response (the case a retry on a fresh connection may fix).
    private struct ExchangeFailure: Error {
        var clientError: ClientError
        var serverClosedBeforeResponding = false
    }

    private func exchange(on wire: Wire, head: [UInt8], body: [UInt8], method: String, deadline: Deadline,
                          context: String) throws(ExchangeFailure) -> (HTTPResponse, keepAlive: Bool) {
        wire.startExchange()
        var writeFailure: SystemCallError?
        do throws(SocketFailure) {
            try wire.socket.writeAll(head, body, deadline: deadline)
        } catch {
            switch error {
            case .timedOut:
                throw ExchangeFailure(clientError: ClientError(
                    code: .timeout, message: "\(context): the request could not be sent within \(deadline.timeoutDescription)"))
            case .system(let failure) where failure.isPeerGone:
                // The server closed its end. It may still have answered first (an early error response):
                // read what is there; no byte at all means it closed before responding.
                writeFailure = failure
            case .system(let failure):
                throw ExchangeFailure(clientError: ClientError(
                    code: .send, message: "\(context): sending the request failed: \(failure.description)"))
            case .endOfFile:
                writeFailure = SystemCallError(function: "sendmsg", errno: EPIPE)
            }
        }

        var parser = ResponseParser(wire: wire, deadline: deadline)
        do throws(ReceiveFailure) {
            var (response, keepAlive) = try parser.readResponse(requestMethod: method)
            if writeFailure != nil { keepAlive = false }
            wire.completedExchanges += 1
            return (response, keepAlive)
        } catch {
            let nothingReceived = wire.bytesReceived == 0
            let during: String
            switch parser.stage {
            case .head:
                during = nothingReceived ? "before sending a response" : "in the middle of the response header"
            case .body(let expected?):
                during = "in the middle of the response body (expected \(expected) bytes)"
            case .body(nil):
                during = "in the middle of the response body"
            }
            switch error {
            case .malformed(let what):
                throw ExchangeFailure(clientError: ClientError(code: .protocolError, message: "\(context): malformed response: \(what)"))
            case .socket(.timedOut):
                let message = nothingReceived
                    ? "no response within \(deadline.timeoutDescription)"
                    : "the response was not complete within \(deadline.timeoutDescription)"
                throw ExchangeFailure(clientError: ClientError(code: .timeout, message: "\(context): \(message)"))
            case .socket(.endOfFile):
                let how = writeFailure.map { " (\($0.description) while sending)" } ?? ""
                throw ExchangeFailure(
                    clientError: ClientError(code: .closed, message: "\(context): the server closed the connection \(during)\(how)"),
                    serverClosedBeforeResponding: nothingReceived)
            case .socket(.system(let failure)) where failure.isPeerGone:
                throw ExchangeFailure(
                    clientError: ClientError(code: .closed, message: "\(context): the connection was reset \(during): \(failure.description)"),
                    serverClosedBeforeResponding: nothingReceived)
            case .socket(.system(let failure)):
                throw ExchangeFailure(clientError: ClientError(
                    code: .receive, message: "\(context): reading the response failed: \(failure.description)"))
            }
        }
    }
}
