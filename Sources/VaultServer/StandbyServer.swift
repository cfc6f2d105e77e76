public import Hummingbird
import Foundation
public import Logging
import Locking
import ServiceLifecycle
public import UnixSignals
public import VaultCore

/// The HTTP face of a standby (`serve --standby`): `/healthz`, `GET /v1/admin/journal` and
/// `POST /v1/admin/promote` (operator tokens, as of the last change set applied); every other
/// request is answered 503, since only the journal's writer may answer reads or take writes.
public struct StandbyServer: Sendable {
    public let standby: Standby
    public let configuration: ServerConfiguration

    public init(standby: Standby, configuration: ServerConfiguration) {
        ServerMetrics.bootstrap()
        self.standby = standby
        self.configuration = configuration
    }

    /// A promotion: the journal settings to open the vault with, and the term it writes under.
    public typealias Promotion = (settings: JournalSettings, term: UInt64)

    /// Serves until promoted (then returns the promotion, with the socket released for the
    /// vault) or until SIGTERM/SIGINT (returns nil).
    public func run(logger: Logger, gracefulShutdownSignals: [UnixSignal] = [.sigterm, .sigint],
                    shutdown: ShutdownTrigger? = nil,
                    onRunning: @escaping @Sendable () async -> Void = {}) async throws -> Promotion? {
        let promoted = Locked<Promotion?>(nil)
        // One promotion at a time: a second request while one runs (or after it) is refused.
        let promoting = Locked(false)
        let group = Locked<ServiceGroup?>(nil)
        let router = Router(context: VaultRequestContext.self)
        router.add(middleware: StandbyMiddleware())
        let standby = self.standby

        router.get("/healthz") { _, _ -> Response in
            jsonResponse { w in
                w.beginObject()
                w.field("status", "ok")
                w.field("role", "standby")
                w.endObject()
            }
        }
        router.get("/v1/admin/journal") { request, _ -> Response in
            try Self.requireOperator(request, standby)
            let s = standby.status
            return jsonResponse { w in
                w.beginObject()
                w.field("location", s.location)
                w.field("role", "standby")
                w.field("applied", s.applied)
                w.field("head", s.head)
                w.field("epoch", s.epoch)
                w.field("lag_ms", Int64(s.lagMilliseconds))
                w.optionalString("error", s.error)
                w.endObject()
            }
        }
        router.post("/v1/admin/promote") { request, context -> Response in
            try Self.requireOperator(request, standby)
            let already = promoting.withLock { busy -> Bool in
                defer { busy = true }
                return busy
            }
            guard !already else { throw Problem(.conflict, "this standby is being promoted") }
            let promotion: Promotion
            do {
                promotion = try await onThread { try standby.promote() }
            } catch let held as Standby.LeaseHeld {
                promoting.withLock { $0 = false }
                var p = Problem(.conflict, "\(held)")
                p.extraHeaders[.retryAfter] = "\(max(1, held.seconds))"
                throw p
            } catch {
                promoting.withLock { $0 = false }
                throw error
            }
            promoted.withLock { $0 = promotion }
            context.logger.notice("promoted: this vault is the journal's writer now", metadata: ["term": "\(promotion.term)"])
            // The answer goes out before the standby's listener closes (a graceful shutdown
            // finishes the requests in flight); the vault then binds the socket.
            if let g = group.withLock({ $0 }) { Task { await g.triggerGracefulShutdown() } }
            return jsonResponse { w in
                w.beginObject()
                w.field("term", promotion.term)
                w.endObject()
            }
        }

        try await VaultServer.serve(responder: router.buildResponder(), configuration: configuration, logger: logger,
                                    gracefulShutdownSignals: gracefulShutdownSignals, onRunning: onRunning,
                                    onGroup: { g in
                                        group.withLock { $0 = g }
                                        shutdown?.attach(g)
                                    })
        return promoted.withLock { $0 }
    }

    static func requireOperator(_ request: Request, _ standby: Standby) throws {
        let info = try VaultServer.bearer(request) { standby.authenticate(token: $0) }
        guard info.role == .operator else { throw Problem.forbidden() }
    }
}

/// Every route a standby does not serve is 503 (not 404: the route exists, on the writer).
struct StandbyMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let p as Problem {
            throw p
        } catch let e as HTTPError where e.status == .notFound || e.status == .methodNotAllowed {
            throw Problem(.serviceUnavailable, "this vault is a standby: it answers /healthz and GET /v1/admin/journal "
                          + "until it is promoted (POST /v1/admin/promote)")
        } catch let e as VaultError {
            throw Problem.from(e)
        } catch let e as HTTPError {
            throw Problem(e.status, e.status.reasonPhrase)
        } catch {
            context.logger.error("standby request failed", metadata: ["error": "\(error)"])
            throw Problem(.internalServerError, "internal error")
        }
    }
}

/// Runs blocking work (a promotion's PostgreSQL calls and LMDB writes) off the cooperative pool.
func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
        let t = Thread {
            do { continuation.resume(returning: try body()) } catch { continuation.resume(throwing: error) }
        }
        t.name = "shredvault-promote"
        t.start()
    }
}
