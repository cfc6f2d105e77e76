import Testing
import Sodium
@testable import VaultCore

@Suite struct StorageFullTests {
    let acme = tenant("acme")
    let payloadBytes = 4096

    /// A unique payload of `payloadBytes` bytes.
    private func bigPayload(_ i: Int) -> String {
        let head = #"{"i":\#(i),"pad":""#
        let tail = #""}"#
        return head + String(repeating: "x", count: payloadBytes - head.utf8.count - tail.utf8.count) + tail
    }

    /// Writes rounds of concurrent 4 KiB records until one fails with `storageFull`.
    /// Returns the acknowledged records and whether the store filled up.
    private func fill(_ v: Vault, from start: Int = 0, maxRecords: Int = 2_000) async -> (acked: [(RecordID, Int)], full: Bool, other: [VaultError]) {
        var acked: [(RecordID, Int)] = []
        var other: [VaultError] = []
        var next = start
        while next < start + maxRecords {
            let round = next..<(next + 8)
            next += 8
            let results = await withTaskGroup(of: (Int, Result<RecordID, VaultError>).self) { group in
                for i in round {
                    group.addTask {
                        do {
                            let r = try await v.write(try newRecord("subject-\(i % 5)", self.bigPayload(i)), tenant: self.acme, actor: agent)
                            return (i, .success(r.id))
                        } catch {
                            return (i, .failure(VaultError.mapping(error)))
                        }
                    }
                }
                var out: [(Int, Result<RecordID, VaultError>)] = []
                for await r in group { out.append(r) }
                return out
            }
            var full = false
            for (i, r) in results {
                switch r {
                case .success(let id): acked.append((id, i))
                case .failure(.storageFull): full = true
                case .failure(let e): other.append(e)
                }
            }
            if full || !other.isEmpty { return (acked, full, other) }
        }
        return (acked, false, other)
    }

    private func unreadable(_ v: Vault, _ records: [(RecordID, Int)]) async -> [String] {
        await withTaskGroup(of: String?.self) { group in
            for (id, i) in records {
                group.addTask {
                    do {
                        let r = try await v.read(id, tenant: self.acme, actor: agent)
                        return r.data.text == self.bigPayload(i) ? nil : "\(id): content differs"
                    } catch {
                        return "\(id): \(error)"
                    }
                }
            }
            var out: [String] = []
            for await m in group { if let m { out.append(m) } }
            return out
        }
    }

    @Test func fullRecordStoreRefusesWritesAndKeepsEverythingAcknowledged() async throws {
        let tv = try TestVault(recordsMapSize: 1 << 20)
        let v = tv.vault
        _ = try await v.createTenant(acme, actor: .system)

        let (acked, full, other) = await fill(v)
        #expect(other.isEmpty, "unexpected errors while filling: \(other.prefix(3))")
        #expect(full, "1 MiB of 4 KiB records never filled the record store")
        #expect(!acked.isEmpty)
        // A 1 MiB map cannot hold more than 1 MiB of payload.
        #expect(acked.count * payloadBytes < 1 << 20)

        // Nothing acknowledged was lost; the failures left nothing behind.
        let bad = await unreadable(v, acked)
        #expect(bad.isEmpty, "\(bad.count) acknowledged records unreadable after the store filled, e.g. \(bad.prefix(3))")
        let audit = try await v.verifyAudit()
        #expect(audit.isIntact)
        let writes = try await v.auditEntries(tenant: acme, after: 0, limit: 1000).filter { $0.action == "record.write" }
        #expect(writes.count == acked.count)
        // A later write either is refused as storage full or, when LMDB has reclaimed pages
        // that earlier transactions freed, succeeds and is readable: never anything else.
        do {
            let late = try await v.write(try newRecord("late", self.bigPayload(-1)), tenant: acme, actor: agent)
            #expect(try await v.read(late.id, tenant: acme, actor: agent).subject.text == "late")
        } catch {
            #expect(error as? VaultError == .storageFull)
        }
        #expect(try await v.records(of: try Subject("subject-0"), tenant: acme, actor: agent).count
                == acked.filter { $0.1 % 5 == 0 }.count)

        // Durable across a reopen.
        let reopened = try tv.reopen()
        defer { reopened.close() }
        #expect(await unreadable(reopened, acked).isEmpty)
        #expect(try await reopened.verifyAudit().isIntact)
    }

    /// What happens after deleting records from a full store. LMDB reuses freed pages once
    /// no reader can see the transaction that freed them; the writer holds no long reader,
    /// so new writes are expected to fit again.
    @Test func deletingRecordsFromAFullStoreMakesRoomAgain() async throws {
        let tv = try TestVault(recordsMapSize: 1 << 20)
        let v = tv.vault
        _ = try await v.createTenant(acme, actor: .system)
        let (acked, full, other) = await fill(v)
        try #require(full && other.isEmpty)

        // Delete half of the records; the vault must keep working while it frees their space.
        let (doomed, kept) = (acked.enumerated().filter { $0.offset % 2 == 0 }.map(\.element),
                              acked.enumerated().filter { $0.offset % 2 == 1 }.map(\.element))
        for (id, _) in doomed { try await v.delete(id, tenant: acme, actor: admin) }
        let summary = try await v.sweep()
        #expect(summary.entriesRemoved == 0)  // nothing expired
        for (id, _) in doomed {
            await #expect(throws: VaultError.notFound) { try await v.read(id, tenant: acme, actor: agent) }
        }
        #expect(await unreadable(v, kept).isEmpty)

        // Room for new records again.
        let (more, fullAgain, otherAgain) = await fill(v, from: 100_000, maxRecords: doomed.count / 4)
        #expect(otherAgain.isEmpty)
        #expect(!more.isEmpty, "no write succeeded after deleting \(doomed.count) of \(acked.count) records (full again: \(fullAgain))")
        #expect(await unreadable(v, kept + more).isEmpty)
        #expect(try await v.verifyAudit().isIntact)
        v.close()

        let ciphertexts = try storedCiphertextKeys(dataDirectory: tv.dir.data)
        #expect(ciphertexts.count == kept.count + more.count)
    }

    /// A record store down to its reserve takes no more of the audit (the moves are put off,
    /// counted, and the tail stays in the keystore), so every record can still be deleted; once
    /// the sweep has freed their space the moves resume and the tail shrinks back.
    @Test func aFullRecordStoreKeepsTheAuditTailAndRoomToDelete() async throws {
        let tv = try TestVault(recordsMapSize: 1 << 20)
        let v = tv.vault
        _ = try await v.createTenant(acme, actor: .system)
        let (acked, full, other) = await fill(v)
        try #require(full && other.isEmpty && acked.count > 8)

        // Audited reads, a tail at a time, each tail followed by a move, until one is put off.
        let before = try await v.statistics()
        var held = before
        for round in 0..<64 where held.auditMovesFailed == before.auditMovesFailed {
            for n in 0..<Int(TestVault.auditTail) { _ = try await v.read(acked[(round + n) % acked.count].0, tenant: acme, actor: agent) }
            held = try await v.statistics()
        }
        #expect(held.auditMovesFailed > before.auditMovesFailed)
        #expect(held.auditEntries - held.auditArchived >= TestVault.auditTail, "the tail stayed in the keystore")

        for (id, _) in acked { try await v.delete(id, tenant: acme, actor: admin) }
        _ = try await v.sweep()
        for _ in 0..<Int(2 * TestVault.auditTail) { _ = try await v.records(of: try Subject("subject-0"), tenant: acme, actor: agent) }
        let resumed = try await v.statistics()
        #expect(resumed.auditArchived > held.auditArchived)
        #expect(resumed.auditEntries - resumed.auditArchived < 2 * TestVault.auditTail, "the moves resumed")
        #expect(try await v.verifyAudit().isIntact)
        v.close()
        #expect(try storedCiphertextKeys(dataDirectory: tv.dir.data).isEmpty)
    }
}
