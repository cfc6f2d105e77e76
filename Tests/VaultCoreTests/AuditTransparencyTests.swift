import Foundation
import Testing
import Sodium
import LMDB
@testable import VaultCore

/// An implementation of RFC 9162's tree head that shares nothing with the code under test but
/// SHA-256: the leaves are folded as the log grows (a stack of perfect subtrees, merged when two
/// of one height meet), and the head is the right fold of the stack.
enum Reference {
    static func sha(_ parts: [UInt8]...) -> [UInt8] { SHA256.hash(parts.flatMap { $0 }) }
    static func leaf(_ entry: [UInt8]) -> [UInt8] { sha([0], entry) }

    static func root(_ leaves: ArraySlice<[UInt8]>) -> [UInt8] {
        var stack: [(height: Int, hash: [UInt8])] = []
        for l in leaves {
            stack.append((0, l))
            while stack.count >= 2, stack[stack.count - 1].height == stack[stack.count - 2].height {
                let right = stack.removeLast(), left = stack.removeLast()
                stack.append((left.height + 1, sha([1], left.hash, right.hash)))
            }
        }
        guard var acc = stack.popLast()?.hash else { return sha() }
        while let left = stack.popLast() { acc = sha([1], left.hash, acc) }
        return acc
    }

    /// The leaf bytes of an entry as docs/api.md spells them, written out here again.
    static func leafBytes(_ e: AuditEntry) -> [UInt8] {
        func be<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.bigEndian, Array.init) }
        func str(_ s: String?) -> [UInt8] { let u = Array((s ?? "").utf8); return be(UInt16(u.count)) + u }
        return [1] + be(e.seq) + be(e.at) + str(e.tenant) + str(e.actor) + str(e.action) + str(e.target) + str(e.outcome)
            + be(e.count) + str(e.reference) + e.hash
    }
}

/// Leaves given by the test rather than read from entries.
private struct GivenLeaves: LeafSource {
    let leaves: [[UInt8]]
    func leafHash(_ log: UInt32, _ index: UInt64, in ks: borrowing Transaction, _ rec: borrowing Transaction,
                  audit: AuditDatabases) throws -> MerkleTree.Hash? {
        MerkleTree.leafHash(leaves[Int(index)])
    }
}

/// What a vault written before the transparency logs lacks: every subtree and the logs' state.
private func removeTrees(_ ks: borrowing Transaction, _ dbs: KeystoreDatabases, _ rec: borrowing Transaction,
                         _ audit: AuditDatabases) throws {
    try ks.removeAll(in: audit.tree)
    try rec.removeAll(in: audit.archivedTree)
    _ = try ks.delete(key: AuditTree.stateKey, in: dbs.meta)
}

@Suite struct AuditTransparencyTests {
    let acme = tenant("acme")
    let globex = tenant("globex")

    /// The stored subtrees give the reference's head for every tree of 1 to 257 leaves, and
    /// every inclusion and consistency proof they give verifies against it (RFC 9162's
    /// verification algorithms, which are not the ones that built the proofs).
    @Test func storedSubtreesAgreeWithAnIndependentImplementationUpTo257Leaves() throws {
        let dir = TemporaryDirectory()
        let env = try Environment(path: dir.path, options: .init(mapSize: 64 << 20), databases: ["tree"])
        defer { env.close() }
        let db = env.database("tree")
        // The tail and the archive in one database: the subtrees are all in the tail.
        let audit = AuditDatabases(entries: db, byTenant: db, tree: db, archivedEntries: db, archivedByTenant: db, archivedTree: db)
        let entries = (0..<257).map { i in [UInt8(i & 0xFF), UInt8(i >> 8), 0x5A] }
        let leaves = entries.map(Reference.leaf)
        // The tree computes subtrees below its stored level from the leaves' bytes.
        let given = GivenLeaves(leaves: entries)
        try env.write { txn in
            for (i, e) in entries.enumerated() {
                try AuditTree.append(leaf: e, index: UInt64(i), log: 7, in: txn, txn, audit: audit, leaves: given)
            }
        }
        try env.read { txn in
            // Only complete subtrees of 16 leaves and more are rows: 16 + 8 + 4 + 2 + 1 of them.
            var rows: [(UInt8, UInt64)] = []
            try txn.forEach(in: db) { k, _ in
                rows.append((k[4], readBE(k, at: 5)))
                return .continue
            }
            #expect(rows.count == 31 && rows.allSatisfy { $0.0 >= AuditTree.storedLevel }, "rows: \(rows)")
            let roots = try (0...257).map { n in try AuditTree.root(7, size: UInt64(n), in: txn, txn, audit: audit, leaves: given) }
            for n in 0...257 { #expect(roots[n] == Reference.root(leaves[0..<n]), "root of \(n)") }
            for size in UInt64(1)...257 {
                let indices = size <= 40 ? Array(0..<size) : [0, 1, size / 3, size / 2, size - 2, size - 1]
                for index in indices {
                    let proof = try AuditTree.inclusionProof(7, index: index, size: size, in: txn, txn, audit: audit, leaves: given)
                    #expect(MerkleTree.verifyInclusion(leaf: leaves[Int(index)], index: index, size: size, proof: proof,
                                                       root: roots[Int(size)]), "inclusion \(index)/\(size)")
                }
                let olds = size <= 40 ? Array(1...size) : [1, 2, 3, size / 2, size - 1, size]
                for old in olds {
                    let proof = try AuditTree.consistencyProof(7, from: old, to: size, in: txn, txn, audit: audit, leaves: given)
                    #expect(MerkleTree.verifyConsistency(old: old, new: size, oldRoot: roots[Int(old)], newRoot: roots[Int(size)],
                                                         proof: proof), "consistency \(old)->\(size)")
                }
            }
        }
    }

    /// An entry deleted from the keystore (tampering) leaves its block of 16 without a row: every
    /// audited operation goes on, each append that meets the damage is counted, and the heads
    /// that would cover it answer corruption instead of a root over a made-up leaf.
    @Test func aDeletedEntryLeavesAGapInTheTreeAndOperationsGoOn() async throws {
        let tv = try TestVault()
        _ = try await tv.vault.createTenant(acme, actor: .system)
        var ids: [RecordID] = []
        for i in 0..<3 { ids.append(try await tv.vault.write(try newRecord("cust-\(i)", "note \(i)"), tenant: acme, actor: agent).id) }
        let damaged = try await tv.vault.verifyAudit().entries
        tv.vault.close()
        let deleted = try withStoredVault(tv.dir.data) { ks, _, _, audit in
            try ks.delete(key: Layout.auditKey(damaged), in: audit.entries)
        }
        #expect(deleted)
        let v = try Vault.open(dataDirectory: tv.dir.data, masterKeyFile: tv.dir.keyFile, configuration: tv.configuration)
        defer { v.close() }
        for i in 0..<20 { #expect(try await v.read(ids[i % 3], tenant: acme, actor: agent).data.text == "note \(i % 3)") }
        // The tenant's block 0 (its entries 1 to 16) needed the deleted third entry.
        #expect(try await v.statistics().auditTreeGaps >= 1)
        await #expect { try await v.auditTreeHead(tenant: acme) } throws: { error in
            guard case VaultError.corrupt(let what) = error else { return false }
            return what.contains("audit entry \(damaged)") || what.contains("is missing")
        }
        #expect(try await !v.verifyAudit().isIntact)
        // An erasure, audited like any operation, is not held up by the damage.
        let erased = try await v.erase(subject: try Subject("cust-1"), reference: nil, tenant: acme, actor: admin)
        #expect(erased.erased == 1)
        await #expect(throws: VaultError.notFound) { try await v.read(ids[1], tenant: acme, actor: agent) }
    }

    /// Through the vault: each tenant's head covers exactly its own entries (as it reads them,
    /// renumbered from 1, the leaf recomputed from the entry), the operator's covers every entry
    /// without targets, the heads are signed by the listed key, and proofs verify.
    @Test func headsCoverEachViewAndAreSignedByTheListedKey() async throws {
        let tv = try TestVault()
        let v = tv.vault
        _ = try await v.createTenant(acme, actor: .system)
        _ = try await v.createTenant(globex, actor: .system)
        for i in 0..<9 {
            let r = try await v.write(try newRecord("cust-\(i)", "note \(i)"), tenant: i % 3 == 0 ? globex : acme, actor: agent)
            _ = try await v.read(r.id, tenant: i % 3 == 0 ? globex : acme, actor: agent)
            tv.clock.advance(milliseconds: 1234)
        }
        let keys = try await v.auditPublicKeys()
        #expect(keys.count == 1)
        let key = try #require(keys.first)
        #expect(key.keyID == Array(SHA256.hash(key.publicKey).prefix(8)).hex)

        for view in [Optional(acme), globex, nil] {
            let entries = try await allEntries(v, tenant: view)
            let head = try await v.auditTreeHead(tenant: view)
            #expect(head.size == UInt64(entries.count))
            #expect(head.tenant == view?.slug)
            #expect(head.keyID == key.keyID)
            let leaves = entries.map { Reference.leaf(Reference.leafBytes($0)) }
            #expect(head.root == Reference.root(leaves[...]), "head of \(view?.slug ?? "operator")")
            let message = SignedTreeHead.signedBytes(size: head.size, root: head.root, at: RFC3339.format(milliseconds: head.at),
                                                     tenant: head.tenant)
            #expect(SigningKey.verify(signature: head.signature, of: message, publicKey: key.publicKey))
            var forged = message
            forged[forged.count - 3] ^= 1
            #expect(!SigningKey.verify(signature: head.signature, of: forged, publicKey: key.publicKey))
            for (i, leaf) in leaves.enumerated() {
                let proof = try await v.auditInclusionProof(tenant: view, seq: UInt64(i + 1), size: head.size)
                #expect(proof.leafHash == leaf)
                #expect(MerkleTree.verifyInclusion(leaf: leaf, index: UInt64(i), size: head.size, proof: proof.path, root: head.root))
            }
            let half = head.size / 2
            let consistency = try await v.auditConsistencyProof(tenant: view, from: half, to: head.size)
            #expect(MerkleTree.verifyConsistency(old: half, new: head.size, oldRoot: Reference.root(leaves[0..<Int(half)]),
                                                 newRoot: head.root, proof: consistency))
            // Refused: beyond the log, a seq outside the tree, from beyond to.
            await #expect(throws: VaultError.self) { try await v.auditInclusionProof(tenant: view, seq: 1, size: head.size + 1) }
            await #expect(throws: VaultError.self) { try await v.auditInclusionProof(tenant: view, seq: 0, size: head.size) }
            await #expect(throws: VaultError.self) { try await v.auditConsistencyProof(tenant: view, from: 3, to: 2) }
        }
        // Another tenant's activity changes nothing in acme's log: not its size, not its root.
        let before = try await v.auditTreeHead(tenant: acme)
        for i in 0..<5 { _ = try await v.write(try newRecord("g-\(i)", "x"), tenant: globex, actor: agent) }
        let after = try await v.auditTreeHead(tenant: acme)
        #expect(after.size == before.size && after.root == before.root)
        tv.vault.close()
    }

    /// A vault whose entries were written before the logs existed (the tree and its state
    /// removed) gets them at its next open, the same as if they had always been kept.
    @Test func entriesWrittenBeforeTheLogsGetTheirLeavesAtTheNextOpen() async throws {
        let tv = try TestVault()
        _ = try await tv.vault.createTenant(acme, actor: .system)
        _ = try await tv.vault.createTenant(globex, actor: .system)
        for i in 0..<30 { _ = try await tv.vault.write(try newRecord("c\(i)", "n"), tenant: i.isMultiple(of: 4) ? globex : acme, actor: agent) }
        let heads = try await [tv.vault.auditTreeHead(tenant: acme), tv.vault.auditTreeHead(tenant: globex),
                               tv.vault.auditTreeHead(tenant: nil)]
        tv.vault.close()
        try withStoredVault(tv.dir.data, removeTrees)
        var c = tv.configuration
        c.progress = { _ in }
        let v = try Vault.open(dataDirectory: tv.dir.data, masterKeyFile: tv.dir.keyFile, configuration: c)
        let again = try await [v.auditTreeHead(tenant: acme), v.auditTreeHead(tenant: globex), v.auditTreeHead(tenant: nil)]
        #expect(zip(heads, again).allSatisfy { $0.size == $1.size && $0.root == $1.root })
        // And the logs go on from there.
        _ = try await v.write(try newRecord("c-next", "n"), tenant: acme, actor: agent)
        let grown = try await v.auditTreeHead(tenant: acme)
        let proof = try await v.auditConsistencyProof(tenant: acme, from: heads[0].size, to: grown.size)
        #expect(MerkleTree.verifyConsistency(old: heads[0].size, new: grown.size, oldRoot: heads[0].root, newRoot: grown.root,
                                             proof: proof))
        v.close()
    }

    /// A keystore writer rewrites one of acme's entries and rebuilds the trees to match (as
    /// an attacker with the files but not the signing key would): the vault then signs heads of
    /// the rewritten log, but no consistency proof joins the head acme saved before to them.
    @Test func aRewrittenHistoryIsCaughtByTheHeadATenantSaved() async throws {
        let tv = try TestVault()
        _ = try await tv.vault.createTenant(acme, actor: .system)
        var ids: [RecordID] = []
        for i in 0..<6 { ids.append(try await tv.vault.write(try newRecord("c\(i)", "n"), tenant: acme, actor: agent).id) }
        _ = try await tv.vault.read(ids[2], tenant: acme, actor: agent)
        let saved = try await tv.vault.auditTreeHead(tenant: acme)
        tv.vault.close()
        // The read of record 3 becomes a read of record 4, chain hashes recomputed throughout.
        try withStoredVault(tv.dir.data) { ks, dbs, rec, stored in
            // A vault this small has every entry in the keystore's tail.
            #expect(try AuditLog.archived(in: ks, dbs: dbs) == 0)
            let audit = stored.entries
            var rows: [(AuditEntry, [UInt8])] = []
            try ks.forEach(in: audit) { _, v in rows.append(try AuditEntry.decode(v)); return .continue }
            var prev = AuditHead.genesis.hash
            for (e, _) in rows {
                let target = e.action == "record.read" ? "record:\(ids[3])" : e.target
                let canonical = AuditEntry.canonical(seq: e.seq, at: e.at, tenant: e.tenant, actor: e.actor, action: e.action,
                                                     target: target, outcome: e.outcome, count: e.count, reference: e.reference,
                                                     nonce: Random.bytes(count: AuditEntry.nonceCount))
                let hash = KeyedHash.hash(prev + canonical, outputCount: 32)
                try ks.put(canonical + prev + hash, forKey: Layout.auditKey(e.seq), in: audit)
                prev = hash
            }
            try ks.put(AuditHead(seq: UInt64(rows.count), hash: prev).encode(), forKey: AuditLog.headKey, in: dbs.meta)
            try removeTrees(ks, dbs, rec, stored)
        }
        let v = try Vault.open(dataDirectory: tv.dir.data, masterKeyFile: tv.dir.keyFile, configuration: tv.configuration)
        defer { v.close() }
        #expect(try await v.verifyAudit().isIntact, "the rewrite is consistent: the chain alone cannot tell")
        _ = try await v.write(try newRecord("later", "n"), tenant: acme, actor: agent)
        let now = try await v.auditTreeHead(tenant: acme)
        let proof = try await v.auditConsistencyProof(tenant: acme, from: saved.size, to: now.size)
        #expect(!MerkleTree.verifyConsistency(old: saved.size, new: now.size, oldRoot: saved.root, newRoot: now.root, proof: proof))
        // And the leaves of the first entries acme reads now do not give the head it kept.
        let rewritten = try await allEntries(v, tenant: acme).prefix(Int(saved.size)).map { Reference.leaf(Reference.leafBytes($0)) }
        #expect(rewritten.count == Int(saved.size) && Reference.root(rewritten[...]) != saved.root)
    }

    /// The signing key is checked at every start: missing, readable by others, another key, or
    /// an earlier one are refused with a message naming the file; `newAuditKey` lists a new key
    /// after the old one, and heads are signed by it from then on.
    @Test func theAuditKeyIsCheckedAtStartAndANewOneIsListedOnlyWhenAskedFor() async throws {
        let tv = try TestVault()
        let first = try await tv.vault.auditTreeHead(tenant: nil)
        tv.vault.close()
        let path = tv.dir.path + "/keys/audit.key"
        let open = { (c: VaultConfiguration) throws -> Vault in
            try Vault.open(dataDirectory: tv.dir.data, masterKeyFile: tv.dir.keyFile, configuration: c)
        }
        let original = try Data(contentsOf: URL(fileURLWithPath: path))

        chmod(path, 0o640)
        #expect { try open(tv.configuration) } throws: { "\($0)".contains("chmod 600 \(path)") }
        chmod(path, 0o600)

        try FileManager.default.removeItem(atPath: path)
        #expect { try open(tv.configuration) } throws: { "\($0)".contains("\(path) is missing") && "\($0)".contains(first.keyID) }
        #expect(!FileManager.default.fileExists(atPath: path), "a refused start made a key")

        // Another key in its place (made by a vault elsewhere).
        let other = try TestVault()
        other.vault.close()
        try FileManager.default.copyItem(atPath: other.dir.path + "/keys/audit.key", toPath: path)
        #expect { try open(tv.configuration) } throws: { "\($0)".contains("is not this vault's audit key") }

        var c = tv.configuration
        c.newAuditKey = true
        let v = try open(c)
        let keys = try await v.auditPublicKeys()
        #expect(keys.count == 2 && keys[0].keyID == first.keyID && keys[1].keyID != first.keyID)
        let head = try await v.auditTreeHead(tenant: nil)
        #expect(head.keyID == keys[1].keyID)
        v.close()

        // The first key is now an earlier one: refused, even with a good file mode.
        try FileManager.default.removeItem(atPath: path)
        #expect(FileManager.default.createFile(atPath: path, contents: original, attributes: [.posixPermissions: 0o600]))
        #expect { try open(tv.configuration) } throws: { "\($0)".contains("an earlier audit key") }
    }

    /// A rotation lists the new key after the old ones (heads signed before still verify with
    /// theirs) and leaves the new key in the file; one cut between listing the key and renaming
    /// its file is finished at the next open, one cut before listing it is undone.
    @Test func rotatingTheSigningKeyKeepsTheOldKeysListedAndCompletesAfterACrash() async throws {
        let tv = try TestVault()
        _ = try await tv.vault.createTenant(acme, actor: .system)
        let path = tv.dir.path + "/keys/audit.key"
        func verifies(_ h: SignedTreeHead, _ k: AuditPublicKey) -> Bool {
            SigningKey.verify(signature: h.signature, of: SignedTreeHead.signedBytes(size: h.size, root: h.root,
                              at: RFC3339.format(milliseconds: h.at), tenant: h.tenant), publicKey: k.publicKey)
        }
        let before = try await tv.vault.auditTreeHead(tenant: acme)
        let old = try await tv.vault.auditPublicKeys()
        let new = try await tv.vault.rotateAuditKey(actor: .system)
        let keys = try await tv.vault.auditPublicKeys()
        #expect(keys.count == old.count + 1 && Array(keys.prefix(old.count)) == old && keys.last == new)
        let after = try await tv.vault.auditTreeHead(tenant: acme)
        #expect(after.keyID == new.keyID && before.keyID == old.last!.keyID)
        #expect(verifies(before, old.last!) && verifies(after, new) && !verifies(after, old.last!))
        #expect(!FileManager.default.fileExists(atPath: path + ".next"))
        #expect(try await tv.vault.auditEntries(tenant: nil, after: 0, limit: 1000)
            .contains { $0.action == "audit.rotate_key" && $0.target == nil })  // the operator's view has no targets
        #expect(Posix.mode(path) == 0o600)

        // Cut between the listing and the rename: the new key in `.next`, the old one in the file.
        let rotatedFrom = try Data(contentsOf: URL(fileURLWithPath: path))
        let third = try await tv.vault.rotateAuditKey(actor: .system)
        tv.vault.close()
        try FileManager.default.moveItem(atPath: path, toPath: path + ".next")
        #expect(FileManager.default.createFile(atPath: path, contents: rotatedFrom, attributes: [.posixPermissions: 0o600]))
        let finished = try tv.reopen()
        #expect(try await finished.auditTreeHead(tenant: acme).keyID == third.keyID)
        #expect(!FileManager.default.fileExists(atPath: path + ".next"))
        finished.close()

        // Cut before the listing: a `.next` the keystore does not list is removed, the file kept.
        try AuditKeyFile(path: path + ".next").create(now: 0)
        let undone = try tv.reopen()
        defer { undone.close() }
        #expect(try await undone.auditTreeHead(tenant: acme).keyID == third.keyID)
        #expect(try await undone.auditPublicKeys().count == keys.count + 1)
        #expect(!FileManager.default.fileExists(atPath: path + ".next"))
    }
}
