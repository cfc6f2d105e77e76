import Foundation
import Testing
import LMDB
import Sodium
@testable import VaultCore

/// A vault whose journal lives in a directory beside (in production: on another disk than) its
/// data directory, and what a machine loss leaves: the journal and a copy of the key file.
struct JournaledVault {
    let dir = TemporaryDirectory()
    let clock = ManualClock()
    var configuration: VaultConfiguration

    var journalPath: String { dir.path + "/journal" }
    /// The journal directory, or another location (a PostgreSQL database).
    var location: JournalLocation
    var settings: JournalSettings {
        var s = JournalSettings(location: location)
        s.leaseSeconds = 2  // a refused second writer waits out at most this (plus 2 s)
        return s
    }

    init(location: JournalLocation? = nil) throws {
        self.location = location ?? .directory(dir.path + "/journal")
        try FileManager.default.createDirectory(atPath: dir.path + "/keys", withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        try FileManager.default.createDirectory(atPath: dir.path + "/journal", withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        configuration = VaultConfiguration(bucketWidthSeconds: 86_400, keystoreMapSize: 256 << 20,
                                           recordsMapSize: 1 << 30, clock: clock.vaultClock)
        configuration.journal = settings
    }

    func create() throws -> Vault {
        try Vault.create(dataDirectory: dir.data, masterKeyFile: dir.keyFile, configuration: configuration)
    }

    func open(data: String? = nil, keyFile: String? = nil) throws -> Vault {
        try Vault.open(dataDirectory: data ?? dir.data, masterKeyFile: keyFile ?? dir.keyFile, configuration: configuration)
    }

    /// The machine is lost: its data directory goes; the key file survives as `keys/backup.key`
    /// (the copy the operator keeps of each generation).
    func loseMachine() throws -> String {
        let backup = dir.path + "/keys/backup.key"
        try? FileManager.default.removeItem(atPath: backup)
        try FileManager.default.copyItem(atPath: dir.keyFile, toPath: backup)
        try FileManager.default.removeItem(atPath: dir.data)
        try FileManager.default.removeItem(atPath: dir.keyFile)
        return backup
    }

    func restore(into data: String, keyFile: String) async throws -> Restore.Summary {
        var c = configuration
        c.journal = nil
        return try await Restore.run(journal: settings, dataDirectory: data, keyFile: keyFile, configuration: c)
    }

    func segments() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: journalPath + "/segments").sorted().map { journalPath + "/segments/" + $0 }
    }

    func snapshots() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: journalPath + "/snapshots").sorted().map { journalPath + "/snapshots/" + $0 }
    }
}

@Suite struct JournalTests {
    let acme = tenant("acme-journal")

    @Test func restoreFromSnapshotAndJournalAfterMachineLoss() async throws {
        let jv = try JournaledVault()
        let vault = try jv.create()
        _ = try await vault.createTenant(acme, actor: .system)
        let a = try await vault.write(try newRecord("cust-a", "alpha"), tenant: acme, actor: agent)
        let b = try await vault.write(try newRecord("cust-b", "bravo"), tenant: acme, actor: agent)
        _ = try await vault.correct(b.id, data: payload("bravo, corrected"), tenant: acme, actor: agent)
        let snapshot = try await vault.snapshot()
        #expect(snapshot.sequence > 0)
        let c = try await vault.write(try newRecord("cust-c", "charlie"), tenant: acme, actor: agent)
        try await vault.delete(a.id, tenant: acme, actor: admin)
        _ = try await vault.erase(subject: try Subject("cust-c"), reference: "ticket-1", tenant: acme, actor: admin)
        let d = try await vault.write(try newRecord("cust-d", "delta"), tenant: acme, actor: agent)
        vault.close()

        let key = try jv.loseMachine()
        let restored = jv.dir.path + "/restored"
        let summary = try await jv.restore(into: restored, keyFile: key)
        #expect(summary.snapshot.sequence == snapshot.sequence)
        #expect(summary.changeSetsReplayed >= 4)
        #expect(summary.generation == 2)
        #expect(try MasterKeyFile(path: key).load().generation == 2)
        #expect(!FileManager.default.fileExists(atPath: restored + ".restoring"))

        let back = try jv.open(data: restored, keyFile: key)
        defer { back.close() }
        await #expect(throws: VaultError.notFound) { try await back.read(a.id, tenant: acme, actor: agent) }
        await #expect(throws: VaultError.notFound) { try await back.read(c.id, tenant: acme, actor: agent) }
        #expect(try await back.read(b.id, tenant: acme, actor: agent).data.text == "bravo, corrected")
        #expect(try await back.read(d.id, tenant: acme, actor: agent).data.text == "delta")
        #expect(try await back.verifyAudit().isIntact)
        // The restore's rotation started a new epoch: one snapshot, of generation 2.
        let snaps = try jv.snapshots()
        #expect(snaps.count == 1 && snaps[0].hasPrefix(jv.journalPath + "/snapshots/0000000000000002-"))
    }

    @Test func noResurrectionAndACutTailIsRefused() async throws {
        let jv = try JournaledVault()
        let vault = try jv.create()
        _ = try await vault.createTenant(acme, actor: .system)
        let a = try await vault.write(try newRecord("cust-a", "alpha"), tenant: acme, actor: agent)
        let b = try await vault.write(try newRecord("cust-b", "bravo"), tenant: acme, actor: agent)
        _ = try await vault.snapshot()
        let segmentSize = try #require(Files.size(try jv.segments().last!))
        try await vault.delete(a.id, tenant: acme, actor: admin)
        vault.close()
        let key = try jv.loseMachine()
        let keyBytes = try Files.read(key)

        // The journal's end is cut (the erasure's change set): restoring would bring A back.
        let journalCopy = jv.dir.path + "/journal-copy"
        try FileManager.default.copyItem(atPath: jv.journalPath, toPath: journalCopy)
        let segment = try jv.segments().last!
        #expect(truncate(segment, off_t(segmentSize)) == 0)
        let refused = jv.dir.path + "/refused"
        await #expect { try await jv.restore(into: refused, keyFile: key) } throws: { error in
            "\(error)".contains("cut") && "\(error)".contains("not restoring")
        }
        #expect(!FileManager.default.fileExists(atPath: refused))
        #expect(!FileManager.default.fileExists(atPath: refused + ".restoring"))
        #expect(try Files.read(key) == keyBytes)

        // The whole journal: A stays erased, B reads.
        try FileManager.default.removeItem(atPath: jv.journalPath)
        try FileManager.default.moveItem(atPath: journalCopy, toPath: jv.journalPath)
        let restored = jv.dir.path + "/restored"
        _ = try await jv.restore(into: restored, keyFile: key)
        let back = try jv.open(data: restored, keyFile: key)
        defer { back.close() }
        await #expect(throws: VaultError.notFound) { try await back.read(a.id, tenant: acme, actor: agent) }
        #expect(try await back.read(b.id, tenant: acme, actor: agent).data.text == "bravo")
    }

    @Test func restoreAcrossARotationNeedsTheNewGeneration() async throws {
        let jv = try JournaledVault()
        let vault = try jv.create()
        _ = try await vault.createTenant(acme, actor: .system)
        let a = try await vault.write(try newRecord("cust-a", "alpha"), tenant: acme, actor: agent)
        let oldKey = jv.dir.path + "/keys/generation-1.key"
        try FileManager.default.copyItem(atPath: jv.dir.keyFile, toPath: oldKey)
        let summary = try await vault.rotate()
        #expect(summary.masterGeneration == 2)
        // The new epoch's snapshot replaced the old one, and the old journal went with it.
        let snaps = try jv.snapshots()
        #expect(snaps.count == 1 && snaps[0].contains("/0000000000000002-"))
        let b = try await vault.write(try newRecord("cust-b", "bravo"), tenant: acme, actor: agent)
        vault.close()
        let key = try jv.loseMachine()

        await #expect { try await jv.restore(into: jv.dir.path + "/r1", keyFile: oldKey) } throws: { error in
            "\(error)".contains("generation 2")
        }
        let restored = jv.dir.path + "/r2"
        let r = try await jv.restore(into: restored, keyFile: key)
        #expect(r.generation == 3)
        let back = try jv.open(data: restored, keyFile: key)
        defer { back.close() }
        #expect(try await back.read(a.id, tenant: acme, actor: agent).data.text == "alpha")
        #expect(try await back.read(b.id, tenant: acme, actor: agent).data.text == "bravo")
    }

    @Test func aVaultBehindItsJournalCatchesUpOnOpen() async throws {
        let jv = try JournaledVault()
        let vault = try jv.create()
        _ = try await vault.createTenant(acme, actor: .system)
        let a = try await vault.write(try newRecord("cust-a", "alpha"), tenant: acme, actor: agent)
        vault.close()
        let old = jv.dir.path + "/data-old"
        try FileManager.default.copyItem(atPath: jv.dir.data, toPath: old)
        let again = try jv.open()
        let b = try await again.write(try newRecord("cust-b", "bravo"), tenant: acme, actor: agent)
        try await again.delete(a.id, tenant: acme, actor: admin)
        again.close()
        // The data directory goes back to its older copy: the journal brings it to the head.
        try FileManager.default.removeItem(atPath: jv.dir.data)
        try FileManager.default.moveItem(atPath: old, toPath: jv.dir.data)
        let caught = try jv.open()
        defer { caught.close() }
        await #expect(throws: VaultError.notFound) { try await caught.read(a.id, tenant: acme, actor: agent) }
        #expect(try await caught.read(b.id, tenant: acme, actor: agent).data.text == "bravo")
        #expect(try await caught.verifyAudit().isIntact)
    }

    @Test func aJournalThatCannotBeTrustedIsRefusedAtOpen() async throws {
        let jv = try JournaledVault()
        let vault = try jv.create()
        _ = try await vault.createTenant(acme, actor: .system)
        _ = try await vault.write(try newRecord("cust-a", "alpha"), tenant: acme, actor: agent)
        vault.close()

        // Without its journal.
        var bare = jv.configuration
        bare.journal = nil
        #expect { try Vault.open(dataDirectory: jv.dir.data, masterKeyFile: jv.dir.keyFile, configuration: bare) } throws: { error in
            "\(error)".contains("writes a journal")
        }
        // An empty directory in its place.
        let empty = jv.dir.path + "/empty-journal"
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        var elsewhere = jv.configuration
        elsewhere.journal = JournalSettings(location: .directory(empty))
        #expect { try Vault.open(dataDirectory: jv.dir.data, masterKeyFile: jv.dir.keyFile, configuration: elsewhere) } throws: { error in
            "\(error)".contains("is empty") && "\(error)".contains("--new-journal")
        }
        // Another vault's journal.
        let other = try JournaledVault()
        try other.create().close()
        var foreign = jv.configuration
        foreign.journal = other.settings
        #expect { try Vault.open(dataDirectory: jv.dir.data, masterKeyFile: jv.dir.keyFile, configuration: foreign) } throws: { error in
            "\(error)".contains("another vault")
        }
        // A journal behind the vault (an older copy): acknowledged change sets would be lost.
        let olderJournal = jv.dir.path + "/journal-older"
        try FileManager.default.copyItem(atPath: jv.journalPath, toPath: olderJournal)
        let v2 = try jv.open()
        _ = try await v2.write(try newRecord("cust-b", "bravo"), tenant: acme, actor: agent)
        v2.close()
        var older = jv.configuration
        older.journal = JournalSettings(location: .directory(olderJournal))
        try FileManager.default.removeItem(atPath: olderJournal + "/head")
        #expect { try Vault.open(dataDirectory: jv.dir.data, masterKeyFile: jv.dir.keyFile, configuration: older) } throws: { error in
            "\(error)".contains("behind the vault")
        }
        // Two processes on one journal.
        let v3 = try jv.open()
        defer { v3.close() }
        let lock = try DirectoryJournal(path: jv.journalPath)
        #expect { try lock.lockForWriting() } throws: { error in "\(error)".contains("in use") }
    }

    @Test func damageInAChangeSetOrASnapshotIsNamedAndNothingIsRestored() async throws {
        let jv = try JournaledVault()
        let vault = try jv.create()
        _ = try await vault.createTenant(acme, actor: .system)
        _ = try await vault.snapshot()
        for i in 0..<5 { _ = try await vault.write(try newRecord("cust-\(i)", "record \(i)"), tenant: acme, actor: agent) }
        vault.close()
        let key = try jv.loseMachine()
        let pristine = jv.dir.path + "/journal-pristine"
        try FileManager.default.copyItem(atPath: jv.journalPath, toPath: pristine)

        // A flipped byte in the middle of the last segment (inside a change set's box).
        let segment = try jv.segments().last!
        var bytes = try Files.read(segment)
        bytes[bytes.count / 2] ^= 0x01
        try Data(bytes).write(to: URL(fileURLWithPath: segment))
        await #expect { try await jv.restore(into: jv.dir.path + "/r1", keyFile: key) } throws: { error in
            "\(error)".contains("journal change set") && "\(error)".contains("failed authentication")
        }
        #expect(!FileManager.default.fileExists(atPath: jv.dir.path + "/r1"))

        // A flipped byte in the snapshot.
        try FileManager.default.removeItem(atPath: jv.journalPath)
        try FileManager.default.copyItem(atPath: pristine, toPath: jv.journalPath)
        let snap = try jv.snapshots().last!
        var s = try Files.read(snap)
        s[s.count - 40] ^= 0x80
        try Data(s).write(to: URL(fileURLWithPath: snap))
        await #expect { try await jv.restore(into: jv.dir.path + "/r2", keyFile: key) } throws: { error in
            "\(error)".contains("snapshot") && "\(error)".contains("failed authentication")
        }
        #expect(!FileManager.default.fileExists(atPath: jv.dir.path + "/r2"))

        // The right journal with a key file of the same generation but another key.
        try FileManager.default.removeItem(atPath: jv.journalPath)
        try FileManager.default.copyItem(atPath: pristine, toPath: jv.journalPath)
        let wrong = jv.dir.path + "/keys/wrong.key"
        try MasterKeyFile(path: wrong).create()
        await #expect { try await jv.restore(into: jv.dir.path + "/r3", keyFile: wrong) } throws: { error in
            "\(error)".contains("failed authentication")
        }
        #expect(!FileManager.default.fileExists(atPath: jv.dir.path + "/r3"))

        // And the pristine journal restores.
        _ = try await jv.restore(into: jv.dir.path + "/r4", keyFile: key)
    }

    /// docs/architecture.md: after an erasure and one rotation, no copy of the journal from before — its
    /// change sets, its snapshot — opens with the current key file, and none holds a DEK, a
    /// tenant name, a record id or a subject in clear.
    @Test func shreddingReachesEveryCopyOfTheJournal() async throws {
        let jv = try JournaledVault()
        let vault = try jv.create()
        _ = try await vault.createTenant(acme, actor: .system)
        let a = try await vault.write(try newRecord("subject-zulu-7", "secret payload of alpha"), tenant: acme, actor: agent)
        _ = try await vault.snapshot()
        _ = try await vault.write(try newRecord("subject-yankee-8", "another payload"), tenant: acme, actor: agent)
        let deks = try await ShreddingTests.dataKeys(vault, tenant: acme, ids: [a.id])
        let copy = jv.dir.path + "/journal-before-erasure"
        try FileManager.default.copyItem(atPath: jv.journalPath, toPath: copy)
        try await vault.delete(a.id, tenant: acme, actor: admin)
        _ = try await vault.rotate()
        vault.close()

        let files = try allFiles(under: copy) + allFiles(under: jv.journalPath)
        #expect(!files.isEmpty)
        for (path, bytes) in files {
            for needle in [deks[0], Array("acme-journal".utf8), a.id.bytes, Array(a.id.description.utf8),
                           Array("subject-zulu-7".utf8), Array("secret payload".utf8)] {
                #expect(!contains(bytes, needle), "\(path) holds a secret in clear")
            }
        }
        // The current key file opens no change set and no snapshot of the copy.
        let current = try MasterKeyFile(path: jv.dir.keyFile).load()
        try expectNothingOpens(try DirectoryJournal(path: copy), master: Key(try current.key.copy()), what: copy)
    }

}

/// The shredding check of a journal copy: `master` opens none of its change sets (there are
/// some) and restores none of its snapshots.
func expectNothingOpens(_ backend: any JournalBackend, master: Key, what: String) throws {
    let vaultID = try #require(try backend.identity())
    var opened = 0, tried = 0
    let first = try backend.status().first
    let journalKey = try JournalKeys.changeSetKey(master: master)
    try backend.entries(after: max(first, 1) - 1) { entry in
        tried += 1
        // Refused as failing authentication is the expected answer; any other error fails the test.
        do {
            _ = try ChangeSet.open(entry, vaultID: vaultID, journalKey: journalKey.bytes)
            opened += 1
        } catch VaultError.integrity(let m) where m.contains("failed authentication") {}
        return true
    }
    #expect(tried > 0 && opened == 0, "\(what): \(opened) of \(tried) change sets open with the current key")
    for info in try backend.snapshots() {
        let out = TemporaryDirectory()
        #expect(throws: VaultError.self) {
            try Snapshot.restore(info, from: backend, vaultID: vaultID, master: master, into: out.path + "/x")
        }
    }
}

/// A journal on a file system of its own that fills up (a small tmpfs: needs root).
@Suite(.enabled(if: geteuid() == 0, "needs root to mount a tmpfs"))
struct JournalFullDiskTests {
    @Test func aFullJournalDiskFailsWritesWith503AndLosesNothing() async throws {
        let mountPoint = "/tmp/svj-" + UUID().uuidString.prefix(6).lowercased()
        #expect(mkdir(mountPoint, 0o700) == 0)
        #expect(mount("tmpfs", mountPoint, "tmpfs", 0, "size=2m,mode=0700") == 0)
        defer {
            umount2(mountPoint, Int32(MNT_DETACH))
            rmdir(mountPoint)
        }
        var jv = try JournaledVault()
        jv.configuration.journal = JournalSettings(location: .directory(mountPoint))
        let acme = tenant("acme-journal")
        let vault = try jv.create()
        defer { vault.close() }
        _ = try await vault.createTenant(acme, actor: .system)
        let a = try await vault.write(try newRecord("cust-a", "alpha"), tenant: acme, actor: agent)

        // Fill the journal's file system.
        let filler = mountPoint + "/filler"
        let fd = open(filler, O_CREAT | O_WRONLY, 0o600)
        let chunk = [UInt8](repeating: 0xAA, count: 4096)
        while chunk.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) > 0 {}
        close(fd)

        // What still fits in the last page of the segment is taken; then every write is refused.
        var acknowledged: [RecordID] = []
        for i in 0..<100 {
            do {
                acknowledged.append(try await vault.write(try newRecord("cust-fill", "fill \(i)"), tenant: acme, actor: agent).id)
            } catch VaultError.journal(let m) {
                #expect(m.contains("full"))
                break
            }
        }
        #expect(acknowledged.count < 100)
        for i in 0..<5 {
            do {
                _ = try await vault.write(try newRecord("cust-b", String(repeating: "bravo \(i) ", count: 200)), tenant: acme, actor: agent)
                Issue.record("a write was acknowledged while the journal's disk was full")
            } catch VaultError.journal(let m) {
                #expect(m.contains("full"))
            }
        }
        // A read is audited, and its audit entry must reach the journal too: refused as well
        // (once the smaller change sets of reads have used what little room writes left).
        var readRefused = false
        for _ in 0..<200 where !readRefused {
            do { _ = try await vault.read(a.id, tenant: acme, actor: agent) } catch VaultError.journal { readRefused = true }
        }
        #expect(readRefused, "every read was answered while the journal's disk was full")
        // Space again: writes resume, and nothing refused exists.
        #expect(unlink(filler) == 0)
        let c = try await vault.write(try newRecord("cust-c", "charlie"), tenant: acme, actor: agent)
        #expect(try await vault.read(c.id, tenant: acme, actor: agent).data.text == "charlie")
        #expect(try await vault.records(of: try Subject("cust-b"), tenant: acme, actor: agent).isEmpty)
        vault.close()

        // What the journal holds restores to exactly that.
        let key = try jv.loseMachine()
        var restoreSettings = JournalSettings(location: .directory(mountPoint))
        restoreSettings.progress = nil
        let restored = jv.dir.path + "/restored"
        _ = try await Restore.run(journal: restoreSettings, dataDirectory: restored, keyFile: key)
        let back = try jv.open(data: restored, keyFile: key)
        defer { back.close() }
        #expect(try await back.read(c.id, tenant: acme, actor: agent).data.text == "charlie")
        #expect(try await back.records(of: try Subject("cust-b"), tenant: acme, actor: agent).isEmpty)
        #expect(try await back.records(of: try Subject("cust-fill"), tenant: acme, actor: agent).count == acknowledged.count)
        #expect(try await back.read(a.id, tenant: acme, actor: agent).data.text == "alpha")
    }
}
