import Testing
import Sodium
import LMDB
import Locking
@testable import VaultCore

/// Every entry of a view, page by page (also used by AuditTransparencyTests).
func allEntries(_ v: Vault, tenant: TenantID?) async throws -> [AuditEntry] {
    var out: [AuditEntry] = []
    while true {
        let page = try await v.auditEntries(tenant: tenant, after: out.last?.seq ?? 0, limit: 1000)
        if page.isEmpty { return out }
        out += page
    }
}

/// Edits stored audit entry `seq` where it is, the archive or the keystore's tail (no vault may
/// be open on the directory); `body` gets the transaction and database holding it.
private func withStoredEntry<R>(_ tv: TestVault, _ seq: UInt64,
                                _ body: (borrowing Transaction, Database, _ archived: Bool) throws -> R) throws -> R {
    try withStoredVault(tv.dir.data) { ks, dbs, rec, audit in
        seq <= (try AuditLog.archived(in: ks, dbs: dbs)) ? try body(rec, audit.archivedEntries, true) : try body(ks, audit.entries, false)
    }
}

@Suite struct AuditTests {
    let acme = tenant("acme")
    let globex = tenant("globex")
    let subject = "subject-Ingrid-Halvorsen-+47-99-88-77-66"
    let payloadText = #"{"note":"payload-marker-8c1f-complaint-about-invoice-4711"}"#
    let correctedText = #"{"note":"payload-marker-5e2a-corrected-version"}"#

    /// A mix of every audited operation, including refusals and failures; returns the vault.
    private func exercise(_ tv: TestVault) async throws -> (reads: Int, notFoundReads: Int) {
        let v = tv.vault
        _ = try await v.createTenant(acme, actor: .system)
        _ = try await v.createTenant(globex, actor: .system)
        let s = try Subject(subject)
        let r1 = try await v.write(try newRecord(subject, payloadText), tenant: acme, actor: agent)
        tv.clock.advance(seconds: 1)
        let r2 = try await v.write(try newRecord(subject, payloadText, category: .privacyRelated, channel: .email),
                                   tenant: acme, actor: agent)
        let g1 = try await v.write(try newRecord(subject, payloadText), tenant: globex, actor: agent)
        _ = try await v.read(r1.id, tenant: acme, actor: agent)
        _ = try await v.read(g1.id, tenant: globex, actor: agent)
        _ = try? await v.read(g1.id, tenant: acme, actor: agent)  // not found: other tenant's id
        _ = try await v.correct(r1.id, data: payload(correctedText), tenant: acme, actor: agent)
        _ = try await v.read(r1.id, tenant: acme, actor: agent)
        _ = try await v.records(of: s, tenant: acme, actor: agent)
        _ = try await v.records(of: s, tenant: acme, actor: admin, export: true)
        let hold = try await v.addHold(.subject(s), reason: "court order", reference: "C-1", tenant: acme, actor: admin)
        _ = try? await v.erase(subject: s, reference: "erase-req-1", tenant: acme, actor: admin)  // refused
        _ = try? await v.delete(r2.id, tenant: acme, actor: admin)  // refused
        try await v.removeHold(hold.id, tenant: acme, actor: admin)
        _ = try await v.setRetentionPolicy(RetentionPolicy(defaultSeconds: 30 * 86_400, categories: [:]), tenant: acme, actor: admin)
        let ext = try await v.addRetentionExtension(purpose: .quality, reference: "QA-3", retentionSeconds: 100 * 86_400,
                                                    categories: [.nonPersonal], until: tv.clock.now + 86_400_000,
                                                    tenant: acme, actor: admin)
        try await v.endRetentionExtension(ext.id, tenant: acme, actor: admin)
        // Failures that never reach the log.
        _ = try? await v.write(try newRecord(subject, payloadText), tenant: tenant("nobody"), actor: agent)
        _ = try? await v.write(try newRecord(subject, payloadText, retention: 365 * 86_400), tenant: acme, actor: agent)
        try await v.delete(r2.id, tenant: acme, actor: admin)
        _ = try await v.erase(subject: s, reference: "erase-req-2", tenant: acme, actor: admin)
        _ = try await v.sweep()
        try await v.offboardTenant(globex, actor: .system)
        return (reads: 4, notFoundReads: 1)
    }

    @Test func chainVerifiesAfterAMixOfOperations() async throws {
        let tv = try TestVault()
        defer { tv.vault.close() }
        let v = tv.vault
        let counts = try await exercise(tv)
        let verification = try await v.verifyAudit()
        #expect(verification.isIntact)
        #expect(verification.reason == nil)

        let entries = try await allEntries(v, tenant: nil)
        #expect(UInt64(entries.count) == verification.entries)
        #expect(entries.map(\.seq) == Array(1...UInt64(entries.count)))
        #expect(entries.first?.prev == [UInt8](repeating: 0, count: 32))
        for (previous, entry) in zip(entries, entries.dropFirst()) {
            #expect(entry.prev == previous.hash)
            #expect(entry.at >= previous.at)
        }
        #expect(Set(entries.map(\.hash)).count == entries.count)

        // Every access is there: reads with their outcome, refusals, the maintenance runs.
        let acmeView = try await allEntries(v, tenant: acme)
        let reads = entries.filter { $0.action == "record.read" }
        #expect(reads.count == counts.reads)
        #expect(reads.filter { $0.outcome == "not_found" }.count == counts.notFoundReads)
        #expect(acmeView.filter { $0.outcome == "refused:legal_hold" }.map(\.action).sorted() == ["record.delete", "subject.erase"])
        #expect(entries.contains { $0.action == "sweep" && $0.tenant == nil })
        #expect(entries.contains { $0.action == "tenant.offboard" && $0.tenant == globex.slug })
        // An offboarded tenant's view is gone with it.
        await #expect(throws: VaultError.tenantNotFound(globex.slug)) { try await v.auditEntries(tenant: globex, after: 0, limit: 10) }
        // A tenant's view is exactly the chain's entries of that tenant, in chain order (same
        // hashes), numbered in the tenant's own sequence and without prev.
        let acmeChain = entries.filter { $0.tenant == acme.slug }
        #expect(acmeView.map(\.hash) == acmeChain.map(\.hash))
        #expect(acmeView.map(\.seq) == Array(1...UInt64(acmeView.count)))
        #expect(acmeView.allSatisfy { $0.prev.isEmpty })
        #expect(acmeChain.map(\.seq) != acmeView.map(\.seq), "the exercise interleaves tenants: the numberings differ")
        #expect(entries.allSatisfy { $0.tenant == nil || $0.tenant == acme.slug || $0.tenant == globex.slug })
        for (e, c) in zip(acmeView, acmeChain) {
            #expect(e.action == c.action)
            #expect(e.at == c.at)
            #expect(e.outcome == c.outcome)
        }

        // The chain survives a reopen and keeps growing from its head.
        let reopened = try tv.reopen()
        defer { reopened.close() }
        _ = try await reopened.write(try newRecord("x", "{}"), tenant: acme, actor: agent)
        let after = try await reopened.verifyAudit()
        #expect(after.isIntact)
        #expect(after.entries == verification.entries + 1)
    }

    static let flipPositions: [String] = ["time", "middle", "prev", "hash"]

    /// One byte of an entry in the archive (entry 5) or in the keystore's tail (the one before
    /// the newest) is flipped: verification names that entry.
    @Test(arguments: flipPositions, [false, true])
    func flippingOneByteOfAnEntryIsNamed(_ where_: String, inTail: Bool) async throws {
        let tv = try TestVault()
        _ = try await exercise(tv)
        let before = try await tv.vault.verifyAudit()
        #expect(before.isIntact)
        #expect(before.entries > TestVault.auditTail + 6)
        tv.vault.close()

        let target: UInt64 = inTail ? before.entries - 1 : 5
        let archived = try withStoredEntry(tv, target) { txn, db, archived in
            var value = try #require(try txn.value(forKey: Layout.auditKey(target), in: db))
            let index: Int = switch where_ {
            case "time": 1 + 8 + 7            // low byte of the timestamp
            case "middle": value.count / 2
            case "prev": value.count - 64 + 3
            default: value.count - 1          // the stored hash
            }
            value[index] ^= 0x01
            try txn.put(value, forKey: Layout.auditKey(target), in: db)
            return archived
        }
        #expect(archived == !inTail)

        let v = try tv.openAgain()
        defer { v.close() }
        let verification = try await v.verifyAudit()
        #expect(verification.firstBroken == target)
        #expect(!verification.isIntact)
        #expect(verification.reason != nil)
    }

    @Test func deletingTheNewestEntryIsDetected() async throws {
        let tv = try TestVault()
        _ = try await exercise(tv)
        let before = try await tv.vault.verifyAudit()
        #expect(before.isIntact)
        tv.vault.close()

        let newest = before.entries
        try withStoredEntry(tv, newest) { txn, db, archived in
            #expect(!archived)
            let deleted = try txn.delete(key: Layout.auditKey(newest), in: db)
            #expect(deleted)
        }
        let v = try tv.openAgain()
        defer { v.close() }
        let verification = try await v.verifyAudit()
        #expect(verification.firstBroken == newest)
        #expect(verification.entries == newest - 1)
        #expect(verification.reason?.contains("head") == true, "\(verification.reason ?? "")")
    }

    @Test func deletingAnEntryInTheMiddleIsDetected() async throws {
        let tv = try TestVault()
        _ = try await exercise(tv)
        let before = try await tv.vault.verifyAudit()
        tv.vault.close()
        let victim = before.entries / 2
        try withStoredEntry(tv, victim) { txn, db, archived in
            #expect(archived, "the middle of \(before.entries) entries is in the archive")
            let deleted = try txn.delete(key: Layout.auditKey(victim), in: db)
            #expect(deleted)
        }
        let v = try tv.openAgain()
        defer { v.close() }
        #expect(try await v.verifyAudit().firstBroken == victim)
    }

    @Test func noSubjectOrPayloadInTheLogOrInAnyFile() async throws {
        let tv = try TestVault()
        _ = try await exercise(tv)
        // The subject and payloads of live records too (the exercise erased its own).
        let live = try await tv.vault.write(try newRecord(subject, payloadText), tenant: acme, actor: agent)
        _ = try await tv.vault.read(live.id, tenant: acme, actor: agent)
        _ = try await tv.vault.records(of: try Subject(subject), tenant: acme, actor: admin, export: true)

        let needles = [subject, "Ingrid", "99-88-77-66", payloadText, "payload-marker-8c1f", "payload-marker-5e2a"]
        for e in try await allEntries(tv.vault, tenant: acme) + (try await allEntries(tv.vault, tenant: nil)) {
            let fields = [e.tenant ?? "", e.actor, e.action, e.target ?? "", e.outcome, e.reference ?? "", "\(e)"]
            for field in fields {
                for needle in needles {
                    #expect(!field.contains(needle), "audit entry \(e.seq) (\(e.action)) holds \(needle)")
                }
            }
        }
        tv.vault.close()

        let files = try allFiles(under: tv.dir.path)
        #expect(files.contains { $0.0.hasSuffix("/keystore/data.mdb") })
        #expect(files.contains { $0.0.hasSuffix("/records/data.mdb") })
        for (path, bytes) in files {
            for needle in needles {
                let found = contains(bytes, Array(needle.utf8))
                #expect(!found, "\(needle) in clear in \(path)")
            }
        }
    }

    @Test func operatorViewHasNoTargetsNorReferences() async throws {
        let tv = try TestVault()
        defer { tv.vault.close() }
        _ = try await exercise(tv)
        let operatorView = try await allEntries(tv.vault, tenant: nil)
        #expect(!operatorView.isEmpty)
        #expect(operatorView.allSatisfy { $0.target == nil && $0.reference == nil })
        #expect(UInt64(operatorView.count) == (try await tv.vault.verifyAudit()).entries)
        // The tenant's view of the same entries does carry them: the operator view strips them.
        let tenantView = try await allEntries(tv.vault, tenant: acme)
        #expect(tenantView.contains { $0.target?.hasPrefix("record:") == true })
        #expect(tenantView.contains { $0.target?.hasPrefix("subject:") == true })
        #expect(tenantView.contains { $0.reference == "erase-req-2" })
        // Paging: a limit is honoured and pages continue where they left off.
        let firstPage = try await tv.vault.auditEntries(tenant: nil, after: 0, limit: 3)
        #expect(firstPage.map(\.seq) == [1, 2, 3])
        let next = try await tv.vault.auditEntries(tenant: nil, after: 3, limit: 2)
        #expect(next.map(\.seq) == [4, 5])
        #expect(try await tv.vault.auditEntries(tenant: nil, after: 0, limit: 0).isEmpty)
    }

    // MARK: Tenant numbering (docs/architecture.md, Roles and isolation)

    /// A tenant's entries, receipts and pages count in the tenant's own sequence: another
    /// tenant's operations change none of them.
    @Test func tenantNumberingIgnoresOtherTenantsActivity() async throws {
        let tv = try TestVault()
        defer { tv.vault.close() }
        let v = tv.vault
        _ = try await v.createTenant(acme, actor: .system)
        _ = try await v.createTenant(globex, actor: .system)
        var receipts: [ErasureReceipt] = []
        for round in 0..<4 {
            for _ in 0..<(round + 1) { _ = try await v.write(try newRecord(subject, payloadText), tenant: globex, actor: agent) }
            _ = try await v.write(try newRecord(subject, payloadText), tenant: acme, actor: agent)
            receipts.append(try await v.erase(subject: try Subject("nobody-\(round)"), reference: nil, tenant: acme, actor: admin))
            _ = try await v.rotate(actor: .system)
        }
        let view = try await allEntries(v, tenant: acme)
        // tenant.create, then a write and an erasure per round.
        #expect(view.map(\.seq) == Array(1...9))
        #expect(view.map(\.action) == ["tenant.create"] + Array(repeating: ["record.write", "subject.erase"], count: 4).flatMap { $0 })
        #expect(receipts.map(\.auditSeq) == [3, 5, 7, 9])
        for r in receipts {
            let entry = try #require(try await v.auditEntries(tenant: acme, after: r.auditSeq - 1, limit: 1).first)
            #expect(entry.seq == r.auditSeq)
            #expect(entry.hashHex == r.auditHash)
        }
        // Pages continue in the tenant's numbering.
        #expect(try await v.auditEntries(tenant: acme, after: 4, limit: 2).map(\.seq) == [5, 6])
        #expect(try await v.auditEntries(tenant: acme, after: 9, limit: 10).isEmpty)
        #expect(try await v.auditEntries(tenant: acme, after: .max, limit: 10).isEmpty)
        // The chain is one chain, unchanged: the same entries sit far apart in it.
        let chain = try await allEntries(v, tenant: nil)
        let chainSeq = Dictionary(uniqueKeysWithValues: chain.map { ($0.hashHex, $0.seq) })
        let receiptsInChain = receipts.compactMap { chainSeq[$0.auditHash] }
        #expect(receiptsInChain.count == receipts.count)
        #expect(receiptsInChain != receipts.map(\.auditSeq))
        #expect(try await v.verifyAudit().isIntact)
        // And survives a reopen: the next entry follows the last one.
        let reopened = try tv.reopen()
        defer { reopened.close() }
        _ = try await reopened.write(try newRecord(subject, payloadText), tenant: acme, actor: agent)
        #expect(try await reopened.auditEntries(tenant: acme, after: 9, limit: 10).map(\.seq) == [10])
        #expect(try await reopened.auditEntries(tenant: globex, after: 0, limit: 1000).map(\.seq) == Array(1...11))
    }

    /// Operations of two tenants in the same group-committed batches, some of them failing
    /// (rolled back) and some refused (their entry kept): each tenant's numbering has no gap
    /// and follows the chain's order.
    @Test func tenantNumberingHasNoGapsUnderConcurrentBatches() async throws {
        let tv = try TestVault()
        defer { tv.vault.close() }
        let v = tv.vault
        _ = try await v.createTenant(acme, actor: .system)
        _ = try await v.createTenant(globex, actor: .system)
        let held = try await v.write(try newRecord("held", payloadText), tenant: acme, actor: agent)
        _ = try await v.addHold(.record(held.id), reason: "r", reference: "C-2", tenant: acme, actor: admin)
        let text = payloadText
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<96 {
                let t = i % 3 == 0 ? globex : acme
                group.addTask {
                    switch i % 4 {
                    case 0: _ = try await v.write(try newRecord("s\(i)", text), tenant: t, actor: agent)
                    case 1: _ = try? await v.write(try newRecord("s\(i)", text, retention: 365 * 86_400), tenant: t, actor: agent)
                    case 2: _ = try? await v.delete(held.id, tenant: acme, actor: admin)  // refused, audited
                    default: _ = try? await v.read(unknownRecordID(), tenant: t, actor: agent)  // not found, audited
                    }
                }
            }
            try await group.waitForAll()
        }
        let chain = try await allEntries(v, tenant: nil)
        for t in [acme, globex] {
            let view = try await allEntries(v, tenant: t)
            #expect(view.map(\.seq) == Array(1...UInt64(view.count)))
            #expect(view.map(\.hash) == chain.filter { $0.tenant == t.slug }.map(\.hash))
        }
        #expect(try await v.verifyAudit().isIntact)
    }

    /// The hash a tenant is shown commits to the entry without being a function of what the
    /// tenant sees: two of its entries adjacent in the chain (so `prev` of the second is the
    /// hash of the first), every field known, trying chain sequence numbers finds nothing,
    /// because the hash also covers a random nonce the tenant never sees.
    @Test func entryHashIsOpaqueToTheTenant() async throws {
        let tv = try TestVault()
        let v = tv.vault
        _ = try await v.createTenant(acme, actor: .system)
        _ = try await v.createTenant(globex, actor: .system)
        for _ in 0..<7 { _ = try await v.write(try newRecord(subject, payloadText), tenant: globex, actor: agent) }
        _ = try await v.write(try newRecord(subject, payloadText), tenant: acme, actor: agent)
        _ = try await v.write(try newRecord(subject, payloadText), tenant: acme, actor: agent)
        let view = try await allEntries(v, tenant: acme)
        let (first, second) = (view[view.count - 2], view[view.count - 1])
        let chain = try await allEntries(v, tenant: nil)
        let g = try #require(chain.first { $0.hash == second.hash }?.seq)
        #expect(chain.first { $0.hash == first.hash }?.seq == g - 1, "the two entries are adjacent in the chain")
        v.close()

        func canonical(_ seq: UInt64, nonce: [UInt8]?) -> [UInt8] {
            AuditEntry.canonical(seq: seq, at: second.at, tenant: second.tenant, actor: second.actor, action: second.action,
                                 target: second.target, outcome: second.outcome, count: second.count,
                                 reference: second.reference, nonce: nonce)
        }
        let stored = try withStoredEntry(tv, g) { txn, db, _ in
            try #require(try txn.value(forKey: Layout.auditKey(g), in: db))
        }
        let (entry, storedCanonical) = try stored.withUnsafeBytes { try AuditEntry.decode($0) }
        // Control: the tenant's fields, the chain seq and the stored nonce are the whole entry.
        let nonce = Array(storedCanonical.suffix(AuditEntry.nonceCount))
        #expect(storedCanonical.first == AuditEntry.format)
        #expect(canonical(g, nonce: nonce) == storedCanonical)
        #expect(entry.prev == first.hash)
        #expect(KeyedHash.hash(first.hash + storedCanonical, outputCount: 32) == second.hash)
        // Without the nonce, no sequence number gives the hash the tenant was shown.
        let zeros = [UInt8](repeating: 0, count: AuditEntry.nonceCount)
        for candidate in UInt64(1)...(g + 1000) {
            #expect(KeyedHash.hash(first.hash + canonical(candidate, nonce: nil), outputCount: 32) != second.hash)
            #expect(KeyedHash.hash(first.hash + canonical(candidate, nonce: zeros), outputCount: 32) != second.hash)
        }
        #expect(Set(chain.map(\.hash)).count == chain.count)
    }

    /// A vault written before the archive kept its whole audit in the keystore, and one older
    /// still keyed the numbering by the chain's seq with empty values and kept no counts. At
    /// open the numbering is renumbered, each tenant counted, and all but the tail moved to the
    /// record store: each tenant's view, the chain and every log's head are as they were, and
    /// the logs go on.
    @Test func anAuditKeptWhollyInTheKeystoreMovesToTheArchiveUnchanged() async throws {
        let tv = try TestVault()
        _ = try await exercise(tv)
        let v0 = tv.vault
        let globex2 = tenant("globex-2")
        _ = try await v0.createTenant(globex2, actor: .system)
        for i in 0..<400 {
            _ = try await v0.write(try newRecord(subject, payloadText), tenant: i % 3 == 0 ? acme : globex2, actor: agent)
        }
        let acmeBefore = try await allEntries(v0, tenant: acme)
        let globexBefore = try await allEntries(v0, tenant: globex2)
        let chainBefore = try await allEntries(v0, tenant: nil)
        let headsBefore = try await [v0.auditTreeHead(tenant: acme), v0.auditTreeHead(tenant: globex2), v0.auditTreeHead(tenant: nil)]
        let entriesBefore = try await v0.verifyAudit().entries
        v0.close()

        // Back to the oldest layout: every row in the keystore, numbering as t|chain seq → "".
        try withStoredVault(tv.dir.data) { ks, dbs, rec, audit in
            #expect(try AuditLog.archived(in: ks, dbs: dbs) > 0, "the writes moved entries to the archive")
            var rows: [Database: [([UInt8], [UInt8])]] = [:]
            for db in [audit.archivedEntries, audit.archivedTree, audit.archivedByTenant] {
                try rec.forEach(in: db) { k, v in rows[db, default: []].append((Array(k), Array(v))); return .continue }
                try rec.removeAll(in: db)
            }
            for (k, v) in rows[audit.archivedEntries] ?? [] { try ks.put(v, forKey: k, in: audit.entries) }
            for (k, v) in rows[audit.archivedTree] ?? [] { try ks.put(v, forKey: k, in: audit.tree) }
            for (k, v) in rows[audit.archivedByTenant] ?? [] { try ks.put(v, forKey: k, in: audit.byTenant) }
            var numbering: [([UInt8], [UInt8])] = []
            try ks.forEach(in: audit.byTenant) { k, v in numbering.append((Array(k), Array(v))); return .continue }
            #expect(numbering.filter { $0.0.count == 4 }.count == 3, "acme, globex and globex-2 have their counts")
            try ks.removeAll(in: audit.byTenant)
            for (k, v) in numbering where k.count == 12 { try ks.put([], forKey: Array(k.prefix(4)) + v, in: audit.byTenant) }
            _ = try ks.delete(key: AuditLog.archivedKey, in: dbs.meta)
        }

        let progress = Locked<[String]>([])
        var c = tv.configuration
        c.progress = { line in progress.withLock { $0.append(line) } }
        let v = try Vault.open(dataDirectory: tv.dir.data, masterKeyFile: tv.dir.keyFile, configuration: c)
        let lines = progress.withLock { $0 }
        #expect(lines.contains { $0.contains("to the record store") }, "\(lines)")
        #expect(try await allEntries(v, tenant: acme) == acmeBefore)
        #expect(try await allEntries(v, tenant: globex2) == globexBefore)
        #expect(try await allEntries(v, tenant: nil) == chainBefore)
        let headsAfter = try await [v.auditTreeHead(tenant: acme), v.auditTreeHead(tenant: globex2), v.auditTreeHead(tenant: nil)]
        #expect(zip(headsBefore, headsAfter).allSatisfy { $0.size == $1.size && $0.root == $1.root })
        // Appended to: the new entry follows in the tenant's numbering and in its log.
        _ = try await v.write(try newRecord(subject, payloadText), tenant: globex2, actor: agent)
        let globexAfter = try await allEntries(v, tenant: globex2)
        #expect(Array(globexAfter.dropLast()) == globexBefore)
        #expect(globexAfter.last?.seq == UInt64(globexBefore.count + 1))
        let grown = try await v.auditTreeHead(tenant: globex2)
        let proof = try await v.auditConsistencyProof(tenant: globex2, from: headsBefore[1].size, to: grown.size)
        #expect(MerkleTree.verifyConsistency(old: headsBefore[1].size, new: grown.size, oldRoot: headsBefore[1].root,
                                             newRoot: grown.root, proof: proof))
        #expect(try await v.verifyAudit().isIntact)
        #expect(try await v.verifyAudit().entries == entriesBefore + 1)
        let stats = try await v.statistics()
        #expect(stats.auditEntries == entriesBefore + 1 && stats.auditArchived >= entriesBefore - tv.configuration.auditTail)
        #expect(stats.auditMovesFailed == 0)
        v.close()

        try withStoredVault(tv.dir.data) { ks, dbs, _, audit in
            var tail = 0
            try ks.forEach(in: audit.entries) { _, _ in tail += 1; return .continue }
            #expect(tail >= 1 && UInt64(tail) <= tv.configuration.auditTail + 1, "the keystore keeps the tail: \(tail) entries")
            #expect(try AuditLog.archived(in: ks, dbs: dbs) >= entriesBefore - tv.configuration.auditTail)
        }
    }

    /// A move to the archive interrupted between its two commits (the record store committed,
    /// the keystore not) leaves the tail's rows in both environments and the mark where it was:
    /// every view, the chain and the heads are unchanged, and the next move puts the same rows
    /// again.
    @Test func aMoveInterruptedBetweenItsCommitsChangesNothing() async throws {
        let tv = try TestVault()
        _ = try await tv.vault.createTenant(acme, actor: .system)
        _ = try await tv.vault.createTenant(globex, actor: .system)
        for i in 0..<60 { _ = try await tv.vault.write(try newRecord("s\(i)", "{}"), tenant: i % 2 == 0 ? acme : globex, actor: agent) }
        func views(_ v: Vault) async throws -> [[AuditEntry]] {
            [try await allEntries(v, tenant: acme), try await allEntries(v, tenant: globex), try await allEntries(v, tenant: nil)]
        }
        func heads(_ v: Vault) async throws -> [[UInt8]] {
            [try await v.auditTreeHead(tenant: acme).root, try await v.auditTreeHead(tenant: globex).root,
             try await v.auditTreeHead(tenant: nil).root]
        }
        let before = try await views(tv.vault)
        let headsBefore = try await heads(tv.vault)
        tv.vault.close()
        var copied = 0
        try withStoredVault(tv.dir.data) { ks, dbs, rec, audit in
            #expect(try AuditLog.archived(in: ks, dbs: dbs) > 0)
            for (tail, archive) in [(audit.entries, audit.archivedEntries), (audit.byTenant, audit.archivedByTenant),
                                    (audit.tree, audit.archivedTree)] {
                var rows: [([UInt8], [UInt8])] = []
                try ks.forEach(in: tail) { k, v in
                    if !(tail == audit.byTenant && k.count == 4) { rows.append((Array(k), Array(v))) }
                    return .continue
                }
                for (k, v) in rows { try rec.put(v, forKey: k, in: archive) }
                copied += rows.count
            }
        }
        #expect(copied > 0)
        let v = try tv.openAgain()
        defer { v.close() }
        #expect(try await views(v) == before)
        #expect(try await heads(v) == headsBefore)
        #expect(try await v.verifyAudit().isIntact)
        // The next moves go over the copies.
        for i in 0..<40 { _ = try await v.write(try newRecord("t\(i)", "{}"), tenant: acme, actor: agent) }
        let after = try await views(v)
        #expect(Array(after[0].prefix(before[0].count)) == before[0])
        #expect(after[1] == before[1])
        #expect(try await v.verifyAudit().isIntact)
        let grown = try await v.auditTreeHead(tenant: acme)
        let proof = try await v.auditConsistencyProof(tenant: acme, from: UInt64(before[0].count), to: grown.size)
        #expect(MerkleTree.verifyConsistency(old: UInt64(before[0].count), new: grown.size, oldRoot: headsBefore[0],
                                             newRoot: grown.root, proof: proof))
    }

    /// The renumbering works in chunks, in place, one tenant's prefix only.
    @Test func renumberingALargeLegacyIndexTouchesOnlyItsTenant() throws {
        let dir = TemporaryDirectory()
        let env = try Environment(path: dir.path, options: .init(mapSize: 64 << 20), databases: Layout.keystoreDatabases)
        defer { env.close() }
        let dbs = KeystoreDatabases(env)
        let n: UInt64 = 10_000
        try env.write { txn in
            for i in 0..<n { try txn.put([], forKey: Layout.auditByTenantKey(7, 3 * i + 2), in: dbs.auditByTenant) }
            try txn.put([], forKey: Layout.auditByTenantKey(6, 5), in: dbs.auditByTenant)
            try txn.put([], forKey: Layout.auditByTenantKey(8, 1), in: dbs.auditByTenant)
            #expect(try AuditArchive.legacyCount(7, in: txn, dbs: dbs) == n)
            #expect(try AuditArchive.legacyCount(7, in: txn, dbs: dbs) == n)  // once only
        }
        try env.read { txn in
            var rows: [(UInt32, UInt64, [UInt8])] = []
            try txn.forEach(in: dbs.auditByTenant) { k, v in
                rows.append((readBE(k, at: 0), readBE(k, at: 4), [UInt8](v)))
                return .continue
            }
            #expect(rows.count == Int(n) + 2)
            #expect(rows.first! == (6, 5, []))
            #expect(rows.last! == (8, 1, []))
            for (i, row) in rows.dropFirst().dropLast().enumerated() {
                guard row.0 == 7, row.1 == UInt64(i) + 1, row.2 == .be(3 * UInt64(i) + 2) else {
                    Issue.record("row \(i): \(row)")
                    return
                }
            }
        }
    }
}
