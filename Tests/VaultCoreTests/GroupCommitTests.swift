import Testing
import Sodium
@testable import VaultCore

@Suite struct GroupCommitTests {
    let acme = tenant("acme")

    struct Written: Sendable, Hashable {
        let id: RecordID
        let subject: String
        let content: String
        let category: DataCategory
        let channel: Channel
    }

    /// `writers` concurrent tasks, each writing `perWriter` records one after the other.
    private func writeConcurrently(_ v: Vault, writers: Int, perWriter: Int) async throws -> [Written] {
        try await withThrowingTaskGroup(of: [Written].self) { group in
            for w in 0..<writers {
                group.addTask {
                    var out: [Written] = []
                    for i in 0..<perWriter {
                        let subject = "writer-\(w)"
                        let content = #"{"writer":\#(w),"seq":\#(i),"text":"record \#(w)/\#(i)"}"#
                        let category = DataCategory.allCases[(w + i) % DataCategory.allCases.count]
                        let channel = Channel.allCases[(w * 7 + i) % Channel.allCases.count]
                        let r = try await v.write(try newRecord(subject, content, category: category, channel: channel),
                                                  tenant: self.acme, actor: agent)
                        out.append(Written(id: r.id, subject: subject, content: content, category: category, channel: channel))
                    }
                    return out
                }
            }
            var all: [Written] = []
            for try await part in group { all += part }
            return all
        }
    }

    /// Reads every record concurrently and checks it against what was written; returns mismatches.
    private func mismatches(_ v: Vault, _ written: [Written]) async -> [String] {
        await withTaskGroup(of: String?.self) { group in
            for w in written {
                group.addTask {
                    do {
                        let r = try await v.read(w.id, tenant: self.acme, actor: agent)
                        if r.data.text != w.content || r.subject.text != w.subject || r.category != w.category
                            || r.channel != w.channel || r.version != 1 {
                            return "\(w.id): content differs"
                        }
                        return nil
                    } catch {
                        return "\(w.id): \(error)"
                    }
                }
            }
            var out: [String] = []
            for await m in group { if let m { out.append(m) } }
            return out
        }
    }

    @Test func concurrentWritersAreBatchedAndEveryAcknowledgedRecordIsDurable() async throws {
        let tv = try TestVault()
        _ = try await tv.vault.createTenant(acme, actor: .system)
        let writers = 64, perWriter = 20
        let before = tv.vault.groupCommitStatistics
        let written = try await writeConcurrently(tv.vault, writers: writers, perWriter: perWriter)
        let after = tv.vault.groupCommitStatistics
        let operations = after.operations - before.operations
        let batches = after.batches - before.batches

        #expect(written.count == writers * perWriter)
        #expect(Set(written.map(\.id)).count == written.count)
        #expect(operations == written.count)
        #expect(batches < operations, "\(operations) operations in \(batches) batches: nothing was group-committed")
        #expect(batches > 0)

        let v = try tv.reopen()
        defer { v.close() }
        let bad = await mismatches(v, written)
        #expect(bad.isEmpty, "\(bad.count) records differ after reopen, e.g. \(bad.prefix(3))")
        for w in [0, writers - 1] {
            let listed = try await v.records(of: try Subject("writer-\(w)"), tenant: acme, actor: agent)
            #expect(listed.count == perWriter)
        }
        let audit = try await v.verifyAudit()
        #expect(audit.isIntact)
        // tenant.create, every write, every read, two listings.
        #expect(audit.entries == UInt64(1 + 2 * written.count + 2))
    }

    @Test func batchSizeOneCommitsEveryOperationAlone() async throws {
        let tv = try TestVault(maxBatch: 1)
        defer { tv.vault.close() }
        _ = try await tv.vault.createTenant(acme, actor: .system)
        let before = tv.vault.groupCommitStatistics
        let written = try await writeConcurrently(tv.vault, writers: 8, perWriter: 4)
        let after = tv.vault.groupCommitStatistics
        #expect(after.operations - before.operations == written.count)
        #expect(after.batches - before.batches == written.count)
        #expect(await mismatches(tv.vault, written).isEmpty)
    }

    enum Kind: String, Sendable, CaseIterable {
        case valid, unknownTenant, retentionTooLong, retentionZero, unknownRead
    }

    @Test func aFailingOperationFailsAloneInItsBatch() async throws {
        let tv = try TestVault()
        _ = try await tv.vault.createTenant(acme, actor: .system)
        let v = tv.vault
        let ghost = tenant("ghost")
        let policy = try await v.retention(tenant: acme).policy.seconds(for: .personal)
        let plan: [Kind] = (0..<200).map { i in
            switch i % 10 {
            case 0: .unknownTenant
            case 3: .retentionTooLong
            case 6: .retentionZero
            case 8: .unknownRead
            default: .valid
            }
        }
        let before = v.groupCommitStatistics
        let outcomes: [(Kind, Int, Result<RecordID?, VaultError>)] = await withTaskGroup(
            of: (Kind, Int, Result<RecordID?, VaultError>).self
        ) { group in
            for (i, kind) in plan.enumerated() {
                group.addTask {
                    do {
                        switch kind {
                        case .valid:
                            return (kind, i, .success(try await v.write(try newRecord("s-\(i)", #"{"i":\#(i)}"#), tenant: self.acme, actor: agent).id))
                        case .unknownTenant:
                            _ = try await v.write(try newRecord("s-\(i)", "{}"), tenant: ghost, actor: agent)
                        case .retentionTooLong:
                            _ = try await v.write(try newRecord("s-\(i)", "{}", retention: policy + 1), tenant: self.acme, actor: agent)
                        case .retentionZero:
                            _ = try await v.write(try newRecord("s-\(i)", "{}", retention: 0), tenant: self.acme, actor: agent)
                        case .unknownRead:
                            _ = try await v.read(unknownRecordID(), tenant: self.acme, actor: agent)
                        }
                        return (kind, i, .success(nil))
                    } catch {
                        return (kind, i, .failure(VaultError.mapping(error)))
                    }
                }
            }
            var out: [(Kind, Int, Result<RecordID?, VaultError>)] = []
            for await o in group { out.append(o) }
            return out
        }
        let after = v.groupCommitStatistics
        #expect(outcomes.count == plan.count)
        #expect(after.batches - before.batches < plan.count, "nothing was batched: the test proves little")

        var valid: [(RecordID, Int)] = []
        for (kind, i, result) in outcomes {
            switch (kind, result) {
            case (.valid, .success(let id?)): valid.append((id, i))
            case (.unknownTenant, .failure(let e)): #expect(e == .tenantNotFound(ghost.slug))
            case (.retentionTooLong, .failure(let e)): #expect({ if case .refused = e { true } else { false } }())
            case (.retentionZero, .failure(let e)): #expect(e == .invalidArgument("retention must be positive"))
            case (.unknownRead, .failure(let e)): #expect(e == .notFound)
            default: Issue.record("operation #\(i) (\(kind)) ended with \(result)")
            }
        }
        let validPlanned = plan.filter { $0 == .valid }.count
        #expect(valid.count == validPlanned)

        // The failures left nothing behind; the refused reads left their audit entries.
        let audit = try await v.verifyAudit()
        #expect(audit.isIntact)
        let unknownReads = plan.filter { $0 == .unknownRead }.count
        #expect(audit.entries == UInt64(1 + validPlanned + unknownReads))

        let reopened = try tv.reopen()
        defer { reopened.close() }
        for (id, i) in valid {
            let r = try await reopened.read(id, tenant: acme, actor: agent)
            #expect(r.data.text == #"{"i":\#(i)}"#)
            #expect(r.subject.text == "s-\(i)")
        }
        #expect(try await reopened.verifyAudit().isIntact)
    }

    @Test func writeBatchReportsEachRecordAloneAndInOrder() async throws {
        let tv = try TestVault()
        defer { tv.vault.close() }
        let v = tv.vault
        _ = try await v.createTenant(acme, actor: .system)
        let policy = try await v.retention(tenant: acme).policy.seconds(for: .personal)
        let retentions: [Int64?] = (0..<40).map { i in
            switch i % 4 {
            case 1: policy + 1
            case 2: 0
            default: nil
            }
        }
        let records = try retentions.enumerated().map { i, r in try newRecord("b-\(i)", #"{"b":\#(i)}"#, retention: r) }
        let results = await v.writeBatch(records, tenant: acme, actor: agent)
        #expect(results.count == records.count)
        for (i, result) in results.enumerated() {
            switch (i % 4, result) {
            case (1, .failure(let e)): #expect({ if case .refused = e { true } else { false } }())
            case (2, .failure(let e)): #expect(e == .invalidArgument("retention must be positive"))
            case (0, .success(let r)), (3, .success(let r)):
                #expect(try await v.read(r.id, tenant: acme, actor: agent).data.text == #"{"b":\#(i)}"#)
            default: Issue.record("record #\(i): \(result)")
            }
        }
        let unknown = await v.writeBatch([try newRecord("x", "{}")], tenant: tenant("ghost"), actor: agent)
        #expect(unknown.count == 1)
        if case .failure(let e) = unknown[0] { #expect(e == .tenantNotFound("ghost")) } else { Issue.record("ghost write succeeded") }
    }

    /// A batch written straight into the group's transactions (the fast path) that runs out of
    /// map space part-way is run again with each record nested: the records that fit are
    /// written and read back whole, the rest are refused as storage full, nothing is half-written.
    @Test func aBatchThatFillsTheMapKeepsWhatFitsAndRefusesTheRest() async throws {
        // The default audit tail: no entry moves to the record store, whose map this test fills
        // to its last pages with records alone.
        let tv = try TestVault(recordsMapSize: 2 << 20, auditTail: AuditArchive.defaultTail)
        defer { tv.vault.close() }
        let v = tv.vault
        _ = try await v.createTenant(acme, actor: .system)
        let blob = String(repeating: "z", count: 60_000)
        let records = try (0..<60).map { i in try newRecord("full-\(i)", #"{"i":\#(i),"b":"\#(blob)"}"#) }
        let results = await v.writeBatch(records, tenant: acme, actor: agent)
        #expect(results.count == records.count)
        let written = results.prefix { if case .success = $0 { true } else { false } }.count
        #expect(written > 0 && written < records.count, "\(written) of \(records.count) written")
        for (i, result) in results.enumerated() {
            switch result {
            case .success(let r):
                #expect(i < written, "record #\(i) written after a refusal")
                #expect(try await v.read(r.id, tenant: acme, actor: agent).data.text == #"{"i":\#(i),"b":"\#(blob)"}"#)
            case .failure(let e):
                #expect(e == .storageFull, "record #\(i): \(e)")
            }
        }
        let stats = try await v.statistics()
        #expect(stats.records == written)
        #expect(try await v.verifyAudit().isIntact)
        // The writer still serves: a small record in a later batch fits in what is left, or is refused alone.
        let small = await v.writeBatch([try newRecord("small", "{}"), try newRecord("small", "{}", retention: 0)],
                                       tenant: acme, actor: agent)
        if case .failure(let e) = small[1] { #expect(e == .invalidArgument("retention must be positive")) }
        else { Issue.record("a zero retention was accepted") }
    }

    @Test func closingWhileWritesAreInFlightAcknowledgesOnlyDurableOnes() async throws {
        let tv = try TestVault()
        _ = try await tv.vault.createTenant(acme, actor: .system)
        let v = tv.vault
        let total = 300
        let results: [(Int, Result<RecordID, VaultError>)] = await withTaskGroup(of: (Int, Result<RecordID, VaultError>).self) { group in
            for i in 0..<total {
                group.addTask {
                    do {
                        return (i, .success(try await v.write(try newRecord("c-\(i)", #"{"c":\#(i)}"#), tenant: self.acme, actor: agent).id))
                    } catch {
                        return (i, .failure(VaultError.mapping(error)))
                    }
                }
            }
            var out: [(Int, Result<RecordID, VaultError>)] = []
            var closed = false
            for await r in group {
                out.append(r)
                if !closed, case .success = r.1 {
                    v.close()  // returns once everything already queued is committed
                    closed = true
                }
            }
            return out
        }
        var acknowledged: [(Int, RecordID)] = []
        for (i, r) in results {
            switch r {
            case .success(let id): acknowledged.append((i, id))
            case .failure(let e): #expect(e == .shuttingDown, "write #\(i) failed with \(e)")
            }
        }
        #expect(!acknowledged.isEmpty)

        let reopened = try tv.openAgain()
        defer { reopened.close() }
        for (i, id) in acknowledged {
            #expect(try await reopened.read(id, tenant: acme, actor: agent).data.text == #"{"c":\#(i)}"#)
        }
        let writes = try await reopened.auditEntries(tenant: acme, after: 0, limit: 1000).filter { $0.action == "record.write" }
        #expect(writes.count == acknowledged.count)
        #expect(try await reopened.verifyAudit().isIntact)
    }
}
