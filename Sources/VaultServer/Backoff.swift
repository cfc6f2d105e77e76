import Hummingbird
import Logging
import Synchronization
import Locking

/// The back-off's knobs (`ServerConfiguration.authBackoff`; nil turns it off).
public struct AuthBackoffPolicy: Sendable {
    /// Failures within `window` answered at once.
    public var freeFailures = 5
    /// A peer without a failure for this long is forgiven.
    public var window: Duration = .seconds(60)
    /// The spacing of the first delayed answer, doubling up to `maxDelay`.
    public var baseDelay: Duration = .milliseconds(100)
    public var maxDelay: Duration = .seconds(5)
    /// Past this much queued delay, a peer's requests with a token get 429 unchecked.
    public var maxQueue: Duration = .seconds(30)
    /// Peers remembered at most (the oldest half is dropped past it).
    public var maxPeers = 10_000

    public init() {}
}

/// Slows down a peer that keeps presenting bad tokens (per-peer back-off).
///
/// Tokens are 256-bit random values, so guessing is hopeless; the back-off is there so a
/// client that hammers the daemon with bad credentials (a stolen-token probe, a script with a
/// revoked token) costs itself time, not the vault, and leaves a bounded trail in the log.
///
/// The first `freeFailures` failures within `window` are answered at once. After that the
/// peer is *backed off*: each further 401 waits for a turn, turns spaced `delay(n)` apart
/// (doubling from `baseDelay` up to `maxDelay`), so its failures come back one per delay
/// however many connections it opens. When more than `maxQueue` of turns are queued, the
/// peer's requests that carry a token are answered 429 at once, before the token is looked
/// at: the number of tokens a backed-off peer can have checked is bounded by the turn rate.
/// A valid token is never delayed unless its peer is saturated that way. The peer is
/// forgiven after `window` without a failure; a valid token does not reset the count (an
/// attacker holding one token must not wash away failures with it).
final class AuthBackoff: Sendable {
    typealias Policy = AuthBackoffPolicy

    private struct PeerState {
        var failures = 0
        var lastFailure: ContinuousClock.Instant
        var nextTurn: ContinuousClock.Instant
    }

    private struct State {
        var peers: [Peer: PeerState] = [:]
        var backedOff = 0
    }

    let policy: Policy
    private let state = Locked(State())
    /// Peers past their free failures: while zero, requests skip the peer lookup entirely.
    private let backedOffCount = Atomic<Int>(0)

    init(policy: Policy = Policy()) { self.policy = policy }

    var anyBackedOff: Bool { backedOffCount.load(ordering: .relaxed) > 0 }
    var trackedPeers: Int { state.withLock { $0.peers.count } }

    /// Before a token is checked: nil to go ahead, or the seconds to put in Retry-After when
    /// the peer's queue of delayed failures is full.
    func refusal(for peer: Peer, now: ContinuousClock.Instant = .now) -> Int? {
        state.withLock { s -> Int? in
            guard let p = s.peers[peer], p.failures > policy.freeFailures else { return nil }
            if now - p.lastFailure > policy.window {
                forget(peer, in: &s)
                return nil
            }
            let queued = p.nextTurn - now
            return queued > policy.maxQueue ? Int(queued.components.seconds) + 1 : nil
        }
    }

    /// Records a rejected request: the peer's failure count within the window, and how long
    /// this failure's answer waits.
    func failure(of peer: Peer, now: ContinuousClock.Instant = .now) -> (count: Int, wait: Duration) {
        state.withLock { s -> (count: Int, wait: Duration) in
            var p = s.peers[peer] ?? PeerState(lastFailure: now, nextTurn: now)
            if now - p.lastFailure > policy.window, p.failures > 0 {
                if p.failures > policy.freeFailures { s.backedOff -= 1 }
                p = PeerState(lastFailure: now, nextTurn: now)
            }
            if s.peers[peer] == nil, s.peers.count >= policy.maxPeers { purge(&s, now: now) }
            p.failures += 1
            p.lastFailure = now
            var wait = Duration.zero
            if p.failures > policy.freeFailures {
                if p.failures == policy.freeFailures + 1 { s.backedOff += 1 }
                let turn = max(now, p.nextTurn)
                wait = turn - now
                p.nextTurn = turn + delay(afterFailures: p.failures)
            }
            s.peers[peer] = p
            backedOffCount.store(s.backedOff, ordering: .relaxed)
            return (p.failures, wait)
        }
    }

    func delay(afterFailures n: Int) -> Duration {
        let doublings = min(max(0, n - policy.freeFailures - 1), 16)
        return min(policy.baseDelay * (1 << doublings), policy.maxDelay)
    }

    private func forget(_ peer: Peer, in s: inout State) {
        if let p = s.peers.removeValue(forKey: peer), p.failures > policy.freeFailures { s.backedOff -= 1 }
        backedOffCount.store(s.backedOff, ordering: .relaxed)
    }

    /// Drops forgiven peers; if every tracked peer is recent, the oldest half goes (bounded
    /// memory beats remembering every address an attacker can use).
    private func purge(_ s: inout State, now: ContinuousClock.Instant) {
        for (peer, p) in s.peers where now - p.lastFailure > policy.window { forget(peer, in: &s) }
        guard s.peers.count >= policy.maxPeers else { return }
        let oldest = s.peers.sorted { $0.value.lastFailure < $1.value.lastFailure }.prefix(s.peers.count / 2)
        for (peer, _) in oldest { forget(peer, in: &s) }
    }
}

/// Applies `AuthBackoff` around every route: refuses a saturated peer before its token is
/// checked, delays and counts each 401 for a token that was presented, and logs it (peer,
/// method, route; never the token). A request without any token costs nothing to answer
/// and guesses nothing: its 401 is neither counted nor delayed.
struct AuthBackoffMiddleware: RouterMiddleware {
    typealias Context = VaultRequestContext
    let backoff: AuthBackoff
    let logger: Logger

    func handle(_ request: Request, context: Context,
                next: (Request, Context) async throws -> Response) async throws -> Response {
        let hasToken = request.headers[.authorization] != nil
        if hasToken, backoff.anyBackedOff, let seconds = backoff.refusal(for: await context.peer().peer) {
            var p = Problem(.tooManyRequests, "too many failed authentications from this client; retry later")
            p.extraHeaders[.retryAfter] = "\(seconds)"
            throw p
        }
        do {
            return try await next(request, context)
        } catch let p as Problem where p.status == .unauthorized && hasToken {
            let (peer, process) = await context.peer()
            let (failures, wait) = backoff.failure(of: peer)
            // Powers of two: the log shows a flood without being flooded.
            if failures & (failures - 1) == 0 {
                logger.warning("rejected a request with an invalid token", metadata: [
                    "peer": "\(process)", "method": "\(request.method)", "route": "\(context.endpointPath ?? "-")",
                    "failures": "\(failures)",
                    "backoff": failures > backoff.policy.freeFailures ? "\(backoff.delay(afterFailures: failures))" : "none",
                ])
            }
            if wait > .zero { try await Task.sleep(for: wait) }
            throw p
        }
    }
}
