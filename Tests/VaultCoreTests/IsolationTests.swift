import Testing
import Sodium
@testable import VaultCore

/// The error `body` throws, as a `VaultError` (nil when it succeeds).
private func vaultError(_ body: () async throws -> Void) async -> VaultError? {
    do {
        try await body()
        return nil
    } catch let e as VaultError {
        return e
    } catch {
        return .io("unexpected error type: \(error)")
    }
}

/// The subject tag a tenant's audit log records for its latest `subject.list` entry.
private func lastListedTag(_ v: Vault, tenant: TenantID) async throws -> String? {
    let entries = try await v.auditEntries(tenant: tenant, after: 0, limit: 1000)
    guard let target = entries.last(where: { $0.action == "subject.list" })?.target else { return nil }
    return target.hasPrefix("subject:") ? String(target.dropFirst("subject:".count)) : nil
}

@Suite struct IsolationTests {
    let a = tenant("tenant-a")
    let b = tenant("tenant-b")

    /// Two tenants; A holds three records of `subject`, B one of the same subject string.
    private func twoTenants(subject: String) async throws -> (TestVault, [(RecordID, String)], RecordID) {
        let tv = try TestVault()
        _ = try await tv.vault.createTenant(a, actor: .system)
        _ = try await tv.vault.createTenant(b, actor: .system)
        var aRecords: [(RecordID, String)] = []
        for i in 0..<3 {
            let content = #"{"owner":"a","n":\#(i)}"#
            aRecords.append((try await tv.vault.write(try newRecord(subject, content), tenant: a, actor: agent).id, content))
        }
        let bRecord = try await tv.vault.write(try newRecord(subject, #"{"owner":"b"}"#), tenant: b, actor: agent).id
        return (tv, aRecords, bRecord)
    }

    /// Every record-addressed operation B can attempt, each one's error in order.
    private func recordProbes(_ v: Vault, _ id: RecordID, as t: TenantID) async -> [VaultError?] {
        [
            await vaultError { _ = try await v.read(id, tenant: t, actor: agent) },
            await vaultError { _ = try await v.correct(id, data: payload(#"{"owner":"b-overwrote"}"#), tenant: t, actor: agent) },
            await vaultError { try await v.delete(id, tenant: t, actor: admin) },
            await vaultError { _ = try await v.addHold(.record(id), reason: "probe", reference: "probe", tenant: t, actor: admin) },
        ]
    }

    private func expectIntact(_ v: Vault, _ records: [(RecordID, String)], subject: String) async throws {
        for (id, content) in records {
            let r = try await v.read(id, tenant: a, actor: agent)
            #expect(r.data.text == content)
            #expect(r.subject.text == subject)
            #expect(r.version == 1)
        }
    }

    @Test func otherTenantGetsNotFoundForExactRecordIDsLikeForUnknownOnes() async throws {
        let subject = "cust-isolation-1"
        let (tv, aRecords, _) = try await twoTenants(subject: subject)
        defer { tv.vault.close() }
        let v = tv.vault

        let unknownID = unknownRecordID(at: tv.clock.now)
        let unknown = await recordProbes(v, unknownID, as: b)
        #expect(unknown == [VaultError?](repeating: .notFound, count: unknown.count))
        for (id, _) in aRecords {
            let probed = await recordProbes(v, id, as: b)
            #expect(probed == unknown, "B's attempts on A's record \(id) must fail exactly like an unknown id")
        }
        // ... and leave the same trace in B's audit log as attempts on an unknown id.
        let bLog = try await v.auditEntries(tenant: b, after: 0, limit: 1000)
        func trace(_ id: RecordID) -> [String] {
            bLog.filter { $0.target == "record:\(id)" }.map { "\($0.action) \($0.outcome) \($0.count)" }
        }
        #expect(!trace(unknownID).isEmpty)
        for (id, _) in aRecords { #expect(trace(id) == trace(unknownID)) }
        #expect(try await v.auditEntries(tenant: a, after: 0, limit: 1000).allSatisfy { $0.outcome == "ok" })
        // Nothing B tried changed A's records, and none of them is under a hold.
        try await expectIntact(v, aRecords, subject: subject)
        #expect(try await v.holds(tenant: a).isEmpty)
        #expect(try await v.holds(tenant: b).isEmpty)
        // Still intact once durable state is reloaded.
        let reopened = try tv.reopen()
        defer { reopened.close() }
        try await expectIntact(reopened, aRecords, subject: subject)
        #expect(try await reopened.verifyAudit().isIntact)
    }

    @Test func sameSubjectStringIsADifferentSubjectPerTenant() async throws {
        let subject = "cust-isolation-2"
        let (tv, aRecords, bRecord) = try await twoTenants(subject: subject)
        defer { tv.vault.close() }
        let v = tv.vault
        let s = try Subject(subject)

        // Listing the subject in B shows only B's record.
        let listedInB = try await v.records(of: s, tenant: b, actor: agent)
        #expect(listedInB.map(\.id) == [bRecord])
        let listedInA = try await v.records(of: s, tenant: a, actor: agent)
        #expect(Set(listedInA.map(\.id)) == Set(aRecords.map(\.0)))
        let tagA = try #require(try await lastListedTag(v, tenant: a))
        let tagB = try #require(try await lastListedTag(v, tenant: b))
        #expect(tagA != tagB)

        // A hold B places on that subject string is B's alone.
        _ = try await v.addHold(.subject(s), reason: "b's litigation", reference: "B-1", tenant: b, actor: admin)

        // B's hold blocks B's own erasure of the subject, and only B's.
        let blocked = await vaultError { _ = try await v.erase(subject: s, reference: nil, tenant: b, actor: admin) }
        guard case .legalHold = blocked else {
            Issue.record("B's erasure should be blocked by B's own hold, got \(String(describing: blocked))")
            return
        }
        try await expectIntact(v, aRecords, subject: subject)
        #expect(try await v.records(of: s, tenant: a, actor: agent).count == aRecords.count)

        // A erases its subject despite B's hold on the same string: exactly A's records, under A's tag.
        let receiptA = try await v.erase(subject: s, reference: nil, tenant: a, actor: admin)
        #expect(receiptA.erased == aRecords.count)
        #expect(receiptA.subjectTag == tagA)
        #expect(receiptA.tenant == a.slug)
        // B's record survived A's erasure.
        let stillB = try await v.read(bRecord, tenant: b, actor: agent)
        #expect(stillB.data.text == #"{"owner":"b"}"#)
    }

    @Test func erasingInOtherTenantErasesNothingOfTheFirst() async throws {
        let subject = "cust-isolation-3"
        let (tv, aRecords, bRecord) = try await twoTenants(subject: subject)
        defer { tv.vault.close() }
        let v = tv.vault
        let s = try Subject(subject)
        _ = try await v.records(of: s, tenant: a, actor: agent)
        let tagA = try #require(try await lastListedTag(v, tenant: a))

        let receiptB = try await v.erase(subject: s, reference: nil, tenant: b, actor: admin)
        #expect(receiptB.erased == 1)
        #expect(receiptB.subjectTag != tagA)
        await #expect(throws: VaultError.notFound) { try await v.read(bRecord, tenant: b, actor: agent) }
        try await expectIntact(v, aRecords, subject: subject)

        // Erasing a subject A alone knows, from B: nothing (0 erased), A keeps it.
        let onlyA = try await v.write(try newRecord("only-in-a", #"{"x":1}"#), tenant: a, actor: agent)
        let none = try await v.erase(subject: try Subject("only-in-a"), reference: nil, tenant: b, actor: admin)
        #expect(none.erased == 0)
        #expect(try await v.read(onlyA.id, tenant: a, actor: agent).data.text == #"{"x":1}"#)
    }

    @Test func otherTenantCannotSeeOrRemoveHoldsNorSeeAuditEntries() async throws {
        let subject = "cust-isolation-4"
        let (tv, aRecords, bRecord) = try await twoTenants(subject: subject)
        defer { tv.vault.close() }
        let v = tv.vault
        let hold = try await v.addHold(.record(aRecords[0].0), reason: "a's case", reference: "A-77", tenant: a, actor: admin)

        // B cannot see A's hold, nor remove it: same answer as for a hold id that never existed.
        #expect(try await v.holds(tenant: b).isEmpty)
        let removeA = await vaultError { try await v.removeHold(hold.id, tenant: b, actor: admin) }
        let removeUnknown = await vaultError {
            try await v.removeHold(unknownRecordID(at: tv.clock.now).description, tenant: b, actor: admin)
        }
        #expect(removeA == .notFound)
        #expect(removeA == removeUnknown)
        #expect(try await v.holds(tenant: a) == [hold])
        // The hold still works in A.
        await #expect(throws: VaultError.legalHold("record \(aRecords[0].0) is under a legal hold")) {
            try await v.delete(aRecords[0].0, tenant: a, actor: admin)
        }

        // Nor A's extension contracts.
        let extA = try await v.addRetentionExtension(purpose: .legal, reference: "A-contract", retentionSeconds: 200 * 86_400,
                                                     categories: [.personal], until: tv.clock.now + 1_000_000,
                                                     tenant: a, actor: admin)
        #expect(try await v.retention(tenant: b).extensions.isEmpty)
        await #expect(throws: VaultError.notFound) { try await v.endRetentionExtension(extA.id, tenant: b, actor: admin) }
        #expect(try await v.retention(tenant: a).extensions == [extA])
        // A's extension lets A, not B, keep records longer.
        let longA = try await v.write(try newRecord("x", "{}", retention: 200 * 86_400), tenant: a, actor: agent)
        #expect(longA.expiresAt - longA.createdAt == 200 * 86_400 * 1000)
        let longB = await vaultError { _ = try await v.write(try newRecord("x", "{}", retention: 200 * 86_400), tenant: b, actor: agent) }
        #expect({ if case .refused = longB { true } else { false } }())

        // B probes A's ids (each audited in B's log as not_found).
        for (id, _) in aRecords { _ = await vaultError { _ = try await v.read(id, tenant: b, actor: agent) } }
        _ = try await v.read(bRecord, tenant: b, actor: agent)

        let aIDs = Set(aRecords.map { "record:\($0.0)" })
        let bView = try await v.auditEntries(tenant: b, after: 0, limit: 1000)
        #expect(!bView.isEmpty)
        for e in bView {
            #expect(e.tenant == b.slug)
            if let target = e.target, aIDs.contains(target) {
                #expect(e.outcome == "not_found", "B's log may only show its own failed attempts on A's ids")
            }
            #expect(e.target != "hold:\(hold.id)")
        }
        // A's own log holds A's writes; none of B's.
        let aView = try await v.auditEntries(tenant: a, after: 0, limit: 1000)
        #expect(aView.allSatisfy { $0.tenant == a.slug })
        let aWrites = Set(aView.filter { $0.action == "record.write" }.compactMap(\.target))
        #expect(aWrites == Set((aRecords.map(\.0) + [longA.id]).map { "record:\($0)" }))
        #expect(!aView.contains { $0.target == "record:\(bRecord)" })
        // B's view and A's view are disjoint slices of one chain (each numbered in its own
        // sequence, so compared by the entries' chain hashes).
        #expect(Set(aView.map(\.hash)).isDisjoint(with: Set(bView.map(\.hash))))
        try await expectIntact(v, aRecords, subject: subject)
    }

    @Test func offboardedTenantAnswersTenantNotFoundEverywhereAndItsSlugStaysReserved() async throws {
        let subject = "cust-offboard"
        let (tv, aRecords, bRecord) = try await twoTenants(subject: subject)
        defer { tv.vault.close() }
        let v = tv.vault
        let s = try Subject(subject)
        let bHold = try await v.addHold(.subject(s), reason: "r", reference: "ref", tenant: b, actor: admin)
        let bExt = try await v.addRetentionExtension(purpose: .legal, reference: "contract-b", retentionSeconds: 200 * 86_400,
                                                     categories: [.personal], until: tv.clock.now + 1_000_000,
                                                     tenant: b, actor: admin)

        try await v.offboardTenant(b, actor: .system)

        let gone = VaultError.tenantNotFound(b.slug)
        let attempts: [VaultError?] = [
            await vaultError { _ = try await v.write(try newRecord(subject, "{}"), tenant: b, actor: agent) },
            await vaultError { _ = try await v.read(bRecord, tenant: b, actor: agent) },
            await vaultError { _ = try await v.correct(bRecord, data: payload("{}"), tenant: b, actor: agent) },
            await vaultError { try await v.delete(bRecord, tenant: b, actor: admin) },
            await vaultError { _ = try await v.records(of: s, tenant: b, actor: agent) },
            await vaultError { _ = try await v.records(of: s, tenant: b, actor: admin, export: true) },
            await vaultError { _ = try await v.erase(subject: s, reference: nil, tenant: b, actor: admin) },
            await vaultError { _ = try await v.addHold(.subject(s), reason: "", reference: "", tenant: b, actor: admin) },
            await vaultError { _ = try await v.holds(tenant: b) },
            await vaultError { try await v.removeHold(bHold.id, tenant: b, actor: admin) },
            await vaultError { _ = try await v.retention(tenant: b) },
            await vaultError { _ = try await v.setRetentionPolicy(.standard, tenant: b, actor: admin) },
            await vaultError {
                _ = try await v.addRetentionExtension(purpose: .quality, reference: "x", retentionSeconds: 1, categories: [.personal],
                                                      until: tv.clock.now + 1_000_000, tenant: b, actor: admin)
            },
            await vaultError { try await v.endRetentionExtension(bExt.id, tenant: b, actor: admin) },
            await vaultError { _ = try await v.auditEntries(tenant: b, after: 0, limit: 10) },
            await vaultError { try await v.offboardTenant(b, actor: .system) },
        ]
        for (i, e) in attempts.enumerated() {
            #expect(e == gone, "operation #\(i) on an offboarded tenant")
        }
        await #expect(throws: VaultError.tenantExists(b.slug)) { try await v.createTenant(b, actor: .system) }
        let listed = try await v.listTenants()
        #expect(listed.first { $0.id == b.slug }?.offboarded == true)
        #expect(listed.first { $0.id == a.slug }?.offboarded == false)

        // A is untouched, also after the sweep purges B's entries and across a reopen.
        try await expectIntact(v, aRecords, subject: subject)
        _ = try await v.sweep()
        let reopened = try tv.reopen()
        try await expectIntact(reopened, aRecords, subject: subject)
        await #expect(throws: VaultError.tenantExists(b.slug)) { try await reopened.createTenant(b, actor: .system) }
        await #expect(throws: gone) { _ = try await reopened.read(bRecord, tenant: b, actor: agent) }
        #expect(try await reopened.verifyAudit().isIntact)
        reopened.close()

        // The sweep removed every ciphertext of B, none of A.
        let bNumber = try storedTenantNumber(b.slug, dataDirectory: tv.dir.data)
        let aNumber = try storedTenantNumber(a.slug, dataDirectory: tv.dir.data)
        let keys = try storedCiphertextKeys(dataDirectory: tv.dir.data)
        #expect(!keys.contains { Array($0.prefix(4)) == Layout.tenantKey(bNumber) })
        #expect(keys.filter { Array($0.prefix(4)) == Layout.tenantKey(aNumber) }.count == aRecords.count)
    }

    @Test(arguments: [
        "", "Acme", "ACME", "acme_corp", "acme corp", "acme.corp", "acme/corp", "../acme", "acme\n", "acme\u{0}x",
        "ä", "acmé", "\u{FF41}cme", String(repeating: "a", count: 64), String(repeating: "9", count: 100),
    ])
    func invalidTenantSlugsAreRefused(_ slug: String) {
        #expect(throws: VaultError.invalidArgument("tenant id must match [a-z0-9-]{1,63}")) { try TenantID(slug) }
    }

    @Test(arguments: ["a", "0", "-", "acme", "acme-42", "a-b-c-1-2-3", String(repeating: "z", count: 63)])
    func validTenantSlugsAreAccepted(_ slug: String) throws {
        #expect(try TenantID(slug).slug == slug)
    }
}
