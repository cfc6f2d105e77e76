import Foundation
import Testing
import LMDB
import Sodium
import PostgresSupport
@testable import VaultCore

extension PostgresCluster {
    /// The journal's location in this cluster's database `shredvault`.
    var location: JournalLocation { .postgres(try! PostgresAddress(url: url)) }
}

@Suite(.serialized) struct PostgresJournalTests {
    let acme = tenant("acme-pg")

    @Test func restoreFromPostgreSQLAfterMachineLossWithoutResurrection() async throws {
        let pg = try PostgresCluster()
        let jv = try JournaledVault(location: pg.location)
        let vault = try jv.create()
        _ = try await vault.createTenant(acme, actor: .system)
        let a = try await vault.write(try newRecord("cust-a", "alpha"), tenant: acme, actor: agent)
        let b = try await vault.write(try newRecord("cust-b", "bravo"), tenant: acme, actor: agent)
        let snapshot = try await vault.snapshot()
        // After the snapshot: a batch, a correction, an erasure and a deletion in change sets only.
        let batch = try await vault.writeBatch((0..<50).map { try newRecord("cust-batch-\($0 % 5)", "batch \($0)") },
                                               tenant: acme, actor: agent).map { try $0.get() }
        _ = try await vault.correct(b.id, data: payload("bravo, corrected"), tenant: acme, actor: agent)
        _ = try await vault.erase(subject: try Subject("cust-batch-3"), reference: "rtbf-1", tenant: acme, actor: admin)
        try await vault.delete(a.id, tenant: acme, actor: admin)
        let report = try #require(try await vault.journalReport())
        #expect(report.location.hasPrefix("journal postgres://shredvault@"))
        #expect(report.sequence > snapshot.sequence)
        vault.close()

        // The vault's rows are in PostgreSQL, sealed: no plaintext in any of them.
        let rows = Int(try pg.sql("SELECT count(*) FROM shredvault_change_sets")) ?? 0
        #expect(rows >= 4)
        #expect(try pg.sql("SELECT count(*) FROM shredvault_change_sets WHERE position('bravo'::bytea in entry) > 0") == "0")
        #expect(try pg.sql("SELECT count(*) FROM shredvault_snapshot_parts WHERE position('alpha'::bytea in data) > 0") == "0")

        let headAtLoss = try #require(UInt64(try pg.sql("SELECT head FROM shredvault_journal")))
        let key = try jv.loseMachine()
        let restored = jv.dir.path + "/restored"
        let summary = try await jv.restore(into: restored, keyFile: key)
        #expect(summary.snapshot == SnapshotInfo(epoch: 1, sequence: snapshot.sequence, bytes: summary.snapshot.bytes))
        #expect(summary.head == headAtLoss && headAtLoss >= report.sequence)
        #expect(summary.generation == 2)

        let back = try jv.open(data: restored, keyFile: key)
        defer { back.close() }
        await #expect(throws: VaultError.notFound) { try await back.read(a.id, tenant: acme, actor: agent) }
        #expect(try await back.read(b.id, tenant: acme, actor: agent).data.text == "bravo, corrected")
        var kept = 0, gone = 0
        for (i, r) in batch.enumerated() {
            if i % 5 == 3 {
                await #expect(throws: VaultError.notFound) { try await back.read(r.id, tenant: acme, actor: agent) }
                gone += 1
            } else {
                #expect(try await back.read(r.id, tenant: acme, actor: agent).data.text == "batch \(i)")
                kept += 1
            }
        }
        #expect(kept == 40 && gone == 10)
        #expect(try await back.verifyAudit().isIntact)
        // The restore's rotation started epoch 2: its snapshot replaced epoch 1's, and the change
        // sets it covers are gone from the table.
        let snaps = try pg.sql("SELECT epoch FROM shredvault_snapshots WHERE complete ORDER BY epoch")
        #expect(snaps == "2")
    }

    /// The journal crosses a replicated engine: the vault journals into a primary whose commits
    /// wait for a streaming standby (`pg_basebackup -R`, synchronous); the primary is lost with the
    /// vault's machine; the standby is promoted and the vault restored from it, with every
    /// acknowledged write and no erased record.
    @Test func restoreFromAPromotedStreamingReplica() async throws {
        let primary = try PostgresCluster()
        let standby = try PostgresCluster(replicaOf: primary)
        try primary.requireSynchronousStandby()
        try primary.waitForSynchronousStandby()

        var jv = try JournaledVault(location: primary.location)
        let vault = try jv.create()
        _ = try await vault.createTenant(acme, actor: .system)
        let kept = try await vault.write(try newRecord("cust-kept", "kept"), tenant: acme, actor: agent)
        let erased = try await vault.write(try newRecord("cust-erased", "erased"), tenant: acme, actor: agent)
        _ = try await vault.snapshot()
        let late = try await vault.writeBatch((0..<20).map { try newRecord("cust-late", "late \($0)") },
                                              tenant: acme, actor: agent).map { try $0.get() }
        _ = try await vault.erase(subject: try Subject("cust-erased"), reference: "rtbf", tenant: acme, actor: admin)
        vault.close()
        let head = try primary.sql("SELECT head FROM shredvault_journal")

        // The vault's machine and the primary are lost together.
        try primary.crash()
        let key = try jv.loseMachine()
        #expect(try standby.sql("SELECT pg_is_in_recovery()") == "t")
        try standby.promote()
        #expect(try standby.sql("SELECT head FROM shredvault_journal") == head, "an acknowledged change set is not on the standby")

        jv.location = standby.location
        let restored = jv.dir.path + "/restored"
        let summary = try await jv.restore(into: restored, keyFile: key)
        #expect(summary.head == UInt64(head))
        jv.configuration.journal = jv.settings
        let back = try jv.open(data: restored, keyFile: key)
        defer { back.close() }
        #expect(try await back.read(kept.id, tenant: acme, actor: agent).data.text == "kept")
        for (i, r) in late.enumerated() {
            #expect(try await back.read(r.id, tenant: acme, actor: agent).data.text == "late \(i)")
        }
        await #expect(throws: VaultError.notFound) { try await back.read(erased.id, tenant: acme, actor: agent) }
        #expect(try await back.verifyAudit().isIntact)
    }

    @Test func untrustedOrUnreachablePostgreSQLJournalsAreRefused() async throws {
        let pg = try PostgresCluster()
        let jv = try JournaledVault(location: pg.location)
        let vault = try jv.create()
        _ = try await vault.createTenant(acme, actor: .system)
        let a = try await vault.write(try newRecord("cust-a", "alpha"), tenant: acme, actor: agent)

        // One writer: a second vault process on the same database is refused while this one runs.
        let other = try JournaledVault(location: pg.location)
        #expect { _ = try other.create() } throws: { "\($0)".contains("in use by another vault process") }
        #expect(!FileManager.default.fileExists(atPath: other.dir.keyFile), "a refused create left its key behind")
        #expect(!FileManager.default.fileExists(atPath: other.dir.data + "/keystore"), "a refused create left a vault behind")
        try await vault.delete(a.id, tenant: acme, actor: admin)
        vault.close()

        // Another vault's journal.
        #expect { _ = try other.create() } throws: { "\($0)".contains("journal of another vault") }

        // The erasure's change set removed from the end: opening (or restoring) would bring A back.
        let head = try pg.sql("SELECT max(seq) FROM shredvault_change_sets")
        try pg.sql("CREATE TABLE kept AS SELECT * FROM shredvault_change_sets WHERE seq = \(head)")
        try pg.sql("DELETE FROM shredvault_change_sets WHERE seq = \(head)")
        #expect { _ = try jv.open() } throws: { "\($0)".contains("removed from its end") }
        let key = try jv.loseMachine()
        await #expect { _ = try await jv.restore(into: jv.dir.path + "/r1", keyFile: key) } throws: {
            "\($0)".contains("its end was cut")
        }
        #expect(!FileManager.default.fileExists(atPath: jv.dir.path + "/r1"))

        // Put back, then damaged: the restore names the change set and writes nothing.
        try pg.sql("INSERT INTO shredvault_change_sets SELECT * FROM kept")
        try pg.sql("UPDATE shredvault_change_sets SET entry = overlay(entry placing '\\xff'::bytea from 40 for 1) WHERE seq = \(head)")
        await #expect { _ = try await jv.restore(into: jv.dir.path + "/r2", keyFile: key) } throws: {
            "\($0)".contains("\(head)")
        }
        #expect(!FileManager.default.fileExists(atPath: jv.dir.path + "/r2"))
        try pg.sql("UPDATE shredvault_change_sets SET entry = (SELECT entry FROM kept) WHERE seq = \(head)")

        // Unreachable: refused, naming the server, nothing written.
        try pg.stop()
        await #expect { _ = try await jv.restore(into: jv.dir.path + "/r3", keyFile: key) } throws: {
            "\($0)".contains("cannot reach postgres://shredvault@")
        }
        #expect(!FileManager.default.fileExists(atPath: jv.dir.path + "/r3"))
        try pg.start()
        let summary = try await jv.restore(into: jv.dir.path + "/r4", keyFile: key)
        #expect(summary.head == UInt64(head))
        let back = try jv.open(data: jv.dir.path + "/r4", keyFile: key)
        defer { back.close() }
        await #expect(throws: VaultError.notFound) { try await back.read(a.id, tenant: acme, actor: agent) }
    }

    @Test func writesAreRefusedWhilePostgreSQLIsDownAndResumeWhenItIsBack() async throws {
        let pg = try PostgresCluster()
        let jv = try JournaledVault(location: pg.location)
        let vault = try jv.create()
        _ = try await vault.createTenant(acme, actor: .system)
        let a = try await vault.write(try newRecord("cust-a", "alpha"), tenant: acme, actor: agent)

        try pg.stop()
        await #expect { _ = try await vault.write(try newRecord("cust-b", "bravo"), tenant: acme, actor: agent) } throws: { error in
            guard case VaultError.journal = error else { return false }
            return true
        }
        try pg.start()
        // The next write reconnects, takes the writer's lock again and checks the journal's end.
        let c = try await vault.write(try newRecord("cust-c", "charlie"), tenant: acme, actor: agent)
        #expect(try await vault.read(a.id, tenant: acme, actor: agent).data.text == "alpha")
        vault.close()

        let key = try jv.loseMachine()
        _ = try await jv.restore(into: jv.dir.path + "/restored", keyFile: key)
        let back = try jv.open(data: jv.dir.path + "/restored", keyFile: key)
        defer { back.close() }
        #expect(try await back.read(c.id, tenant: acme, actor: agent).data.text == "charlie")
        let listed = try await back.records(of: try Subject("cust-b"), tenant: acme, actor: admin)
        #expect(listed.isEmpty, "the refused write came back")
    }

    /// PostgreSQL keeps old rows in its WAL, its backups and its dumps for ever: after an erasure
    /// and one rotation, a `pg_dump` and a cold copy of the server's data directory (WAL
    /// included) taken before the erasure hold no DEK, tenant name, record id, subject or payload
    /// in clear, and the current key file opens none of their change sets or snapshots.
    @Test func shreddingReachesPgDumpAndACopyOfTheServersDataDirectory() async throws {
        let pg = try PostgresCluster()
        let jv = try JournaledVault(location: pg.location)
        let vault = try jv.create()
        _ = try await vault.createTenant(acme, actor: .system)
        let a = try await vault.write(try newRecord("subject-zulu-7", "secret payload of alpha"), tenant: acme, actor: agent)
        _ = try await vault.snapshot()
        _ = try await vault.write(try newRecord("subject-yankee-8", "another payload"), tenant: acme, actor: agent)
        let deks = try await ShreddingTests.dataKeys(vault, tenant: acme, ids: [a.id])

        // The copies an operator's backups would hold, from before the erasure.
        let dump = pg.directory + "/before-erasure.sql"
        try pg.dump(to: dump)
        vault.close()
        try pg.stop()
        let cold = try PostgresCluster(copyOf: pg)
        try cold.stop()
        try pg.start()
        let reopened = try jv.open()
        try await reopened.delete(a.id, tenant: acme, actor: admin)
        _ = try await reopened.rotate()
        reopened.close()

        var files = try allFiles(under: cold.data)
        files.append((dump, Array(try Data(contentsOf: URL(fileURLWithPath: dump)))))
        #expect(files.contains { $0.0.contains("/pg_wal/") }, "the copy holds the WAL")
        for (path, bytes) in files {
            for needle in [deks[0], Array(acme.description.utf8), a.id.bytes, Array(a.id.description.utf8),
                           Array("subject-zulu-7".utf8), Array("secret payload".utf8)] {
                #expect(!contains(bytes, needle), "\(path) holds a secret in clear")
            }
        }

        // Both copies, served again, hold journals the current key file opens nothing of.
        try cold.start()
        try pg.load(dump, into: "restored_dump")
        let current = try MasterKeyFile(path: jv.dir.keyFile).load()
        let mk = Key(try current.key.copy())
        for url in [cold.url, pg.url(database: "restored_dump")] {
            let backend = try PostgresJournal(address: try PostgresAddress(url: url), passwordFile: nil)
            defer { backend.close() }
            #expect(!(try backend.snapshots()).isEmpty)
            try expectNothingOpens(backend, master: mk, what: url)
        }
    }

    /// The lease fences a deposed writer: once another node holds the lease under the next term
    /// (what a promotion does), this vault's appends change nothing, every write fails, and the
    /// journal ends where the new writer found it. Reads too: each is audited, and its audit entry
    /// cannot be journaled (so a deposed primary never answers a read the new one may have erased).
    @Test func aDeposedWriterAppendsNothingAndRefusesEveryWrite() async throws {
        let pg = try PostgresCluster()
        let jv = try JournaledVault(location: pg.location)
        let vault = try jv.create()
        _ = try await vault.createTenant(acme, actor: .system)
        let a = try await vault.write(try newRecord("cust-a", "alpha"), tenant: acme, actor: agent)
        let term = try pg.sql("SELECT term FROM shredvault_lease")
        #expect(try pg.sql("SELECT holder FROM shredvault_lease").hasPrefix("\(ProcessInfo.processInfo.hostName)"))

        // Another node takes the lease with the next term, as a promoted standby does.
        try pg.sql("UPDATE shredvault_lease SET term = term + 1, holder = 'promoted', expires_at = now() + interval '1 hour'")
        let head = try pg.sql("SELECT head FROM shredvault_journal")
        for subject in ["cust-b", "cust-c"] {
            await #expect { _ = try await vault.write(try newRecord(subject, "late"), tenant: acme, actor: agent) } throws: {
                "\($0)".contains("another node took the journal's lease from this vault's term \(term)")
            }
        }
        #expect(try pg.sql("SELECT head FROM shredvault_journal") == head)
        #expect(try pg.sql("SELECT max(seq) FROM shredvault_change_sets") == head, "a deposed writer appended")
        await #expect(throws: VaultError.self) { _ = try await vault.snapshot() }
        await #expect { _ = try await vault.read(a.id, tenant: acme, actor: agent) } throws: {
            "\($0)".contains("no longer writes")
        }
        vault.close()
        #expect(try pg.sql("SELECT holder FROM shredvault_lease") == "promoted", "closing handed back a lease it lost")

        // While the new holder's lease runs, no other writer opens on the journal.
        #expect { _ = try jv.open() } throws: { "\($0)".contains("in use by another vault process (promoted holds its lease") }
    }
}
