public import Hummingbird
import NIOCore
import VaultAPI
import VaultCore
import Locking
import Logging

/// An error answer: `application/problem+json` with `type`, `title`, `status`, `detail`
/// (docs/api.md, Conventions). `detail` never echoes payloads, subjects or tokens: it is built
/// only from our own messages, which name fields, record ids and limits.
public struct Problem: HTTPResponseError, Sendable {
    public let status: HTTPResponse.Status
    public let title: String
    public let detail: String
    var extraHeaders: HTTPFields = [:]

    public init(_ status: HTTPResponse.Status, _ detail: String) {
        self.status = status
        self.title = status.reasonPhrase
        self.detail = detail
    }

    var type: String {
        switch status.code {
        case 400: "/problems/bad-request"
        case 401: "/problems/unauthorized"
        case 403: "/problems/forbidden"
        case 404: "/problems/not-found"
        case 405: "/problems/method-not-allowed"
        case 409: "/problems/conflict"
        case 413: "/problems/too-large"
        case 429: "/problems/too-many-requests"
        case 422: "/problems/refused"
        case 503: "/problems/unavailable"
        default: "/problems/internal"
        }
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var w = JSONWriter(capacity: 160)
        w.beginObject()
        w.field("type", type)
        w.field("title", title)
        w.field("status", Int64(status.code))
        w.field("detail", detail)
        w.endObject()
        var headers = extraHeaders
        headers[.contentType] = "application/problem+json"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: w.bytes)))
    }

    static func unauthorized() -> Problem {
        var p = Problem(.unauthorized, "a valid bearer token is required")
        p.extraHeaders[.wwwAuthenticate] = "Bearer"
        return p
    }

    static func forbidden() -> Problem { Problem(.forbidden, "this token's role may not use this route") }
    static let recordNotFound = Problem(.notFound, "no such record")

    /// The one place a vault error becomes an HTTP status (docs/api.md's table).
    static func from(_ error: VaultError) -> Problem {
        switch error {
        case .notFound: return recordNotFound
        case .tenantNotFound: return Problem(.notFound, "no such tenant")
        case .tenantExists(let t): return Problem(.conflict, "tenant \(t) already exists")
        case .invalidArgument(let m): return Problem(.badRequest, m)
        case .refused(let m): return Problem(.unprocessableContent, m)
        case .legalHold(let m): return Problem(.conflict, m)
        case .storageFull: return Problem(.serviceUnavailable, "storage is full; nothing was written")
        case .shuttingDown: return Problem(.serviceUnavailable, "the vault is shutting down")
        case .journal(let m): return Problem(.serviceUnavailable, "the journal cannot take writes (\(m)); nothing was written")
        case .integrity(let m): return Problem(.internalServerError, m)
        case .corrupt, .masterKey, .auditKey, .dataDirectory, .io: return Problem(.internalServerError, "internal error")
        }
    }
}

/// Turns every failure into a problem+json answer: our `Problem`s pass through, vault errors
/// are mapped, Hummingbird's own errors (unknown route, body too large) keep their status,
/// and anything else is a logged 500 with nothing of the request in it.
struct ProblemMiddleware<Context: RequestContext>: RouterMiddleware {
    let storageFull = StorageFullLog()
    /// The served routes: an unmatched request whose path is served gets 405 with `Allow`.
    let routes: RouteIndex

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let p as Problem {
            throw p
        } catch VaultError.tenantNotFound where !request.uri.path.hasPrefix("/v1/admin/") {
            // A tenant-scoped token whose tenant was just offboarded (its tokens are revoked
            // in the same commit, and leave the in-memory table right after): it is no
            // longer a valid token.
            throw Problem.unauthorized()
        } catch let e as VaultError {
            let p = Problem.from(e)
            if case .storageFull = e { storageFull.refused(context.logger) }
            if case .journal(let m) = e { storageFull.journalRefused(m, context.logger) }
            if p.status == .internalServerError {
                context.logger.error("request failed", metadata: ["route": "\(context.endpointPath ?? "-")", "error": "\(e)"])
            }
            throw p
        } catch let e as HTTPError {
            switch e.status {
            case .contentTooLarge: throw Problem(.contentTooLarge, "request body is larger than the limit")
            case .notFound:
                // Hummingbird answers 404 whenever path and method do not match together.
                if let allowed = routes.methods(forPath: request.uri.path) {
                    var p = Problem(.methodNotAllowed, "method not allowed on this route")
                    p.extraHeaders[.allow] = allowed.joined(separator: ", ")
                    throw p
                }
                throw Problem(.notFound, "no such route")
            case .methodNotAllowed:
                var p = Problem(.methodNotAllowed, "method not allowed on this route")
                if let allowed = routes.methods(forPath: request.uri.path) { p.extraHeaders[.allow] = allowed.joined(separator: ", ") }
                throw p
            default: throw Problem(e.status, e.status.reasonPhrase)
            }
        } catch {
            context.logger.error("request failed", metadata: ["route": "\(context.endpointPath ?? "-")", "error": "\(type(of: error))"])
            throw Problem(.internalServerError, "internal error")
        }
    }
}

/// "Storage is full" (or "the journal refuses") in the log: the first refusal at once, then at
/// most one line every ten seconds with the number refused since (a full disk or an unreachable
/// journal under load must not fill the log too).
final class StorageFullLog: Sendable {
    private let storage = Locked<(last: ContinuousClock.Instant?, refused: Int)>((nil, 0))
    private let journal = Locked<(last: ContinuousClock.Instant?, refused: Int)>((nil, 0))

    private static func due(_ state: Locked<(last: ContinuousClock.Instant?, refused: Int)>) -> Int? {
        let now = ContinuousClock.now
        return state.withLock { s in
            s.refused += 1
            if let last = s.last, now - last < .seconds(10) { return nil }
            defer { s = (now, 0) }
            return s.refused
        }
    }

    func refused(_ logger: Logger) {
        if let report = Self.due(storage) {
            logger.warning("storage is full: writes are refused with 503 until space is freed (LMDB map size or disk)",
                           metadata: ["refused": "\(report)"])
        }
    }

    func journalRefused(_ reason: String, _ logger: Logger) {
        if let report = Self.due(journal) {
            logger.warning("the journal refuses change sets: writes are refused with 503 until it takes them again",
                           metadata: ["refused": "\(report)", "cause": "\(reason)"])
        }
    }
}
