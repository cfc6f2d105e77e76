import Hummingbird
import VaultCore
import Sodium

/// Who is calling: the token's identity (never the token itself).
struct Principal: Sendable {
    let info: TokenInfo

    var actor: Actor { Actor(info.id) }

    /// The tenant of an agent or admin token.
    func tenant() throws -> TenantID {
        guard let slug = info.tenant, let t = try? TenantID(slug) else { throw Problem.forbidden() }
        return t
    }

    func require(_ roles: Role...) throws {
        guard roles.contains(info.role) else { throw Problem.forbidden() }
    }
}

extension VaultServer {
    /// Authenticates `Authorization: Bearer <token>`; 401 for missing, malformed, unknown or
    /// revoked tokens (one answer for all of them).
    func principal(_ request: Request) throws -> Principal {
        Principal(info: try Self.bearer(request) { vault.authenticate(token: $0) })
    }

    /// The token of `Authorization: Bearer <token>`, as `authenticate` knows it (the header's copy
    /// is wiped after); 401 for anything else.
    static func bearer(_ request: Request, _ authenticate: (UnsafeRawBufferPointer) -> TokenInfo?) throws -> TokenInfo {
        guard let header = request.headers[.authorization] else { throw Problem.unauthorized() }
        var bytes = Array(header.utf8)
        defer { bytes.withUnsafeMutableBytes { secureZero($0) } }
        let scheme = Array("Bearer ".utf8)
        guard bytes.count > scheme.count, bytes[0..<scheme.count].elementsEqual(scheme, by: { $0 | 0x20 == $1 | 0x20 }) else {
            throw Problem.unauthorized()
        }
        let info = bytes.withUnsafeBytes { b in authenticate(UnsafeRawBufferPointer(rebasing: b[scheme.count...])) }
        guard let info else { throw Problem.unauthorized() }
        return info
    }

    /// A tenant-scoped principal (agent or admin, as listed).
    func tenantPrincipal(_ request: Request, _ roles: Role...) throws -> (Principal, TenantID) {
        let p = try principal(request)
        guard roles.contains(p.info.role) else { throw Problem.forbidden() }
        return (p, try p.tenant())
    }

    func operatorPrincipal(_ request: Request) throws -> Principal {
        let p = try principal(request)
        try p.require(.operator)
        return p
    }
}
