import Testing
import Sodium
import LMDB
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

/// Edits the keystore's files directly (no vault may be open on the directory).
private func withKeystore<R>(_ tv: TestVault, _ body: (borrowing Transaction, Environment) throws -> R) throws -> R {
    let env = try Environment(path: tv.dir.data + "/keystore", databases: Layout.keystoreDatabases)
    defer { env.close() }
    return try env.write { txn in try body(txn, env) }
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

    @Test(arguments: flipPositions)
    func flippingOneByteOfEntryFiveIsNamed(_ where_: String) async throws {
        let tv = try TestVault()
        _ = try await exercise(tv)
        let before = try await tv.vault.verifyAudit()
        #expect(before.isIntact)
        #expect(before.entries > 6)
        tv.vault.close()

        let target: UInt64 = 5
        try withKeystore(tv) { txn, env in
            let db = env.database(Layout.audit)
            var value = try #require(try txn.value(forKey: Layout.auditKey(target), in: db))
            let index: Int = switch where_ {
            case "time": 1 + 8 + 7            // low byte of the timestamp
            case "middle": value.count / 2
            case "prev": value.count - 64 + 3
            default: value.count - 1          // the stored hash
            }
            value[index] ^= 0x01
            try txn.put(value, forKey: Layout.auditKey(target), in: db)
        }

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
        try withKeystore(tv) { txn, env in
            let deleted = try txn.delete(key: Layout.auditKey(newest), in: env.database(Layout.audit))
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
        try withKeystore(tv) { txn, env in
            let deleted = try txn.delete(key: Layout.auditKey(victim), in: env.database(Layout.audit))
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
        let stored = try withKeystore(tv) { txn, env in
            try #require(try txn.value(forKey: Layout.auditKey(g), in: env.database(Layout.audit)))
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

    /// A vault written before tenant-local numbering keyed the tenant index by the chain's
    /// seq with empty values: each tenant's index is renumbered the first time it is read
    /// (acme) or appended to (globex); entries of format 1 (no nonce) still verify.
    @Test func indexWrittenBeforeTenantNumberingIsRenumbered() async throws {
        let tv = try TestVault()
        _ = try await exercise(tv)
        let v0 = tv.vault
        let globex2 = tenant("globex-2")
        _ = try await v0.createTenant(globex2, actor: .system)
        for i in 0..<6 {
            _ = try await v0.write(try newRecord(subject, payloadText), tenant: i % 2 == 0 ? acme : globex2, actor: agent)
        }
        let acmeBefore = try await allEntries(v0, tenant: acme)
        let globexBefore = try await allEntries(v0, tenant: globex2)
        let entriesBefore = try await v0.verifyAudit().entries
        v0.close()

        // Back to the old layout: t|chain seq → "".
        try withKeystore(tv) { txn, env in
            let db = env.database(Layout.auditByTenant)
            var rows: [(key: [UInt8], value: [UInt8])] = []
            try txn.forEach(in: db) { k, v in rows.append(([UInt8](k), [UInt8](v))); return .continue }
            #expect(rows.allSatisfy { $0.key.count == 12 && $0.value.count == 8 })
            for r in rows { _ = try txn.delete(key: r.key, in: db) }
            for r in rows { try txn.put([], forKey: Array(r.key.prefix(4)) + r.value, in: db) }
        }

        let v = try tv.openAgain()
        defer { v.close() }
        // Read first: renumbered to the same view.
        #expect(try await allEntries(v, tenant: acme) == acmeBefore)
        // Appended to first: renumbered, then the new entry follows.
        _ = try await v.write(try newRecord(subject, payloadText), tenant: globex2, actor: agent)
        let globexAfter = try await allEntries(v, tenant: globex2)
        #expect(Array(globexAfter.dropLast()) == globexBefore)
        #expect(globexAfter.last?.seq == UInt64(globexBefore.count + 1))
        #expect(try await v.verifyAudit().isIntact)
        #expect(try await v.verifyAudit().entries == entriesBefore + 1)
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
            #expect(try AuditLog.lastTenantSeq(7, in: txn, dbs: dbs) == n)
            #expect(try AuditLog.lastTenantSeq(7, in: txn, dbs: dbs) == n)  // once only
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
