import LMDB
public import Sodium
import Locking

/// The three roles of docs/architecture.md, "Roles and isolation".
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
/// Stored as a ``TokenRow``: these fields and a MAC binding them to the token's hash.
public struct TokenInfo: Sendable, Equatable {
    public let id: String
    /// The tenant an agent or admin token belongs to; nil for operators.
    public let tenant: String?
    public let role: Role
    public let name: String
    public let createdAt: Int64
    public let revokedAt: Int64?

    /// 2: the row carries a MAC (``TokenRow``). Format 1 rows (unauthenticated, before any
    /// release) are refused like any undecodable row.
    static let format: UInt8 = 2

    /// The fields alone; ``TokenRow`` appends the MAC.
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

/// A token row as stored under `h` + hash: `TokenInfo.encode()` followed by a 32-byte MAC,
/// keyed BLAKE2b over the token's hash and every field (id, tenant, role, name, created,
/// revoked). The MAC key is derived from the token hash key (crypto_kdf, context
/// `tokenrow`), which is wrapped under the master key and re-wrapped by each rotation, so
/// whoever can write the keystore but does not hold the master key cannot rebind a token to
/// another tenant or role, move a row to another token's hash, or write a row of its own.
/// (Putting back an earlier authentic row, e.g. the unrevoked one, is not detected: the
/// keystore has no freshness anchor.)
enum TokenRow {
    static let macCount = 32
    private static let domain = Array("shredvault token row".utf8)

    static func macKey(from hashKey: Key) throws -> Key {
        Key(try KeyedHash.deriveKey(from: hashKey.bytes, subkeyID: 1, context: "tokenrow"))
    }

    private static func mac(fields: UnsafeRawBufferPointer, hash: [UInt8], key: Key) throws -> [UInt8] {
        var w = ByteWriter(capacity: domain.count + 2 + hash.count + fields.count)
        w.raw(domain)
        w.field(hash)
        w.raw(fields)
        return try KeyedHash.hash(w.bytes, key: key.bytes, outputCount: macCount)
    }

    static func seal(_ info: TokenInfo, hash: [UInt8], key: Key) throws -> [UInt8] {
        let fields = info.encode()
        return fields + (try fields.withUnsafeBytes { try mac(fields: $0, hash: hash, key: key) })
    }

    /// The row's token, or an integrity error naming it (by `indexedID`, the id the token
    /// index holds for this hash, else the id the row claims) when the row cannot be decoded
    /// or fails its MAC.
    static func open(_ row: UnsafeRawBufferPointer, hash: [UInt8], key: Key, indexedID: String?) throws -> TokenInfo {
        func refused(_ why: String, claimed: String? = nil) -> VaultError {
            let name = indexedID ?? claimed.map { "\($0) (as its row claims)" } ?? "a token row outside the token index"
            return .integrity("token \(name): \(why); the token is refused")
        }
        guard row.count > macCount else { throw refused("its row cannot be decoded (truncated)") }
        let fields = UnsafeRawBufferPointer(rebasing: row[..<(row.count - macCount)])
        let info: TokenInfo
        do {
            info = try TokenInfo.decode(fields)
        } catch {
            throw refused("its row cannot be decoded (\(error))")
        }
        let expected = try mac(fields: fields, hash: hash, key: key)
        let stored = UnsafeRawBufferPointer(rebasing: row[(row.count - macCount)...])
        let authentic = expected.withUnsafeBytes { constantTimeEquals(stored, $0) }
        guard authentic else { throw refused("its row failed authentication", claimed: info.id) }
        return info
    }
}

/// A newly issued token: shown once, then only its hash exists.
public struct IssuedToken: Sendable {
    public let info: TokenInfo
    /// `svt_` + 43 base64url characters (256 random bits), in a buffer wiped on release.
    public let secret: SensitiveBytes
}

/// Token look-up for the request path, in memory: the keyed-hash key and the row MAC key (in
/// guarded memory) and the table of live token hashes, loaded at open and updated after each
/// commit that issues or revokes a token. Authentication never waits for the writer.
final class TokenTable: Sendable {
    /// Live tokens by the first 8 bytes of their keyed hash (the selector); the whole
    /// 32-byte hash is then compared in constant time (sodium_memcmp), so the lookup's
    /// timing depends only on a selector the caller cannot compute without the hash key.
    private struct State {
        var key: Key?
        var rowKey: Key?
        var bySelector: [UInt64: [(hash: [UInt8], info: TokenInfo)]] = [:]

        mutating func add(_ hash: [UInt8], _ info: TokenInfo) {
            bySelector[TokenTable.selector(hash), default: []].append((hash, info))
        }
    }

    static func selector(_ hash: [UInt8]) -> UInt64 {
        hash.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
    }
    private let state = Locked(State())

    static let prefix = Array("svt_".utf8)

    func load(key: Key, tokens: [[UInt8]: TokenInfo]) {
        load(key: key, rowKey: try? TokenRow.macKey(from: key), tokens: tokens)
    }

    func load(key: Key, rowKey: Key?, tokens: [[UInt8]: TokenInfo]) {
        state.withLock { s in
            s.key = key
            s.rowKey = rowKey
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

    private func rowKey() throws -> Key {
        guard let key = state.withLock({ $0.rowKey }) else { throw VaultError.io("token key not loaded") }
        return key
    }

    /// The row to store for `info` under its hash (see ``TokenRow``).
    func sealRow(_ info: TokenInfo, hash: [UInt8]) throws -> [UInt8] {
        try TokenRow.seal(info, hash: hash, key: try rowKey())
    }

    /// A stored row's token, or an integrity error naming it.
    func openRow(_ row: UnsafeRawBufferPointer, hash: [UInt8], indexedID: String?) throws -> TokenInfo {
        try TokenRow.open(row, hash: hash, key: try rowKey(), indexedID: indexedID)
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

    /// Loads the token key (creating it in a fresh keystore) and the live tokens. A row that
    /// cannot be decoded or fails its MAC leaves that token out (it answers 401 like an
    /// unknown one) and is returned as an integrity error naming the token: one damaged row
    /// does not keep the vault from opening. (A damaged token hash key still does: it
    /// takes every token with it.)
    static func loadTokens(_ stores: Stores, master: Key, generation: UInt64, into table: TokenTable) throws -> [VaultError] {
        try stores.write { txn, _ in
            let key: Key
            if let blob = try txn.value(forKey: metaTokenKey, in: stores.ks.meta) {
                key = try unwrapTokenKey(blob, master: master, generation: generation)
            } else {
                key = try Key.random()
                try txn.put(try wrapTokenKey(key, master: master, generation: generation), forKey: metaTokenKey, in: stores.ks.meta)
            }
            return try readTokens(txn, key: key, dbs: stores.ks, into: table)
        }
    }

    /// The live tokens under token hash key `key`, into `table` (what `loadTokens` does once the
    /// key is there; a standby, which writes nothing of its own, calls it after each catch-up).
    static func readTokens(_ txn: borrowing Transaction, key: Key, dbs: KeystoreDatabases,
                           into table: TokenTable) throws -> [VaultError] {
        let rowKey = try TokenRow.macKey(from: key)
        // The token index (id → hash), only to name a damaged row by the id it was issued as.
        var indexedIDs: [[UInt8]: String] = [:]
        try txn.forEach(in: dbs.tokens, from: [UInt8(ascii: "i")], prefix: [UInt8(ascii: "i")]) { k, v in
            indexedIDs[Array(v)] = String(decoding: k[1...], as: UTF8.self)
            return .continue
        }
        var tokens: [[UInt8]: TokenInfo] = [:]
        var failures: [VaultError] = []
        try txn.forEach(in: dbs.tokens, from: [UInt8(ascii: "h")], prefix: [UInt8(ascii: "h")]) { k, v in
            let hash = Array(k[1...])
            do {
                tokens[hash] = try TokenRow.open(v, hash: hash, key: rowKey, indexedID: indexedIDs[hash])
            } catch let error as VaultError {
                failures.append(error)
            }
            return .continue
        }
        table.load(key: key, rowKey: rowKey, tokens: tokens)
        return failures
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
        let issued: (IssuedToken, [UInt8]) = try await perform { ks, rec, context in
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
            try ks.put(try self.tokens.sealRow(info, hash: hash), forKey: [UInt8(ascii: "h")] + hash, in: dbs.tokens,
                       flags: .noOverwrite)
            try ks.put(hash, forKey: [UInt8(ascii: "i")] + Array(info.id.utf8), in: dbs.tokens)
            try AuditLog.append(.init(tenant: auditTenant, actor: actor, action: "token.issue", target: "token:\(info.id)"),
                                in: ks, rec, dbs: dbs, context: context)
            return (IssuedToken(info: info, secret: secret), hash)
        }
        tokens.add(hash: issued.1, info: issued.0.info)
        return issued.0
    }

    /// Revokes a token at once (in memory after the commit). A token whose row is damaged
    /// (refused at open) is revoked by deleting its row; a token index entry that leads to
    /// another token's authentic row is refused as an integrity error, and nothing changes.
    public func revokeToken(id: String, actor: Actor) async throws {
        try await perform { ks, rec, context in
            let dbs = self.writer.stores.ks
            let rowLocation = [UInt8(ascii: "h")] + (try ks.value(forKey: [UInt8(ascii: "i")] + Array(id.utf8), in: dbs.tokens) ?? [])
            guard rowLocation.count > 1, let row = try ks.value(forKey: rowLocation, in: dbs.tokens) else { throw VaultError.notFound }
            let hash = Array(rowLocation[1...])
            let stored: TokenInfo
            do {
                stored = try row.withUnsafeBytes { try self.tokens.openRow($0, hash: hash, indexedID: id) }
            } catch VaultError.integrity {
                // Unusable already (left out at open): its claims are not to be trusted, so the
                // revocation is audited without a tenant.
                try ks.delete(key: rowLocation, in: dbs.tokens)
                try AuditLog.append(.init(tenant: nil, actor: actor, action: "token.revoke", target: "token:\(id)"),
                                    in: ks, rec, dbs: dbs, context: context)
                return
            }
            guard stored.id == id else {
                throw VaultError.integrity("token \(id): its index entry leads to the row of token \(stored.id); nothing was revoked")
            }
            guard stored.revokedAt == nil else { throw VaultError.notFound }
            let info = TokenInfo(id: stored.id, tenant: stored.tenant, role: stored.role, name: stored.name,
                                 createdAt: stored.createdAt, revokedAt: context.now)
            try ks.put(try self.tokens.sealRow(info, hash: hash), forKey: rowLocation, in: dbs.tokens)
            var auditTenant: (slug: String, number: UInt32)? = nil
            if let slug = info.tenant, let t = try? TenantID(slug),
               let row = try ks.withValue(forKey: Array(t.slug.utf8), in: dbs.tenants, { b in try b.map(TenantRow.decode) }) {
                auditTenant = (slug, row.number)
            }
            try AuditLog.append(.init(tenant: auditTenant, actor: actor, action: "token.revoke", target: "token:\(id)"),
                                in: ks, rec, dbs: dbs, context: context)
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
