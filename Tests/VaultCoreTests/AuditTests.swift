import Testing
import Sodium
import LMDB
@testable import VaultCore

/// Every entry of a view, page by page.
private func allEntries(_ v: Vault, tenant: TenantID?) async throws -> [AuditEntry] {
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
        // A tenant's view is exactly the chain's entries of that tenant.
        #expect(acmeView.map(\.seq) == entries.filter { $0.tenant == acme.slug }.map(\.seq))
        #expect(entries.allSatisfy { $0.tenant == nil || $0.tenant == acme.slug || $0.tenant == globex.slug })
        // A tenant's entries are the chain's own entries (same hash), with targets.
        let bySeq = Dictionary(uniqueKeysWithValues: entries.map { ($0.seq, $0) })
        for e in acmeView {
            #expect(bySeq[e.seq]?.hash == e.hash)
            #expect(bySeq[e.seq]?.action == e.action)
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
}
