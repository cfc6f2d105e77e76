#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A response read as it arrives, one line at a time: an NDJSON stream such as
/// `GET /v1/audit/stream`, which stays open while the daemon runs.
///
/// It owns its connection (never shared with other requests) and is not thread-safe. The head
/// must arrive within the timeout it was opened with; the body has no deadline, since a quiet
/// stream sends nothing: the daemon going away closes the socket, which ends ``nextLine()``
/// with a ``ClientError/Code/closed`` error.
public final class HTTPLineStream {
    /// The longest line accepted (an entry is far smaller): the client never buffers without bound.
    public static let lineLimit = 1 << 20

    public let status: Int
    public let headers: [(name: String, value: String)]

    private let wire: Wire
    private let context: String
    private let framing: Framing
    /// Bytes of the body received and not yet returned as a line.
    private var pending: [UInt8] = []
    /// Bytes left of a `Content-Length` body.
    private var lengthLeft: Int?
    private var ended = false

    /// Sends `GET path` on a new connection to `endpoint` and reads the response head.
    /// `rawHeaderLines` are complete header lines (the `Authorization` line, kept as bytes).
    init(endpoint: ClientEndpoint, path: String, headers: [(String, String)], rawHeaderLines: [UInt8],
         timeout: Double) throws(ClientError) {
        context = "GET to \(endpoint.displayName)"
        let deadline = Deadline(secondsFromNow: timeout)
        var encoded = try RequestEncoder.encode(method: "GET", path: path, headers: headers, rawHeaderLines: rawHeaderLines,
                                                bodyCount: nil, defaultHost: endpoint.defaultHostHeader)
        defer { wipe(&encoded.head) }
        wire = Wire(socket: try Socket.connect(to: endpoint, deadline: deadline))
        do throws(SocketFailure) {
            try wire.socket.writeAll(encoded.head, [], deadline: deadline)
        } catch {
            throw Self.failure(.socket(error), context: context, during: "while sending the request")
        }
        let parser = ResponseParser(wire: wire, deadline: deadline)
        let head: ResponseParser.Head
        do throws(ReceiveFailure) {
            head = try parser.readHead()
            framing = try Framing(head.headers)
        } catch {
            throw Self.failure(error, context: context, during: "before the response header was complete")
        }
        status = head.status
        self.headers = head.headers
        if !framing.chunked {
            // An error answer has a length; a body without either runs to the end of the connection.
            lengthLeft = framing.contentLength
        }
    }

    /// Shuts the connection down: a ``nextLine()`` blocked on another thread returns (with a
    /// ``ClientError/Code/closed`` error or nil) and the daemon sees the stream closed.
    public func close() {
        _ = shutdown(wire.socket.fd, Int32(SHUT_RDWR))
    }

    /// The value of the first header field called `name` (ASCII case-insensitive).
    public func header(_ name: String) -> String? {
        headers.first { asciiCaseInsensitiveEquals($0.name, name) }?.value
    }

    /// The next line of the body without its LF (a CR before it is dropped too); nil once the
    /// body has ended. Blocks until a whole line has arrived.
    public func nextLine() throws(ClientError) -> [UInt8]? {
        while true {
            if let lf = pending.firstIndex(of: 0x0A) {
                var line = Array(pending[..<lf])
                pending.removeFirst(lf + 1)
                if line.last == 0x0D { line.removeLast() }
                return line
            }
            if ended {
                guard !pending.isEmpty else { return nil }
                defer { pending = [] }
                return pending
            }
            guard pending.count <= Self.lineLimit else {
                throw ClientError(code: .protocolError, message: "\(context): a line of the stream exceeds \(Self.lineLimit) bytes")
            }
            try receive()
        }
    }

    /// The rest of the body (an error answer's problem+json), at most `limit` bytes.
    public func readRest(limit: Int = 1 << 20) throws(ClientError) -> [UInt8] {
        while !ended {
            guard pending.count <= limit else {
                throw ClientError(code: .protocolError, message: "\(context): the answer exceeds \(limit) bytes")
            }
            try receive()
        }
        defer { pending = [] }
        return pending
    }

    /// Appends what arrives next to `pending`, or sets `ended`.
    private func receive() throws(ClientError) {
        let forever = Deadline(secondsFromNow: 0)
        do throws(ReceiveFailure) {
            if framing.chunked {
                var budget = ResponseParser.chunkLineLimit
                let line = try wire.readLine(budget: &budget, limitDescription: "a chunk-size line is too long", deadline: forever)
                let size = try ResponseParser.parseChunkSize(line)
                if size == 0 {
                    // The trailer section, then the end.
                    var trailer = ResponseParser.headerBlockLimit
                    while try !wire.readLine(budget: &trailer, limitDescription: "the trailer is too long", deadline: forever).isEmpty {}
                    ended = true
                    return
                }
                guard size <= Self.lineLimit else { throw .malformed("a chunk of \(size) bytes is larger than a line may be") }
                do throws(SocketFailure) { try wire.readExactly(size, into: &pending, deadline: forever) } catch { throw .socket(error) }
                var two = 2
                guard try wire.readLine(budget: &two, limitDescription: "chunk data is not followed by CRLF", deadline: forever).isEmpty else {
                    throw .malformed("chunk data is not followed by CRLF")
                }
            } else if let left = lengthLeft {
                guard left > 0 else { ended = true; return }
                let n = min(left, 64 * 1024)
                do throws(SocketFailure) { try wire.readExactly(n, into: &pending, deadline: forever) } catch { throw .socket(error) }
                lengthLeft = left - n
            } else {
                do throws(SocketFailure) {
                    try wire.readSome(into: &pending, deadline: forever)
                } catch .endOfFile {
                    ended = true
                } catch {
                    throw .socket(error)
                }
            }
        } catch {
            throw Self.failure(error, context: context, during: "in the middle of the stream")
        }
    }

    private static func failure(_ error: ReceiveFailure, context: String, during: String) -> ClientError {
        switch error {
        case .malformed(let what):
            ClientError(code: .protocolError, message: "\(context): malformed response: \(what)")
        case .socket(.timedOut):
            ClientError(code: .timeout, message: "\(context): no response header in time")
        case .socket(.endOfFile):
            ClientError(code: .closed, message: "\(context): the server closed the connection \(during)")
        case .socket(.system(let failure)) where failure.isPeerGone:
            ClientError(code: .closed, message: "\(context): the connection was reset \(during): \(failure.description)")
        case .socket(.system(let failure)):
            ClientError(code: .receive, message: "\(context): reading failed \(during): \(failure.description)")
        }
    }
}

extension Wire {
    /// Appends whatever the socket has (at least one byte) to `body`, after the bytes buffered.
    func readSome(into body: inout [UInt8], deadline: Deadline) throws(SocketFailure) {
        if unconsumedCount > 0 {
            try readExactly(unconsumedCount, into: &body, deadline: deadline)
            return
        }
        var one: [UInt8] = []
        try readExactly(1, into: &one, deadline: deadline)
        body += one
        if unconsumedCount > 0 { try readExactly(unconsumedCount, into: &body, deadline: deadline) }
    }
}
