import Testing
import Sodium
@testable import VaultCore

@Suite struct HoldTests {
    let acme = tenant("acme")

    private func isLegalHold(_ error: VaultError?) -> Bool {
        if case .legalHold = error { true } else { false }
    }

    /// A vault with `count` records of `subject` (and one record of another subject).
    private func setUp(subject: String, count: Int) async throws -> (TestVault, [RecordID], RecordID) {
        let tv = try TestVault()
        _ = try await tv.vault.createTenant(acme, actor: .system)
        var ids: [RecordID] = []
        for i in 0..<count {
            ids.append(try await tv.vault.write(try newRecord(subject, #"{"n":\#(i)}"#), tenant: acme, actor: agent).id)
        }
        let other = try await tv.vault.write(try newRecord("someone-else", #"{"other":1}"#), tenant: acme, actor: agent).id
        return (tv, ids, other)
    }

    private func auditEntries(_ v: Vault, action: String) async throws -> [AuditEntry] {
        try await v.auditEntries(tenant: acme, after: 0, limit: 1000).filter { $0.action == action }
    }

    @Test func subjectHoldBlocksErasureAndTheRefusalIsAudited() async throws {
        let subject = "held-person-1"
        let (tv, ids, _) = try await setUp(subject: subject, count: 4)
        defer { tv.vault.close() }
        let v = tv.vault
        let s = try Subject(subject)
        let hold = try await v.addHold(.subject(s), reason: "pending lawsuit", reference: "LAW-2025-001", tenant: acme, actor: admin)

        let error = await #expect(throws: VaultError.self) { try await v.erase(subject: s, reference: "req-1", tenant: acme, actor: admin) }
        #expect(isLegalHold(error))
        // Nothing was erased.
        for (i, id) in ids.enumerated() {
            #expect(try await v.read(id, tenant: acme, actor: agent).data.text == #"{"n":\#(i)}"#)
        }
        #expect(try await v.records(of: s, tenant: acme, actor: agent).count == ids.count)

        // The refusal is in the chain, naming the subject by the tag the hold shows.
        guard case .subjectTag(let tag) = hold.target else {
            Issue.record("a subject hold must target a subject tag, got \(hold.target)")
            return
        }
        let refusals = try await auditEntries(v, action: "subject.erase")
        #expect(refusals.count == 1)
        #expect(refusals.first?.outcome == "refused:legal_hold")
        #expect(refusals.first?.target == "subject:\(tag)")
        #expect(refusals.first?.count == 0)
        #expect(try await v.verifyAudit().isIntact)

        // Lifting the hold lets the erasure proceed, under the same tag.
        try await v.removeHold(hold.id, tenant: acme, actor: admin)
        #expect(try await v.holds(tenant: acme).isEmpty)
        let receipt = try await v.erase(subject: s, reference: "req-1", tenant: acme, actor: admin)
        #expect(receipt.erased == ids.count)
        #expect(receipt.subjectTag == tag)
        for id in ids {
            await #expect(throws: VaultError.notFound) { try await v.read(id, tenant: acme, actor: agent) }
        }
    }

    @Test func holdOnOneRecordBlocksErasureOfItsSubject() async throws {
        let subject = "held-person-2"
        let (tv, ids, other) = try await setUp(subject: subject, count: 5)
        defer { tv.vault.close() }
        let v = tv.vault
        let s = try Subject(subject)
        let hold = try await v.addHold(.record(ids[3]), reason: "evidence", reference: "EV-9", tenant: acme, actor: admin)
        #expect(hold.target == .record(ids[3]))

        let error = await #expect(throws: VaultError.self) { try await v.erase(subject: s, reference: nil, tenant: acme, actor: admin) }
        #expect(isLegalHold(error))
        #expect(try await v.records(of: s, tenant: acme, actor: agent).count == ids.count)
        #expect(try await auditEntries(v, action: "subject.erase").map(\.outcome) == ["refused:legal_hold"])
        // Other subjects erase normally.
        #expect(try await v.erase(subject: try Subject("someone-else"), reference: nil, tenant: acme, actor: admin).erased == 1)
        await #expect(throws: VaultError.notFound) { try await v.read(other, tenant: acme, actor: agent) }

        try await v.removeHold(hold.id, tenant: acme, actor: admin)
        #expect(try await v.erase(subject: s, reference: nil, tenant: acme, actor: admin).erased == ids.count)
    }

    @Test func recordHoldBlocksDeleteAndCorrectOfThatRecordOnly() async throws {
        let (tv, ids, _) = try await setUp(subject: "held-person-3", count: 2)
        defer { tv.vault.close() }
        let v = tv.vault
        let hold = try await v.addHold(.record(ids[0]), reason: "r", reference: "ref", tenant: acme, actor: admin)

        let del = await #expect(throws: VaultError.self) { try await v.delete(ids[0], tenant: acme, actor: admin) }
        #expect(isLegalHold(del))
        let cor = await #expect(throws: VaultError.self) {
            try await v.correct(ids[0], data: payload(#"{"changed":true}"#), tenant: acme, actor: agent)
        }
        #expect(isLegalHold(cor))
        let kept = try await v.read(ids[0], tenant: acme, actor: agent)
        #expect(kept.data.text == #"{"n":0}"#)
        #expect(kept.version == 1)
        #expect(try await auditEntries(v, action: "record.delete").map(\.outcome) == ["refused:legal_hold"])
        #expect(try await auditEntries(v, action: "record.correct").map(\.outcome) == ["refused:legal_hold"])
        #expect(try await auditEntries(v, action: "record.delete").first?.target == "record:\(ids[0])")

        // The unheld record of the same subject can be corrected and deleted.
        #expect(try await v.correct(ids[1], data: payload("{}"), tenant: acme, actor: agent).version == 2)
        try await v.delete(ids[1], tenant: acme, actor: admin)

        try await v.removeHold(hold.id, tenant: acme, actor: admin)
        #expect(try await v.correct(ids[0], data: payload(#"{"changed":true}"#), tenant: acme, actor: agent).version == 2)
        try await v.delete(ids[0], tenant: acme, actor: admin)
        await #expect(throws: VaultError.notFound) { try await v.read(ids[0], tenant: acme, actor: agent) }
    }

    @Test func subjectHoldBlocksDeleteAndCorrectOfItsRecordsAndCoversLaterOnes() async throws {
        let subject = "held-person-4"
        let (tv, ids, other) = try await setUp(subject: subject, count: 1)
        defer { tv.vault.close() }
        let v = tv.vault
        _ = try await v.addHold(.subject(try Subject(subject)), reason: "r", reference: "ref", tenant: acme, actor: admin)
        let later = try await v.write(try newRecord(subject, #"{"later":1}"#), tenant: acme, actor: agent)
        for id in [ids[0], later.id] {
            #expect(isLegalHold(await #expect(throws: VaultError.self) { try await v.delete(id, tenant: acme, actor: admin) }))
            #expect(isLegalHold(await #expect(throws: VaultError.self) {
                try await v.correct(id, data: payload("{}"), tenant: acme, actor: agent)
            }))
        }
        // Another subject's record is unaffected.
        try await v.delete(other, tenant: acme, actor: admin)
    }

    @Test func holdsListDecryptedTextsAndNameSubjectsOnlyByTag() async throws {
        let subject = "+49 170 5550123 Jane Roe"
        let (tv, ids, _) = try await setUp(subject: subject, count: 1)
        defer { tv.vault.close() }
        let v = tv.vault
        let reason1 = "Customer dispute, court order pending"
        let reference1 = "COURT-2025-17"
        let h1 = try await v.addHold(.subject(try Subject(subject)), reason: reason1, reference: reference1, tenant: acme, actor: admin)
        #expect(h1.createdAt == tv.clock.now)
        tv.clock.advance(seconds: 1)
        let h2 = try await v.addHold(.record(ids[0]), reason: "regulator inquiry", reference: "", tenant: acme, actor: admin)

        let listed = try await v.holds(tenant: acme)
        #expect(Set(listed.map(\.id)) == Set([h1.id, h2.id]))
        let subjectHold = try #require(listed.first { $0.id == h1.id })
        #expect(subjectHold == h1)
        #expect(subjectHold.reason == reason1)
        #expect(subjectHold.reference == reference1)
        let recordHold = try #require(listed.first { $0.id == h2.id })
        #expect(recordHold == h2)
        #expect(recordHold.target == .record(ids[0]))
        #expect(recordHold.reason == "regulator inquiry")
        #expect(recordHold.reference == "")

        guard case .subjectTag(let tag) = subjectHold.target else {
            Issue.record("expected a subject tag target")
            return
        }
        #expect(tag.count == 32)
        #expect(tag.allSatisfy { $0.isHexDigit })
        // The subject string appears in no field of any hold, nor in its description.
        for h in listed {
            let fields = [h.id, "\(h.target)", h.reason, h.reference, "\(h)", String(reflecting: h)]
            for f in fields {
                #expect(!f.contains(subject))
                #expect(!f.contains("5550123"))
                #expect(!f.contains("Jane"))
            }
        }
        // Listing the subject's records names the same tag in the audit log.
        _ = try await v.records(of: try Subject(subject), tenant: acme, actor: admin)
        let list = try #require(try await v.auditEntries(tenant: acme, after: 0, limit: 1000).last { $0.action == "subject.list" })
        #expect(list.target == "subject:\(tag)")

        // Holds survive a reopen.
        let reopened = try tv.reopen()
        defer { reopened.close() }
        #expect(Set(try await reopened.holds(tenant: acme).map(\.id)) == Set([h1.id, h2.id]))
    }

    @Test func twoHoldsOnOneSubjectBothHaveToBeRemoved() async throws {
        let subject = "held-twice"
        let (tv, ids, _) = try await setUp(subject: subject, count: 2)
        defer { tv.vault.close() }
        let v = tv.vault
        let s = try Subject(subject)
        let first = try await v.addHold(.subject(s), reason: "a", reference: "A", tenant: acme, actor: admin)
        let second = try await v.addHold(.subject(s), reason: "b", reference: "B", tenant: acme, actor: admin)
        #expect(first.target == second.target)
        try await v.removeHold(first.id, tenant: acme, actor: admin)
        #expect(isLegalHold(await #expect(throws: VaultError.self) { try await v.erase(subject: s, reference: nil, tenant: acme, actor: admin) }))
        #expect(try await v.holds(tenant: acme).map(\.id) == [second.id])
        try await v.removeHold(second.id, tenant: acme, actor: admin)
        #expect(try await v.erase(subject: s, reference: nil, tenant: acme, actor: admin).erased == ids.count)
    }

    @Test func removingAnUnknownHoldIsNotFound() async throws {
        let (tv, ids, _) = try await setUp(subject: "p", count: 1)
        defer { tv.vault.close() }
        let v = tv.vault
        await #expect(throws: VaultError.notFound) {
            try await v.removeHold(unknownRecordID(at: tv.clock.now).description, tenant: acme, actor: admin)
        }
        for malformed in ["", "not-a-hold", "ZZZZZZZZZZZZZZZZZZZZZZZZZZ", String(repeating: "0", count: 27)] {
            await #expect(throws: VaultError.notFound) { try await v.removeHold(malformed, tenant: acme, actor: admin) }
        }
        // A record id is not a hold id.
        await #expect(throws: VaultError.notFound) { try await v.removeHold(ids[0].description, tenant: acme, actor: admin) }
        // Removing twice: the second time it is unknown.
        let hold = try await v.addHold(.record(ids[0]), reason: "r", reference: "x", tenant: acme, actor: admin)
        try await v.removeHold(hold.id, tenant: acme, actor: admin)
        await #expect(throws: VaultError.notFound) { try await v.removeHold(hold.id, tenant: acme, actor: admin) }
        // A hold on an unknown record is refused as unknown too.
        await #expect(throws: VaultError.notFound) {
            try await v.addHold(.record(unknownRecordID(at: tv.clock.now)), reason: "r", reference: "x", tenant: acme, actor: admin)
        }
        #expect(try await v.holds(tenant: acme).isEmpty)
    }

    @Test func holdTextLimitsAreEnforced() async throws {
        let (tv, ids, _) = try await setUp(subject: "p", count: 1)
        defer { tv.vault.close() }
        let v = tv.vault
        for (reason, reference) in [(String(repeating: "r", count: 1001), "x"), ("r", String(repeating: "x", count: 201))] {
            let e = await #expect(throws: VaultError.self) {
                try await v.addHold(.record(ids[0]), reason: reason, reference: reference, tenant: acme, actor: admin)
            }
            #expect({ if case .invalidArgument = e { true } else { false } }())
        }
        let maximal = try await v.addHold(.record(ids[0]), reason: String(repeating: "r", count: 1000),
                                          reference: String(repeating: "x", count: 200), tenant: acme, actor: admin)
        #expect(try await v.holds(tenant: acme) == [maximal])
    }

    /// Holds.swift seals a hold's reason *and reference* ("may name people"), but `addHold`
    /// also writes the reference into the audit entry (`reference:`), which the keystore
    /// stores in clear: sealing it in the hold row then protects nothing.
    @Test func holdReasonAndReferenceAreNotStoredInClear() async throws {
        let (tv, ids, _) = try await setUp(subject: "p", count: 1)
        let reason = "reason-naming-Maxime-Lefebvre-7Q2"
        let reference = "reference-naming-Maxime-Lefebvre-9K4"
        _ = try await tv.vault.addHold(.record(ids[0]), reason: reason, reference: reference, tenant: acme, actor: admin)
        tv.vault.close()
        for (path, bytes) in try allFiles(under: tv.dir.data) {
            let reasonFound = contains(bytes, Array(reason.utf8))
            let referenceFound = contains(bytes, Array(reference.utf8))
            #expect(!reasonFound, "hold reason in clear in \(path)")
            #expect(!referenceFound, "hold reference in clear in \(path)")
        }
    }
}
