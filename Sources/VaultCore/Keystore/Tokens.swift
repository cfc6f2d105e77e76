import LMDB
public import Sodium
import Synchronization

/// The three roles of DESIGN.md, "Roles and isolation".
public enum Role: String, Sendable, CaseIterable, Codable {
    case agent, admin, `operator`

    var code: UInt8 {
        switch self {
        case .agent: 1
        case .admin: 2
        case .operator: 3
        }
    }

    init(code: UInt8) throws {
        guard let r = Role.allCases.first(where: { $0.code == code }) else { throw VaultError.corrupt("unknown role \(code)") }
        self = r
    }
}

/// A bearer token as the vault knows it: never the token itself, only its keyed hash.
public struct TokenInfo: Sendable, Equatable {
    public let id: String
    /// The tenant an agent or admin token belongs to; nil for operators.
    public let tenant: String?
    public let role: Role
    public let name: String
    public let createdAt: Int64
    public let revokedAt: Int64?

    static let format: UInt8 = 1

    func encode() -> [UInt8] {
        var w = ByteWriter()
        w.u8(Self.format)
        w.string(id)
        w.string(tenant ?? "")
        w.u8(role.code)
        w.string(name)
        w.i64(createdAt)
        w.i64(revokedAt ?? 0)
        return w.bytes
    }

    static func decode(_ b: UnsafeRawBufferPointer) throws -> TokenInfo {
        var r = ByteReader(b, what: "token")
        try r.format(format)
        let id = try r.string(), tenant = try r.string(), role = try Role(code: try r.u8())
        let name = try r.string(), created = try r.i64(), revoked = try r.i64()
        try r.end()
        return TokenInfo(id: id, tenant: tenant.isEmpty ? nil : tenant, role: role, name: name, createdAt: created,
                         revokedAt: revoked == 0 ? nil : revoked)
    }
}

/// A newly issued token: shown once, then only its hash exists.
public struct IssuedToken: Sendable {
    public let info: TokenInfo
    /// `svt_` + 43 base64url characters (256 random bits), in a buffer wiped on release.
    public let secret: SensitiveBytes
}

/// Token look-up for the request path, in memory: the keyed-hash key (in guarded memory)
/// and the table of live token hashes, loaded at open and updated after each commit that
/// issues or revokes a token. Authentication never waits for the writer.
final class TokenTable: Sendable {
    /// Live tokens by the first 8 bytes of their keyed hash (the selector); the whole
    /// 32-byte hash is then compared in constant time (sodium_memcmp), so the lookup's
    /// timing depends only on a selector the caller cannot compute without the hash key.
    private struct State {
        var key: Key?
        var bySelector: [UInt64: [(hash: [UInt8], info: TokenInfo)]] = [:]

        mutating func add(_ hash: [UInt8], _ info: TokenInfo) {
            bySelector[TokenTable.selector(hash), default: []].append((hash, info))
        }
    }

    static func selector(_ hash: [UInt8]) -> UInt64 {
        hash.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
    }
    private let state = Mutex(State())

    static let prefix = Array("svt_".utf8)

    func load(key: Key, tokens: [[UInt8]: TokenInfo]) {
        state.withLock { s in
            s.key = key
            s.bySelector = [:]
            for (hash, info) in tokens where info.revokedAt == nil { s.add(hash, info) }
        }
    }

    func hash(_ token: UnsafeRawBufferPointer) throws -> [UInt8]? {
        try state.withLock { s -> [UInt8]? in
            guard let key = s.key else { return nil }
            return try KeyedHash.hash(token, key: key.bytes, outputCount: 32)
        }
    }

    func add(hash: [UInt8], info: TokenInfo) { state.withLock { $0.add(hash, info) } }
    func remove(id: String) {
        state.withLock { s in
            s.bySelector = s.bySelector.compactMapValues { entries in
                let kept = entries.filter { $0.info.id != id }
                return kept.isEmpty ? nil : kept
            }
        }
    }

    /// The token's owner, or nil for a malformed, unknown or revoked token.
    func authenticate(_ token: UnsafeRawBufferPointer) -> TokenInfo? {
        guard token.count == 47, Array(token[0..<4]) == Self.prefix else { return nil }
        return state.withLock { s -> TokenInfo? in
            guard let key = s.key, let h = try? KeyedHash.hash(token, key: key.bytes, outputCount: 32) else { return nil }
            return s.bySelector[Self.selector(h)]?.first { constantTimeEquals($0.hash, h) }?.info
        }
    }
}

extension Vault {
    static let metaTokenKey = Array("token_key".utf8)
    static let tokenKeyAD = Array("shredvault token hash key".utf8)

    /// The token hash key, wrapped under the master key (re-wrapped by each rotation).
    static func unwrapTokenKey(_ blob: [UInt8], master: Key, generation: UInt64) throws -> Key {
        try KeyHierarchy.unwrap(blob, under: master.bytes, ad: tokenKeyAD + .be(generation), what: "token hash key")
    }

    static func wrapTokenKey(_ key: Key, master: Key, generation: UInt64) throws -> [UInt8] {
        try KeyHierarchy.wrap(key.bytes, under: master.bytes, ad: tokenKeyAD + .be(generation))
    }

    /// Loads the token key (creating it in a fresh keystore) and the live tokens.
    static func loadTokens(_ stores: Stores, master: Key, generation: UInt64, into table: TokenTable) throws {
        try stores.keystore.write { txn in
            let key: Key
            if let blob = try txn.value(forKey: metaTokenKey, in: stores.ks.meta) {
                key = try unwrapTokenKey(blob, master: master, generation: generation)
            } else {
                key = try Key.random()
                try txn.put(try wrapTokenKey(key, master: master, generation: generation), forKey: metaTokenKey, in: stores.ks.meta)
            }
            var tokens: [[UInt8]: TokenInfo] = [:]
            try txn.forEach(in: stores.ks.tokens, from: [UInt8(ascii: "h")], prefix: [UInt8(ascii: "h")]) { k, v in
                tokens[Array(k[1...])] = try TokenInfo.decode(v)
                return .continue
            }
            table.load(key: key, tokens: tokens)
        }
    }

    /// Who a bearer token is: nil when it is malformed, unknown or revoked. In memory, no I/O.
    public func authenticate(token: UnsafeRawBufferPointer) -> TokenInfo? {
        tokens.authenticate(token)
    }

    /// Issues a token for a tenant (agent, admin) or for operators (tenant nil). The secret
    /// is returned once; only its keyed hash is stored.
    public func issueToken(tenant: TenantID?, role: Role, name: String, actor: Actor) async throws -> IssuedToken {
        guard (role == .operator) == (tenant == nil) else {
            throw VaultError.invalidArgument(role == .operator ? "an operator token belongs to no tenant" : "an \(role.rawValue) token needs a tenant")
        }
        guard (1...100).contains(name.utf8.count) else { throw VaultError.invalidArgument("name must be 1 to 100 bytes") }
        let issued: (IssuedToken, [UInt8]) = try await perform { ks, _, context in
            let dbs = self.writer.stores.ks
            var auditTenant: (slug: String, number: UInt32)? = nil
            if let tenant {
                auditTenant = try ResolvedTenant.load(tenant, in: ks, dbs: dbs, cache: context.keyCache).auditTenant
            }
            let raw = Random.bytes(count: 32)
            let secret = SensitiveBytes(count: 47) { out in
                out.copyBytes(from: TokenTable.prefix)
                Base64URL.encode(raw, into: UnsafeMutableRawBufferPointer(rebasing: out[4...]))
            }
            var rawCopy = raw
            rawCopy.withUnsafeMutableBytes { secureZero($0) }
            guard let hash = try secret.withUnsafeBytes({ try self.tokens.hash($0) }) else {
                throw VaultError.io("token key not loaded")
            }
            let id = RecordID.generate(milliseconds: context.now)
            let info = TokenInfo(id: "tok_" + id.description, tenant: tenant?.slug, role: role, name: name,
                                 createdAt: context.now, revokedAt: nil)
            try ks.put(info.encode(), forKey: [UInt8(ascii: "h")] + hash, in: dbs.tokens, flags: .noOverwrite)
            try ks.put(hash, forKey: [UInt8(ascii: "i")] + Array(info.id.utf8), in: dbs.tokens)
            try AuditLog.append(.init(tenant: auditTenant, actor: actor, action: "token.issue", target: "token:\(info.id)"),
                                in: ks, dbs: dbs, context: context)
            return (IssuedToken(info: info, secret: secret), hash)
        }
        tokens.add(hash: issued.1, info: issued.0.info)
        return issued.0
    }

    /// Revokes a token at once (in memory after the commit).
    public func revokeToken(id: String, actor: Actor) async throws {
        try await perform { ks, _, context in
            let dbs = self.writer.stores.ks
            guard let hash = try ks.value(forKey: [UInt8(ascii: "i")] + Array(id.utf8), in: dbs.tokens),
                  var info = try ks.withValue(forKey: [UInt8(ascii: "h")] + hash, in: dbs.tokens, { b in try b.map(TokenInfo.decode) }),
                  info.revokedAt == nil
            else { throw VaultError.notFound }
            info = TokenInfo(id: info.id, tenant: info.tenant, role: info.role, name: info.name, createdAt: info.createdAt,
                             revokedAt: context.now)
            try ks.put(info.encode(), forKey: [UInt8(ascii: "h")] + hash, in: dbs.tokens)
            var auditTenant: (slug: String, number: UInt32)? = nil
            if let slug = info.tenant, let t = try? TenantID(slug),
               let row = try ks.withValue(forKey: Array(t.slug.utf8), in: dbs.tenants, { b in try b.map(TenantRow.decode) }) {
                auditTenant = (slug, row.number)
            }
            try AuditLog.append(.init(tenant: auditTenant, actor: actor, action: "token.revoke", target: "token:\(id)"),
                                in: ks, dbs: dbs, context: context)
        }
        tokens.remove(id: id)
    }
}

/// Base64url without padding (RFC 4648 §5).
enum Base64URL {
    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    static func encodedCount(_ n: Int) -> Int { (n * 4 + 2) / 3 }

    static func encode(_ bytes: [UInt8], into out: UnsafeMutableRawBufferPointer) {
        precondition(out.count == encodedCount(bytes.count))
        var o = 0
        var i = 0
        while i + 3 <= bytes.count {
            let v = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
            for s in [18, 12, 6, 0] { out[o] = alphabet[Int((v >> UInt32(s)) & 63)]; o += 1 }
            i += 3
        }
        let rest = bytes.count - i
        if rest > 0 {
            var v = UInt32(bytes[i]) << 16
            if rest == 2 { v |= UInt32(bytes[i + 1]) << 8 }
            let shifts = rest == 1 ? [18, 12] : [18, 12, 6]
            for s in shifts { out[o] = alphabet[Int((v >> UInt32(s)) & 63)]; o += 1 }
        }
    }
}
