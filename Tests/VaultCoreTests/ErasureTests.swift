import Testing
import Sodium
@testable import VaultCore

@Suite struct ErasureTests {
    let acme = tenant("acme")

    /// Writes `count` records of `subject` concurrently; returns id → content.
    private func writeConcurrently(_ v: Vault, subject: String, count: Int, tenant t: TenantID,
                                   retention: @escaping @Sendable (Int) -> Int64? = { _ in nil }) async throws -> [RecordID: String] {
        try await withThrowingTaskGroup(of: (RecordID, String).self) { group in
            for i in 0..<count {
                group.addTask {
                    let content = #"{"subject_record":\#(i),"note":"call \#(i)"}"#
                    let r = try await v.write(try newRecord(subject, content, retention: retention(i)), tenant: t, actor: agent)
                    return (r.id, content)
                }
            }
            var out: [RecordID: String] = [:]
            for try await (id, content) in group { out[id] = content }
            return out
        }
    }

    /// Reads every id concurrently; returns the error of each (nil when readable).
    private func readAll(_ v: Vault, _ ids: some Sequence<RecordID>, tenant t: TenantID) async -> [RecordID: VaultError?] {
        await withTaskGroup(of: (RecordID, VaultError?).self) { group in
            for id in ids {
                group.addTask {
                    do {
                        _ = try await v.read(id, tenant: t, actor: agent)
                        return (id, nil)
                    } catch {
                        return (id, VaultError.mapping(error))
                    }
                }
            }
            var out: [RecordID: VaultError?] = [:]
            for await (id, e) in group { out[id] = e }
            return out
        }
    }

    @Test func erasingASubjectWithManyRecordsLeavesOthersIntact() async throws {
        let tv = try TestVault()
        let v = tv.vault
        _ = try await v.createTenant(acme, actor: .system)
        let subject = "subject-to-forget"
        let n = 200
        // Spread over several expiry buckets (1 to 92 days).
        let erasedRecords = try await writeConcurrently(v, subject: subject, count: n, tenant: acme,
                                                        retention: { i in Int64(1 + i % 92) * 86_400 })
        #expect(erasedRecords.count == n)
        var others: [RecordID: (subject: String, content: String)] = [:]
        for k in 0..<5 {
            let s = "other-subject-\(k)"
            for (id, content) in try await writeConcurrently(v, subject: s, count: 4, tenant: acme) {
                others[id] = (s, content)
            }
        }

        let s = try Subject(subject)
        #expect(try await v.records(of: s, tenant: acme, actor: admin).count == n)

        let receipt = try await v.erase(subject: s, reference: "ticket-4711", tenant: acme, actor: admin)
        #expect(receipt.erased == n)
        #expect(receipt.tenant == acme.slug)
        #expect(receipt.at == tv.clock.now)

        // Every erased id answers notFound; every other record reads back exactly.
        let afterErase = await readAll(v, erasedRecords.keys, tenant: acme)
        #expect(afterErase.count == n)
        #expect(afterErase.values.allSatisfy { $0 == .notFound })
        for (id, expected) in others {
            let r = try await v.read(id, tenant: acme, actor: agent)
            #expect(r.data.text == expected.content)
            #expect(r.subject.text == expected.subject)
        }
        #expect(try await v.records(of: s, tenant: acme, actor: admin).isEmpty)
        #expect(try await v.records(of: try Subject("other-subject-0"), tenant: acme, actor: admin).count == 4)
        // Correct and delete of erased ids: notFound too.
        let someErased = try #require(erasedRecords.keys.first)
        await #expect(throws: VaultError.notFound) {
            try await v.correct(someErased, data: payload("{}"), tenant: acme, actor: agent)
        }
        await #expect(throws: VaultError.notFound) { try await v.delete(someErased, tenant: acme, actor: admin) }

        // The receipt names the audit entry of the erasure.
        let entries = try await v.auditEntries(tenant: acme, after: receipt.auditSeq - 1, limit: 1)
        let entry = try #require(entries.first)
        #expect(entry.seq == receipt.auditSeq)
        #expect(entry.hashHex == receipt.auditHash)
        #expect(entry.action == "subject.erase")
        #expect(entry.target == "subject:\(receipt.subjectTag)")
        #expect(entry.count == UInt64(n))
        #expect(entry.outcome == "ok")
        #expect(entry.reference == "ticket-4711")
        #expect(entry.at == receipt.at)
        let verification = try await v.verifyAudit()
        #expect(verification.isIntact)
        #expect(verification.entries >= receipt.auditSeq)

        // The same subject can be written again; only the new record belongs to it.
        let fresh = try await v.write(try newRecord(subject, #"{"new":true}"#), tenant: acme, actor: agent)
        let listed = try await v.records(of: s, tenant: acme, actor: admin)
        #expect(listed.map(\.id) == [fresh.id])

        // On disk: the erased ciphertexts are gone, the others are all there.
        v.close()
        let number = try storedTenantNumber(acme.slug, dataDirectory: tv.dir.data)
        let keys = Set(try storedCiphertextKeys(dataDirectory: tv.dir.data))
        for id in erasedRecords.keys { #expect(!keys.contains(Layout.ciphertextKey(number, id, 1))) }
        for id in others.keys { #expect(keys.contains(Layout.ciphertextKey(number, id, 1))) }
        #expect(keys.count == others.count + 1)
    }

    @Test func erasureIsDurableAcrossReopen() async throws {
        let tv = try TestVault()
        _ = try await tv.vault.createTenant(acme, actor: .system)
        let erased = try await writeConcurrently(tv.vault, subject: "durable-erase", count: 20, tenant: acme)
        let kept = try await tv.vault.write(try newRecord("kept", #"{"k":1}"#), tenant: acme, actor: agent)
        let receipt = try await tv.vault.erase(subject: try Subject("durable-erase"), reference: nil, tenant: acme, actor: admin)
        #expect(receipt.erased == erased.count)
        let v = try tv.reopen()
        defer { v.close() }
        let after = await readAll(v, erased.keys, tenant: acme)
        #expect(after.values.allSatisfy { $0 == .notFound })
        #expect(try await v.read(kept.id, tenant: acme, actor: agent).data.text == #"{"k":1}"#)
        #expect(try await v.records(of: try Subject("durable-erase"), tenant: acme, actor: admin).isEmpty)
        #expect(try await v.verifyAudit().isIntact)
    }

    @Test func erasingAnUnknownSubjectErasesNothingAndIsAudited() async throws {
        let tv = try TestVault()
        defer { tv.vault.close() }
        let v = tv.vault
        _ = try await v.createTenant(acme, actor: .system)
        let kept = try await v.write(try newRecord("someone", #"{"a":1}"#), tenant: acme, actor: agent)
        let receipt = try await v.erase(subject: try Subject("nobody-ever-written"), reference: nil, tenant: acme, actor: admin)
        #expect(receipt.erased == 0)
        let entry = try #require(try await v.auditEntries(tenant: acme, after: receipt.auditSeq - 1, limit: 1).first)
        #expect(entry.seq == receipt.auditSeq)
        #expect(entry.hashHex == receipt.auditHash)
        #expect(entry.action == "subject.erase")
        #expect(entry.count == 0)
        #expect(try await v.read(kept.id, tenant: acme, actor: agent).data.text == #"{"a":1}"#)
        // The tag is a function of the subject alone within a tenant: erasing again gives the same tag.
        let again = try await v.erase(subject: try Subject("nobody-ever-written"), reference: nil, tenant: acme, actor: admin)
        #expect(again.subjectTag == receipt.subjectTag)
        #expect(again.auditSeq > receipt.auditSeq)
        let other = try await v.erase(subject: try Subject("someone"), reference: nil, tenant: acme, actor: admin)
        #expect(other.subjectTag != receipt.subjectTag)
        #expect(other.erased == 1)
    }

    @Test func correctionDestroysTheOldVersion() async throws {
        let tv = try TestVault()
        let v = tv.vault
        _ = try await v.createTenant(acme, actor: .system)
        let r = try await v.write(try newRecord("corrected", #"{"v":"one"}"#), tenant: acme, actor: agent)
        let c2 = try await v.correct(r.id, data: payload(#"{"v":"two"}"#), tenant: acme, actor: agent)
        #expect(c2.version == r.version + 1)
        #expect(c2.id == r.id)
        #expect(c2.createdAt == r.createdAt)
        #expect(c2.expiresAt == r.expiresAt)
        let got = try await v.read(r.id, tenant: acme, actor: agent)
        #expect(got.data.text == #"{"v":"two"}"#)
        #expect(got.subject.text == "corrected")
        #expect(got.version == c2.version)
        let c3 = try await v.correct(r.id, data: payload(#"{"v":"three"}"#), tenant: acme, actor: agent)
        #expect(c3.version == c2.version + 1)
        v.close()

        // Only the newest version's ciphertext is left in the record store.
        let number = try storedTenantNumber(acme.slug, dataDirectory: tv.dir.data)
        let keys = try storedCiphertextKeys(dataDirectory: tv.dir.data)
        #expect(keys == [Layout.ciphertextKey(number, r.id, c3.version)])
        #expect(!keys.contains(Layout.ciphertextKey(number, r.id, r.version)))
        #expect(!keys.contains(Layout.ciphertextKey(number, r.id, c2.version)))

        let reopened = try tv.openAgain()
        defer { reopened.close() }
        let again = try await reopened.read(r.id, tenant: acme, actor: agent)
        #expect(again.data.text == #"{"v":"three"}"#)
        #expect(again.version == c3.version)
    }

    @Test func deletedRecordIsNotFoundAndItsCiphertextIsGone() async throws {
        let tv = try TestVault()
        let v = tv.vault
        _ = try await v.createTenant(acme, actor: .system)
        let doomed = try await v.write(try newRecord("same-subject", #"{"d":1}"#), tenant: acme, actor: agent)
        let kept = try await v.write(try newRecord("same-subject", #"{"d":2}"#), tenant: acme, actor: agent)
        try await v.delete(doomed.id, tenant: acme, actor: admin)
        await #expect(throws: VaultError.notFound) { try await v.read(doomed.id, tenant: acme, actor: agent) }
        await #expect(throws: VaultError.notFound) { try await v.delete(doomed.id, tenant: acme, actor: admin) }
        await #expect(throws: VaultError.notFound) {
            try await v.correct(doomed.id, data: payload("{}"), tenant: acme, actor: agent)
        }
        let listed = try await v.records(of: try Subject("same-subject"), tenant: acme, actor: agent)
        #expect(listed.map(\.id) == [kept.id])
        let receipt = try await v.erase(subject: try Subject("same-subject"), reference: nil, tenant: acme, actor: admin)
        #expect(receipt.erased == 1)
        v.close()
        #expect(try storedCiphertextKeys(dataDirectory: tv.dir.data).isEmpty)
    }
}
