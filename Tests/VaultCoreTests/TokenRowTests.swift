import Foundation
import LMDB
import Sodium
import Testing
@testable import VaultCore

/// Token rows carry a MAC over the token's hash and every field: whoever can write the
/// keystore (but has no master key) cannot rebind a token to another tenant or role, and a
/// damaged row costs that token only, named, never the whole vault.
@Suite struct TokenRowTests {
    let acme = tenant("acme"), globex = tenant("globex")

    struct Issued {
        let tv: TestVault
        var secrets: [String: [UInt8]] = [:]
        var ids: [String: String] = [:]
    }

    /// acme agent, acme admin, globex agent and an operator, then the vault is closed.
    private func issued() async throws -> Issued {
        var out = Issued(tv: try TestVault())
        let v = out.tv.vault
        _ = try await v.createTenant(acme, actor: .system)
        _ = try await v.createTenant(globex, actor: .system)
        for (name, t, role) in [("acme-agent", acme, Role.agent), ("acme-admin", acme, .admin),
                                ("globex-agent", globex, .agent), ("operator", nil, .operator)] as [(String, TenantID?, Role)] {
            let token = try await v.issueToken(tenant: t, role: role, name: name, actor: .system)
            out.secrets[name] = token.secret.withUnsafeBytes { Array($0) }
            out.ids[name] = token.info.id
        }
        v.close()
        return out
    }

    private func authenticate(_ v: Vault, _ secret: [UInt8]?) -> TokenInfo? {
        secret.flatMap { s in s.withUnsafeBytes { v.authenticate(token: $0) } }
    }

    /// Edits the keystore files (no vault open): `body` gets the tokens database.
    private func editTokens(_ tv: TestVault, _ body: (borrowing Transaction, Database) throws -> Void) throws {
        let env = try Environment(path: tv.dir.data + "/keystore", databases: Layout.keystoreDatabases)
        defer { env.close() }
        try env.write { txn in try body(txn, env.database(Layout.tokens)) }
    }

    private func hashKey(_ txn: borrowing Transaction, _ db: Database, id: String) throws -> [UInt8] {
        [UInt8(ascii: "h")] + (try #require(try txn.value(forKey: [UInt8(ascii: "i")] + Array(id.utf8), in: db)))
    }

    /// Rewrites the fields of a token's row, keeping its MAC (what an attacker without the key can do).
    private func rewrite(_ tv: TestVault, id: String, _ change: (TokenInfo) -> TokenInfo) throws {
        try editTokens(tv) { txn, db in
            let key = try hashKey(txn, db, id: id)
            let row = try #require(try txn.value(forKey: key, in: db))
            let mac = Array(row.suffix(TokenRow.macCount))
            let info = try Array(row.dropLast(TokenRow.macCount)).withUnsafeBytes { try TokenInfo.decode($0) }
            try txn.put(change(info).encode() + mac, forKey: key, in: db)
        }
    }

    enum Rebinding: String, CaseIterable, CustomTestStringConvertible {
        case toAnotherTenant, toOperator, toAdmin, idChanged, nameChanged, createdChanged
        var testDescription: String { rawValue }

        func apply(_ i: TokenInfo) -> TokenInfo {
            switch self {
            case .toAnotherTenant: TokenInfo(id: i.id, tenant: "globex", role: i.role, name: i.name, createdAt: i.createdAt, revokedAt: nil)
            case .toOperator: TokenInfo(id: i.id, tenant: nil, role: .operator, name: i.name, createdAt: i.createdAt, revokedAt: nil)
            case .toAdmin: TokenInfo(id: i.id, tenant: i.tenant, role: .admin, name: i.name, createdAt: i.createdAt, revokedAt: nil)
            case .idChanged: TokenInfo(id: i.id + "X", tenant: i.tenant, role: i.role, name: i.name, createdAt: i.createdAt, revokedAt: nil)
            case .nameChanged: TokenInfo(id: i.id, tenant: i.tenant, role: i.role, name: "x", createdAt: i.createdAt, revokedAt: nil)
            case .createdChanged: TokenInfo(id: i.id, tenant: i.tenant, role: i.role, name: i.name, createdAt: i.createdAt + 1, revokedAt: nil)
            }
        }
    }

    @Test(arguments: Rebinding.allCases)
    func aRewrittenRowIsRefusedAndNamedAndTheOthersStillWork(_ rebinding: Rebinding) async throws {
        let t = try await issued()
        let id = try #require(t.ids["acme-agent"])
        try rewrite(t.tv, id: id, rebinding.apply)
        let v = try t.tv.openAgain()
        defer { v.close() }
        #expect(authenticate(v, t.secrets["acme-agent"]) == nil, "a rewritten token row authenticated")
        #expect(v.tokenRowFailures == [.integrity("token \(id): its row failed authentication; the token is refused")])
        for name in ["acme-admin", "globex-agent", "operator"] {
            #expect(authenticate(v, t.secrets[name])?.id == t.ids[name], "\(name) no longer authenticates")
        }
    }

    @Test func aRevokedRowPutBackAsLiveIsRefused() async throws {
        let t = try await issued()
        let id = try #require(t.ids["acme-agent"])
        var v = try t.tv.openAgain()
        try await v.revokeToken(id: id, actor: .system)
        v.close()
        try rewrite(t.tv, id: id) { i in
            TokenInfo(id: i.id, tenant: i.tenant, role: i.role, name: i.name, createdAt: i.createdAt, revokedAt: nil)
        }
        v = try t.tv.openAgain()
        defer { v.close() }
        #expect(authenticate(v, t.secrets["acme-agent"]) == nil)
        #expect(v.tokenRowFailures.count == 1)
    }

    @Test func rowsSwappedOrMovedToAnotherTokenAreRefused() async throws {
        let t = try await issued()
        let agent = try #require(t.ids["acme-agent"]), op = try #require(t.ids["operator"])
        try editTokens(t.tv) { txn, db in
            let a = try hashKey(txn, db, id: agent), o = try hashKey(txn, db, id: op)
            let rowA = try #require(try txn.value(forKey: a, in: db)), rowO = try #require(try txn.value(forKey: o, in: db))
            try txn.put(rowO, forKey: a, in: db)
            try txn.put(rowA, forKey: o, in: db)
        }
        let v = try t.tv.openAgain()
        defer { v.close() }
        #expect(authenticate(v, t.secrets["acme-agent"]) == nil)
        #expect(authenticate(v, t.secrets["operator"]) == nil)
        let messages = v.tokenRowFailures.map(\.description).sorted()
        #expect(messages.count == 2)
        #expect(messages.contains { $0.contains("token \(agent):") } && messages.contains { $0.contains("token \(op):") })
        #expect(authenticate(v, t.secrets["globex-agent"])?.tenant == "globex")
    }

    @Test func anUndecodableRowIsNamedAndTheVaultOpens() async throws {
        let t = try await issued()
        let id = try #require(t.ids["globex-agent"])
        try editTokens(t.tv) { txn, db in
            try txn.put(Array(repeating: 0xEE, count: 40), forKey: try hashKey(txn, db, id: id), in: db)
        }
        let v = try t.tv.openAgain()
        defer { v.close() }
        let failure = try #require(v.tokenRowFailures.first)
        #expect(v.tokenRowFailures.count == 1)
        #expect(failure.description.hasPrefix("integrity failure: token \(id): its row cannot be decoded"), "\(failure)")
        #expect(authenticate(v, t.secrets["globex-agent"]) == nil)
        #expect(authenticate(v, t.secrets["acme-agent"])?.tenant == "acme")
    }

    /// The row format before token rows were authenticated (fields only) is refused like a damaged row.
    @Test func aRowWithoutAMACIsRefused() async throws {
        let t = try await issued()
        let id = try #require(t.ids["operator"])
        try editTokens(t.tv) { txn, db in
            let key = try hashKey(txn, db, id: id)
            let row = try #require(try txn.value(forKey: key, in: db))
            var fields = Array(row.dropLast(TokenRow.macCount))
            fields[0] = 1
            try txn.put(fields, forKey: key, in: db)
        }
        let v = try t.tv.openAgain()
        defer { v.close() }
        #expect(authenticate(v, t.secrets["operator"]) == nil)
        #expect(v.tokenRowFailures.first?.description.contains("token \(id):") == true)
    }

    /// A damaged token is revoked by removing its row; then the vault opens clean.
    @Test func aDamagedTokenCanBeRevoked() async throws {
        let t = try await issued()
        let id = try #require(t.ids["acme-agent"])
        try rewrite(t.tv, id: id, Rebinding.toAnotherTenant.apply)
        var v = try t.tv.openAgain()
        try await v.revokeToken(id: id, actor: .system)
        await #expect(throws: VaultError.notFound) { try await v.revokeToken(id: id, actor: .system) }
        // Offboarding still works with the damaged row gone, and with other rows present.
        try await v.offboardTenant(globex, actor: .system)
        #expect(authenticate(v, t.secrets["globex-agent"]) == nil)
        v.close()
        v = try t.tv.openAgain()
        defer { v.close() }
        #expect(v.tokenRowFailures.isEmpty)
        #expect(authenticate(v, t.secrets["acme-agent"]) == nil)
        #expect(authenticate(v, t.secrets["globex-agent"]) == nil)
        #expect(authenticate(v, t.secrets["acme-admin"])?.role == .admin)
    }

    /// Offboarding a tenant while another token's row is damaged: the damaged row does not
    /// stop it, and stays refused.
    @Test func offboardingSkipsADamagedRow() async throws {
        let t = try await issued()
        try rewrite(t.tv, id: try #require(t.ids["acme-admin"]), Rebinding.toOperator.apply)
        var v = try t.tv.openAgain()
        try await v.offboardTenant(globex, actor: .system)
        v.close()
        v = try t.tv.openAgain()
        defer { v.close() }
        #expect(v.tokenRowFailures.count == 1)
        #expect(authenticate(v, t.secrets["globex-agent"]) == nil)
        #expect(authenticate(v, t.secrets["acme-admin"]) == nil)
        #expect(authenticate(v, t.secrets["acme-agent"])?.tenant == "acme")
    }

    /// The token index (id → hash) is not authenticated: an entry that leads to another
    /// token's row must not revoke that token.
    @Test func aRedirectedIndexEntryDoesNotRevokeAnotherToken() async throws {
        let t = try await issued()
        let agent = try #require(t.ids["acme-agent"]), op = try #require(t.ids["operator"])
        try editTokens(t.tv) { txn, db in
            let opHash = try #require(try txn.value(forKey: [UInt8(ascii: "i")] + Array(op.utf8), in: db))
            try txn.put(opHash, forKey: [UInt8(ascii: "i")] + Array(agent.utf8), in: db)
        }
        var v = try t.tv.openAgain()
        await #expect(throws: VaultError.integrity("token \(agent): its index entry leads to the row of token \(op); nothing was revoked")) {
            try await v.revokeToken(id: agent, actor: .system)
        }
        #expect(authenticate(v, t.secrets["operator"])?.role == .operator)
        v.close()
        v = try t.tv.openAgain()
        defer { v.close() }
        #expect(authenticate(v, t.secrets["operator"])?.role == .operator)
    }

    @Test func issuedAndRevokedRowsVerifyAfterRotation() async throws {
        let t = try await issued()
        var v = try t.tv.openAgain()
        try await v.revokeToken(id: try #require(t.ids["acme-admin"]), actor: .system)
        _ = try await v.rotate(actor: .system)
        v.close()
        v = try t.tv.openAgain()
        defer { v.close() }
        #expect(v.tokenRowFailures.isEmpty)
        #expect(authenticate(v, t.secrets["acme-admin"]) == nil)
        #expect(authenticate(v, t.secrets["acme-agent"])?.tenant == "acme")
    }
}
