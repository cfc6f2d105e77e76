import Testing
import LMDB
import Sodium
@testable import VaultCore

/// Audit retention: entries past it lose their content, keep their place and their hashes.
@Suite struct AuditRetentionTests {
    let acme = tenant("acme"), beta = tenant("beta")

    /// The root of a log whose first entries are known by the subtrees that cover them
    /// (largest first, as `GET /v1/audit/pruned` gives them), followed by `leaves`: RFC 9162's
    /// stack of complete subtrees, written here again rather than taken from the vault.
    static func root(prefixSize: UInt64, subtrees: [[UInt8]], leaves: [[UInt8]]) -> [UInt8] {
        var stack: [(height: Int, hash: [UInt8])] = []
        var i = 0
        for level in stride(from: 63, through: 0, by: -1) where prefixSize >> UInt64(level) & 1 == 1 {
            stack.append((level, subtrees[i]))
            i += 1
        }
        for l in leaves {
            stack.append((0, l))
            while stack.count >= 2, stack[stack.count - 1].height == stack[stack.count - 2].height {
                let right = stack.removeLast(), left = stack.removeLast()
                stack.append((left.height + 1, Reference.sha([1], left.hash, right.hash)))
            }
        }
        guard var acc = stack.popLast()?.hash else { return Reference.sha() }
        while let left = stack.popLast() { acc = Reference.sha([1], left.hash, acc) }
        return acc
    }

    /// Writes `count` records of acme and two of beta: their entries are the old history.
    private func history(_ v: Vault, count: Int) async throws {
        for i in 0..<count { _ = try await v.write(try newRecord("s\(i % 3)", #"{"i":\#(i)}"#), tenant: acme, actor: agent) }
        for _ in 0..<2 { _ = try await v.write(try newRecord("b", "{}"), tenant: beta, actor: agent) }
    }

    @Test func entriesPastTheRetentionLoseTheirContentAndKeepTheirHashes() async throws {
        let tv = try TestVault()
        let v = tv.vault
        _ = try await v.createTenant(acme, actor: .system)
        _ = try await v.createTenant(beta, actor: .system)
        try await history(v, count: 20)
        // What a client company kept before the prune: its entries and a head; the operator's too.
        let saved = try await v.auditEntries(tenant: acme, after: 0, limit: 1000)
        let savedHead = try await v.auditTreeHead(tenant: acme)
        let oldChain = try await v.auditEntries(tenant: nil, after: 0, limit: 1000)
        let savedOperatorHead = try await v.auditTreeHead(tenant: nil)
        #expect(saved.count == 21 && savedHead.size == 21)  // tenant.create and 20 writes

        // 401 days later, new entries push the old ones into the archive; the sweep prunes them.
        tv.clock.advance(seconds: AuditRetention.defaultSeconds + 86_400)
        try await history(v, count: 2 * Int(TestVault.auditTail))
        #expect(try await v.statistics().auditArchived >= UInt64(oldChain.count))
        let summary = try await v.sweep()
        #expect(summary.auditEntriesPruned == UInt64(oldChain.count))
        #expect(summary.auditRetentionSeconds == AuditRetention.defaultSeconds)
        #expect(try await v.statistics().auditPruned == UInt64(oldChain.count))
        let verification = try await v.verifyAudit()
        #expect(verification.isIntact, "\(verification)")
        #expect(verification.pruned == UInt64(oldChain.count))

        // The listings start after the pruned entries; the sweep recorded what it pruned.
        let now = try await v.auditEntries(tenant: acme, after: 0, limit: 1000)
        #expect(now.first?.seq == UInt64(saved.count) + 1)
        #expect(now.count == 2 * Int(TestVault.auditTail))
        let chain = try await v.auditEntries(tenant: nil, after: 0, limit: 1000)
        #expect(chain.first?.seq == UInt64(oldChain.count) + 1)
        #expect(chain.contains { $0.action == "audit.prune" && $0.count == UInt64(oldChain.count) })
        #expect(try await v.auditEntries(tenant: acme, after: 3, limit: 5).first?.seq == UInt64(saved.count) + 1)

        // The tree kept every hash: the saved head extends to today's, the saved entries are
        // still in it, and the pruned prefix with the later entries gives today's root.
        let head = try await v.auditTreeHead(tenant: acme)
        let consistency = try await v.auditConsistencyProof(tenant: acme, from: savedHead.size, to: head.size)
        #expect(MerkleTree.verifyConsistency(old: savedHead.size, new: head.size, oldRoot: savedHead.root, newRoot: head.root,
                                             proof: consistency))
        let savedLeaves = saved.map { Reference.leaf(Reference.leafBytes($0)) }
        let proof = try await v.auditInclusionProof(tenant: acme, seq: 1, size: head.size)
        #expect(proof.leafHash == savedLeaves[0])
        #expect(MerkleTree.verifyInclusion(leaf: savedLeaves[0], index: 0, size: head.size, proof: proof.path, root: head.root))
        let prefix = try await v.auditPrunedPrefix(tenant: acme)
        #expect(prefix.size == UInt64(saved.count) && prefix.subtrees.count == saved.count.nonzeroBitCount)
        #expect(Self.root(prefixSize: prefix.size, subtrees: prefix.subtrees, leaves: []) == Reference.root(savedLeaves[...]))
        #expect(Self.root(prefixSize: prefix.size, subtrees: prefix.subtrees,
                          leaves: now.map { Reference.leaf(Reference.leafBytes($0)) }) == head.root)
        let operatorHead = try await v.auditTreeHead(tenant: nil)
        #expect(MerkleTree.verifyConsistency(old: savedOperatorHead.size, new: operatorHead.size, oldRoot: savedOperatorHead.root,
                                             newRoot: operatorHead.root,
                                             proof: try await v.auditConsistencyProof(tenant: nil, from: savedOperatorHead.size,
                                                                                      to: operatorHead.size)))
        #expect(try await v.auditPrunedPrefix(tenant: nil).size == UInt64(oldChain.count))
        let beta = try await v.auditPrunedPrefix(tenant: self.beta)
        #expect(beta.size == 3)  // tenant.create and two writes

        // Nothing of what the pruned entries recorded is left in the archive.
        let reopened = try tv.reopen()
        #expect(try await reopened.verifyAudit().isIntact)
        _ = try await reopened.sweep()  // nothing more to prune: the rest is younger
        #expect(try await reopened.statistics().auditPruned == UInt64(oldChain.count))
        reopened.close()
        try withStoredVault(tv.dir.data) { _, _, rec, audit in
            for e in oldChain {
                let stored = try #require(try rec.withValue(forKey: Layout.auditKey(e.seq), in: audit.archivedEntries) { $0.map(Array.init) })
                #expect(stored.count == 81 && stored[0] == AuditEntry.prunedFormat)
                #expect(!stored.containsSubsequence(Array(e.actor.utf8)))
            }
        }
    }

    @Test func aLongerRecordRetentionInForceHoldsTheAuditBack() async throws {
        let tv = try TestVault()
        let v = tv.vault
        _ = try await v.createTenant(acme, actor: .system)
        _ = try await v.createTenant(beta, actor: .system)
        let tenYears: Int64 = 3650 * 86_400
        _ = try await v.addRetentionExtension(purpose: .legal, reference: "case 12", retentionSeconds: tenYears,
                                              categories: [.personal], until: tv.clock.now + 366 * 86_400_000,
                                              tenant: acme, actor: admin)
        try await history(v, count: 20)
        tv.clock.advance(seconds: AuditRetention.defaultSeconds + 86_400)
        try await history(v, count: 2 * Int(TestVault.auditTail))
        let summary = try await v.sweep()
        #expect(summary.auditEntriesPruned == 0)
        #expect(summary.auditRetentionSeconds == tenYears)
        #expect(try await v.auditEntries(tenant: acme, after: 0, limit: 1).first?.seq == 1)
        // Once no record of that contract can be left, the configured retention applies again.
        tv.clock.advance(seconds: tenYears)
        try await history(v, count: 2 * Int(TestVault.auditTail))
        let later = try await v.sweep()
        #expect(later.auditRetentionSeconds == AuditRetention.defaultSeconds)
        #expect(later.auditEntriesPruned > 0)
        #expect(try await v.verifyAudit().isIntact)
    }

    /// A stub in place of an entry past the prune mark hides what it recorded: named. So is an
    /// entry within the pruned range that still has its content, and a prune count past the log.
    @Test(arguments: ["stub past the mark", "content before the mark", "mark past the log"])
    func aForgedPruneIsNamed(_ forgery: String) async throws {
        let tv = try TestVault()
        let v = tv.vault
        _ = try await v.createTenant(acme, actor: .system)
        _ = try await v.createTenant(beta, actor: .system)
        try await history(v, count: 20)
        tv.clock.advance(seconds: AuditRetention.defaultSeconds + 86_400)
        try await history(v, count: 3 * Int(TestVault.auditTail))
        let pruned = try await v.sweep().auditEntriesPruned
        try #require(pruned > 0)
        let archived = try await v.statistics().auditArchived
        try #require(archived > pruned + 2)
        v.close()
        let target: UInt64 = forgery == "content before the mark" ? pruned : pruned + 1
        try withStoredVault(tv.dir.data) { _, _, rec, audit in
            let key = Layout.auditKey(target)
            switch forgery {
            case "stub past the mark":
                let e = try #require(try rec.withValue(forKey: key, in: audit.archivedEntries) { try $0.map { try AuditEntry.decode($0).entry } })
                try rec.put(AuditEntry.pruned(seq: e.seq, at: e.at, prev: e.prev, hash: e.hash), forKey: key, in: audit.archivedEntries)
            case "content before the mark":
                try rec.put(.be(pruned - 1), forKey: Layout.auditCountKey(AuditTree.operatorLog), in: audit.archivedByTenant)
            default:
                try rec.put(.be(UInt64(1) << 40), forKey: Layout.auditCountKey(AuditTree.operatorLog), in: audit.archivedByTenant)
            }
        }
        let reopened = try tv.reopen()
        defer { reopened.close() }
        let verification = try await reopened.verifyAudit()
        #expect(!verification.isIntact)
        #expect(verification.firstBroken == target, "\(verification)")
    }
}

extension Array where Element == UInt8 {
    func containsSubsequence(_ needle: [UInt8]) -> Bool {
        guard !needle.isEmpty, needle.count <= count else { return needle.isEmpty }
        return (0...(count - needle.count)).contains { Array(self[$0..<$0 + needle.count]) == needle }
    }
}
