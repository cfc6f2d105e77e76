public import Hummingbird
public import NIOCore
import CVaultSystem
#if canImport(Glibc)
import Glibc
#endif

/// The request context of every route: Hummingbird's core storage plus the connection's
/// channel, from which the caller's identity as a peer (not as a token) is read when needed.
public struct VaultRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }

    /// Who is at the other end of the connection: on the Unix socket the process (uid and
    /// pid from SO_PEERCRED, which the kernel vouches for), over TCP the remote address.
    /// Costs a hop to the channel's event loop, so it is only asked on the failure path and
    /// while some peer is being slowed down.
    func peer() async -> (peer: Peer, process: String) {
        if let address = channel.remoteAddress, let ip = address.ipAddress { return (.remote(ip), ip) }
        guard let provider = channel as? any SocketOptionProvider else { return (.unknown, "unknown") }
        guard shredvault_so_peercred >= 0 else { return (.unknown, "unknown") }
        let credentials: shredvault_ucred? = try? await provider.unsafeGetSocketOption(
            level: NIOBSDSocket.OptionLevel(rawValue: SOL_SOCKET),
            name: NIOBSDSocket.Option(rawValue: shredvault_so_peercred)).get()
        guard let credentials else { return (.unknown, "unknown") }
        return (.local(uid: credentials.uid), "uid \(credentials.uid) pid \(credentials.pid)")
    }
}

/// A client of the daemon as the back-off counts it: on the Unix socket a user (every
/// process of a uid is one security principal: it can read the others' tokens anyway), over
/// TCP an address.
enum Peer: Hashable, Sendable, CustomStringConvertible {
    case local(uid: UInt32)
    case remote(String)
    case unknown

    var description: String {
        switch self {
        case .local(let uid): "uid \(uid)"
        case .remote(let address): address
        case .unknown: "unknown peer"
        }
    }
}

