import Foundation
import Testing
import LMDB
import Sodium
import PostgresSupport
@testable import VaultCore

/// The single-use exchange that carries a new master key generation to standbys, and what a
/// restore needs when a machine is lost between a rotation and its snapshot.
@Suite struct KeyExchangeTests {
    let acme = tenant("acme-exchange")

    struct RotationStopped: Error {}

    /// A rotation that stops after its switch (the key promoted), before its snapshot: the
    /// vault keeps serving, so writes land in the new epoch while the snapshot is the old one.
    static func stopAfterTheSwitch(_ point: FaultPoint) throws {
        if point == .rotationKeyPromoted { throw RotationStopped() }
    }

    /// A journaled vault with record A (and what `more` writes), the generation-1 key kept as
    /// `keys/kept-1.key`, then a rotation stopped after its switch; the vault still serves.
    func vaultSwitchedWithoutSnapshot(
        _ more: (Vault) async throws -> Void = { _ in }
    ) async throws -> (jv: JournaledVault, vault: Vault, a: RecordReceipt, kept: String) {
        var jv = try JournaledVault()
        jv.configuration.faultInjector = Self.stopAfterTheSwitch
        let vault = try jv.create()
        _ = try await vault.createTenant(acme, actor: .system)
        let a = try await vault.write(try newRecord("cust-a", "alpha"), tenant: acme, actor: agent)
        try await more(vault)
        let kept = jv.dir.path + "/keys/kept-1.key"
        try FileManager.default.copyItem(atPath: jv.dir.keyFile, toPath: kept)
        await #expect { try await vault.rotate() } throws: { "\($0)".contains("RotationStopped") }
        return (jv, vault, a, kept)
    }

    @Test func aRestoreBetweenARotationAndItsSnapshotNeedsTheKeptKeysOfBothGenerations() async throws {
        let (jv, vault, a, keptOld) = try await vaultSwitchedWithoutSnapshot()
        let b = try await vault.write(try newRecord("cust-b", "bravo"), tenant: acme, actor: agent)
        vault.close()
        let keptNew = try jv.loseMachine()
        #expect(try MasterKeyFile(path: keptNew).load().generation == 2)

        // The old generation alone does not lead to the new one: refused, nothing written.
        let refused = jv.dir.path + "/r1"
        await #expect { try await self.restore(jv, into: refused, keyFile: keptOld, next: nil) } throws: { error in
            "\(error)".contains("--next-key-file") && "\(error)".contains("generation 2")
        }
        #expect(!FileManager.default.fileExists(atPath: refused))
        #expect(try MasterKeyFile(path: keptOld).load().generation == 1)
        // A next key of the wrong generation is named.
        await #expect { try await self.restore(jv, into: refused, keyFile: keptOld, next: keptOld) } throws: { error in
            "\(error)".contains("holds generation 1")
        }

        let restored = jv.dir.path + "/r2"
        let r = try await restore(jv, into: restored, keyFile: keptOld, next: keptNew)
        #expect(r.generation == 3)
        let back = try jv.open(data: restored, keyFile: keptOld)
        defer { back.close() }
        #expect(try await back.read(a.id, tenant: acme, actor: agent).data.text == "alpha")
        #expect(try await back.read(b.id, tenant: acme, actor: agent).data.text == "bravo")
        #expect(try await back.verifyAudit().isIntact)
    }

    @Test func aSwitchWhoseKeyWasLostWithTheMachineIsTakenBackAndNothingIsLost() async throws {
        let (jv, vault, a, kept) = try await vaultSwitchedWithoutSnapshot { vault in
            try await vault.delete(try await vault.write(try newRecord("cust-x", "gone"), tenant: self.acme, actor: agent).id,
                                   tenant: self.acme, actor: admin)
        }
        let headBefore = try jv.settings.backend().status().head
        vault.close()
        _ = try jv.loseMachine()  // its generation-2 key is lost with it

        let restored = jv.dir.path + "/r"
        let r = try await restore(jv, into: restored, keyFile: kept, next: nil)
        // The cut switch was taken back; the restore's own rotation made generation 2 afresh.
        #expect(r.generation == 2)
        #expect(r.head == headBefore - 1)
        let back = try jv.open(data: restored, keyFile: kept)
        defer { back.close() }
        #expect(try await back.read(a.id, tenant: acme, actor: agent).data.text == "alpha")
        #expect(try await back.records(of: try Subject("cust-x"), tenant: acme, actor: agent).isEmpty)
        #expect(try await back.verifyAudit().isIntact)
    }

    func restore(_ jv: JournaledVault, into data: String, keyFile: String, next: String?) async throws -> Restore.Summary {
        var c = jv.configuration
        c.journal = nil
        c.faultInjector = nil
        return try await Restore.run(journal: jv.settings, dataDirectory: data, keyFile: keyFile, nextKeyFile: next,
                                     configuration: c)
    }

    @Test func publishedKeysGetABoxOnlyWithTheCurrentGenerationsTag() throws {
        let master = try Key.random(), next = try Key.random(), other = try Key.random()
        let honest = try ExchangeKeyPair(), intruder = try ExchangeKeyPair()
        let tag = try KeyExchange.tag(publicKey: honest.publicKey, name: "b", generation: 4, master: master)
        let published = [
            PublishedExchangeKey(name: "b", generation: 4, publicKey: honest.publicKey, tag: tag),
            PublishedExchangeKey(name: "b", generation: 4, publicKey: honest.publicKey, tag: tag),  // twice
            // A database account without the master key can only guess a tag, or make one with another key.
            PublishedExchangeKey(name: "x", generation: 4, publicKey: intruder.publicKey, tag: Random.bytes(count: 32)),
            PublishedExchangeKey(name: "y", generation: 4, publicKey: intruder.publicKey,
                                 tag: try KeyExchange.tag(publicKey: intruder.publicKey, name: "y", generation: 4, master: other)),
            // A tag is bound to its name and generation.
            PublishedExchangeKey(name: "z", generation: 4, publicKey: intruder.publicKey, tag: tag),
            PublishedExchangeKey(name: "b", generation: 3, publicKey: honest.publicKey, tag: tag),
        ]
        let sealed = try KeyExchange.seal(next, to: published, generation: 4, master: master)
        #expect(sealed.count == 1 && sealed[0].publicKey == honest.publicKey)
        let opened = try honest.open(sealed[0].box)
        let same = opened.constantTimeEquals(next.bytes)
        #expect(same)
        #expect(throws: SodiumError.authenticationFailure) { try intruder.open(sealed[0].box) }
    }

    /// A journal written before the exchange carried the next key itself (flag bit 0): it still
    /// replays. Nothing writes that form any more.
    @Test func aChangeSetOfTheOldFormStillOpens() throws {
        let journalKey = try Key.random(), next = try Key.random()
        let vaultID = Random.bytes(count: 16)
        var plaintext: [UInt8] = [ChangeSet.format] + .be(UInt64(7)) + [1] + .be(UInt64(3))
        next.bytes.withUnsafeBytes { plaintext += Array($0) }
        plaintext += .be(UInt32(0)) + .be(UInt32(0))
        let ad = JournalEntry.associatedData(vaultID: vaultID, epoch: 2, sequence: 7)
        let box = try plaintext.withUnsafeBytes { p in
            try ad.withUnsafeBytes { a in try AEAD.seal(p, key: journalKey.bytes, associatedData: a) }
        }
        let entry = try JournalEntry(bytes: JournalEntry.magic + .be(UInt64(2)) + .be(UInt64(7)) + box)
        let opened = try ChangeSet.open(entry, vaultID: vaultID, journalKey: journalKey.bytes)
        #expect(opened.next?.generation == 3 && opened.next?.sealed.isEmpty == true)
        #expect(opened.next?.legacyKey?.bytes.constantTimeEquals(next.bytes) == true)
        // Unknown flags are refused.
        plaintext[9] = 4
        let bad = try plaintext.withUnsafeBytes { p in
            try ad.withUnsafeBytes { a in try AEAD.seal(p, key: journalKey.bytes, associatedData: a) }
        }
        #expect(throws: VaultError.self) {
            try ChangeSet.open(try JournalEntry(bytes: JournalEntry.magic + .be(UInt64(2)) + .be(UInt64(7)) + bad),
                               vaultID: vaultID, journalKey: journalKey.bytes)
        }
    }
}

/// A standby on a real PostgreSQL journal, in process.
@Suite(.serialized) struct StandbyKeyExchangeTests {
    let acme = tenant("acme-exchange-pg")

    func openStandby(_ jv: JournaledVault, directory: String) throws -> Standby {
        var c = jv.configuration
        c.newAuditKey = true
        return try Standby.open(dataDirectory: directory + "/data", masterKeyFile: directory + "/keys/master.key",
                                configuration: c, name: "standby-test", pollInterval: .milliseconds(20))
    }

    func waitForEpoch(_ standby: Standby, _ epoch: UInt64, applied: UInt64? = nil) async throws -> Standby.Status {
        for _ in 0..<500 {
            let s = standby.status
            if s.epoch == epoch, applied.map({ s.applied >= $0 }) ?? true { return s }
            if s.error != nil, s.epoch < epoch, s.applied >= (applied ?? 0) { return s }
            try await Task.sleep(for: .milliseconds(20))
        }
        return standby.status
    }

    @Test func anOldKeyFileAndTheJournalLeadToNoLaterGeneration() async throws {
        let pg = try PostgresCluster()
        let jv = try JournaledVault(location: pg.location)
        let vault = try jv.create()
        _ = try await vault.createTenant(acme, actor: .system)
        let a = try await vault.write(try newRecord("cust-a", "alpha"), tenant: acme, actor: agent)
        // What an attacker keeps: the generation-1 key file.
        let oldKey = jv.dir.path + "/keys/stolen-1.key"
        try FileManager.default.copyItem(atPath: jv.dir.keyFile, toPath: oldKey)

        let sdir = jv.dir.path + "/standby"
        try FileManager.default.createDirectory(atPath: sdir + "/keys", withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        try FileManager.default.copyItem(atPath: jv.dir.keyFile, toPath: sdir + "/keys/master.key")
        var standby = try openStandby(jv, directory: sdir)
        let exchange = ExchangeKeyFile(besideMasterKey: sdir + "/keys/master.key")
        let first = try #require(try exchange.load())
        #expect(first.generation == 1)
        #expect(Posix.mode(exchange.path).map { $0 & 0o777 } == 0o600)
        // An intruder with write access to the database publishes a key of its own.
        let intruder = try ExchangeKeyPair()
        _ = try pg.sql("""
            INSERT INTO shredvault_standbys (name, applied, epoch, lag_ms, seen_at, exchange_epoch, exchange_key, exchange_tag)
            VALUES ('intruder', 0, 1, 0, now(), 1, '\\x\(intruder.publicKey.hex)', '\\x\(Random.bytes(count: 32).hex)')
            """)
        standby.close()  // away during the rotation: the writer keeps what it has not applied

        #expect(try await vault.rotate().masterGeneration == 2)
        let b = try await vault.write(try newRecord("cust-b", "bravo"), tenant: acme, actor: agent)

        // The rotation's switch, as PostgreSQL (and its WAL, replicas and backups) keeps it.
        let row = try pg.sql("SELECT seq, encode(entry, 'hex') FROM shredvault_change_sets WHERE epoch = 1 ORDER BY seq DESC LIMIT 1")
        let parts = row.split(separator: "|")
        let entry = try JournalEntry(bytes: try #require([UInt8](hex: String(parts[1]).trimmingCharacters(in: .whitespacesAndNewlines))))
        let vaultID = try #require(try jv.settings.backend().identity())
        let stolen = try MasterKeyFile(path: oldKey).load()
        let opened = try ChangeSet.open(entry, vaultID: vaultID,
                                        journalKey: try JournalKeys.changeSetKey(master: Key(try stolen.key.copy())).bytes)
        let next = try #require(opened.next)
        #expect(next.generation == 2 && next.legacyKey == nil)
        // One box, to the standby's published key; the intruder's untagged key got none.
        #expect(next.sealed.map(\.publicKey) == [first.pair.publicKey])
        #expect(throws: SodiumError.authenticationFailure) { try intruder.open(next.sealed[0].box) }
        // The old generation's journal key opens nothing of the new epoch.
        let later = try pg.sql("SELECT encode(entry, 'hex') FROM shredvault_change_sets WHERE epoch = 2 ORDER BY seq LIMIT 1")
        let laterEntry = try JournalEntry(bytes: try #require([UInt8](hex: later.trimmingCharacters(in: .whitespacesAndNewlines))))
        #expect(throws: VaultError.self) {
            try ChangeSet.open(laterEntry, vaultID: vaultID,
                               journalKey: try JournalKeys.changeSetKey(master: Key(try stolen.key.copy())).bytes)
        }

        // The standby comes back, opens its box, and follows; the private half it used is gone.
        standby = try openStandby(jv, directory: sdir)
        standby.start()
        let status = try await waitForEpoch(standby, 2)
        #expect(status.epoch == 2 && status.error == nil, "standby: \(status.error ?? "")")
        let second = try #require(try exchange.load())
        #expect(second.generation == 2 && second.pair.publicKey != first.pair.publicKey)
        #expect(try MasterKeyFile(path: sdir + "/keys/master.key").load().generation == 2)
        let published = try pg.sql("SELECT exchange_epoch, encode(exchange_key, 'hex') FROM shredvault_standbys WHERE name = 'standby-test'")
        #expect(published == "2|\(second.pair.publicKey.hex)")
        standby.close()
        vault.close()
        _ = (a, b)
    }

    @Test func aStandbyWhoseKeyTheRotationDidNotSealToSaysWhatToDo() async throws {
        let pg = try PostgresCluster()
        let jv = try JournaledVault(location: pg.location)
        let vault = try jv.create()
        defer { vault.close() }
        _ = try await vault.createTenant(acme, actor: .system)
        let sdir = jv.dir.path + "/standby"
        try FileManager.default.createDirectory(atPath: sdir + "/keys", withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        try FileManager.default.copyItem(atPath: jv.dir.keyFile, toPath: sdir + "/keys/master.key")
        var standby = try openStandby(jv, directory: sdir)
        standby.close()
        // Its private half is lost (or it published after the rotation read the keys).
        try ExchangeKeyFile(besideMasterKey: sdir + "/keys/master.key").destroy()
        #expect(try await vault.rotate().masterGeneration == 2)

        standby = try openStandby(jv, directory: sdir)
        defer { standby.close() }
        standby.start()
        let status = try await waitForEpoch(standby, 2)
        #expect(status.epoch == 1)
        let error = try #require(status.error)
        #expect(error.contains("generation 2") && error.contains("empty data directory"), "\(error)")
        // Its key file stays at the generation it holds.
        #expect(try MasterKeyFile(path: sdir + "/keys/master.key").load().generation == 1)
    }
}
