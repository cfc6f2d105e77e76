/// Why a request failed.
///
/// Modelled on NIOFS's `FileSystemError`: a code to switch on and a message safe to log. The message names
/// the endpoint, the method and what failed; it never contains the request body, the path (which may carry a
/// subject), header values or the bearer token.
public struct ClientError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// The connection could not be made: bad endpoint (e.g. a socket path over 107 bytes), missing
        /// socket, refused, or no connection within the timeout.
        case connect
        /// Writing the request failed with a system error other than the peer closing.
        case send
        /// Reading the response failed with a system error other than the peer closing.
        case receive
        /// The request did not complete within the timeout. The connection is dropped; whether the server
        /// acted on the request is unknown.
        case timeout
        /// The response broke HTTP/1.1 (malformed status line or header, bad framing, header block over
        /// 64 KiB), or the request given to the client could not be written as valid HTTP/1.1.
        case protocolError
        /// The server closed (or reset) the connection before the response was complete, a non-idempotent
        /// request met a connection the server had closed (the caller decides whether to resend), or the
        /// ``HTTPConnection`` was closed by its owner.
        case closed
    }

    public let code: Code
    public let message: String

    public init(code: Code, message: String) {
        self.code = code
        self.message = message
    }

    /// `"timeout: GET to unix socket /run/v.sock: no response within 0.3 s"`.
    public var description: String {
        "\(code): \(message)"
    }
}
