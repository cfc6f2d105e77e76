/// Where the ShredVault daemon listens.
public enum ClientEndpoint: Sendable, Equatable {
    /// A Unix domain socket (the daemon's normal transport, like Docker's API).
    ///
    /// `sun_path` is 108 bytes including the terminating NUL, so the path may be at most 107 bytes of
    /// UTF-8; a longer one is refused by ``HTTPConnection/init(endpoint:timeout:)`` with a
    /// ``ClientError/Code/connect`` error that says so. A relative path is resolved against the current
    /// directory by `connect(2)`, which is one way around the limit.
    case unixSocket(path: String)
    /// TCP to an IPv4 literal (`"127.0.0.1"`) or `"localhost"` (which means 127.0.0.1): for loopback tools
    /// only, there is no name resolution and no TLS.
    case tcp(host: String, port: Int)

    /// The endpoint as messages name it: `unix socket /run/shredvault.sock`, `tcp 127.0.0.1:8080`.
    var displayName: String {
        switch self {
        case .unixSocket(let path): "unix socket \(path)"
        case .tcp(let host, let port): "tcp \(host):\(port)"
        }
    }

    /// The `Host` header value used when the caller sets none: HTTP/1.1 requires one.
    var defaultHostHeader: String {
        switch self {
        case .unixSocket: "vault"
        case .tcp(let host, let port): "\(host):\(port)"
        }
    }
}
