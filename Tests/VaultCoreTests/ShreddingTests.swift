import Foundation
import Testing
import LMDB
import Sodium
@testable import VaultCore

/// docs/architecture.md, "The shredding guarantee": after an erasure (or expiry) and one rotation,
/// every file of the data directory from any earlier time plus the current `keys/`
/// directory cannot decrypt the erased records.
@Suite struct ShreddingTests {
    /// The raw DEK of each record, captured through the writer (test-only access).
    static func dataKeys(_ vault: Vault, tenant: TenantID, ids: [RecordID]) async throws -> [[UInt8]] {
        try await vault.perform { ks, _, context in
            let dbs = vault.writer.stores.ks
            let t = try ResolvedTenant.load(tenant, in: ks, dbs: dbs)
            let root = try t.rootKey(context)
            return try ids.map { id in
                let m = try #require(try t.meta(id, in: ks, dbs: dbs))
                return try #require(try t.withDataKey(id, m, root: root, in: ks, dbs: dbs) { dek in dek.withUnsafeBytes { Array($0) } })
            }
        }
    }

    /// Every key an attacker reaches from the current master key file and the current keystore.
    static func reachableKeys(keystore path: String, keyFile: String) throws -> [Key] {
        let loaded = try MasterKeyFile(path: keyFile).load()
        let mk = Key(try loaded.key.copy())
        var keys: [Key] = [mk]
        let env = try Environment(path: path, databases: Layout.keystoreDatabases)
        defer { env.close() }
        let dbs = KeystoreDatabases(env)
        try env.read { txn in
            var tenants: [(String, TenantRow)] = []
            try txn.forEach(in: dbs.tenants) { k, v in
                tenants.append((String(decoding: k, as: UTF8.self), try TenantRow.decode(v)))
                return .continue
            }
            for (slug, row) in tenants where row.status == .active {
                let trk = try KeyHierarchy.unwrap(row.wrappedTRK, under: mk.bytes,
                                                  ad: KeyHierarchy.trkAD(slug: slug, tenant: row.number, mkGeneration: loaded.generation,
                                                                         trkGeneration: row.trkGeneration), what: "trk")
                keys.append(trk)
                keys.append(try KeyHierarchy.unwrap(row.wrappedSBK, under: trk.bytes,
                                                    ad: KeyHierarchy.sbkAD(tenant: row.number, trkGeneration: row.trkGeneration), what: "sbk"))
                let prefix = Layout.tenantKey(row.number)
                var buckets: [(UInt64, BucketRow)] = []
                try txn.forEach(in: dbs.buckets, from: prefix, prefix: prefix) { k, v in
                    buckets.append((readBE(k, at: 4), try BucketRow.decode(v)))
                    return .continue
                }
                for (e, b) in buckets {
                    for v in b.versions {
                        keys.append(try KeyHierarchy.unwrap(v.wrappedBK, under: trk.bytes,
                                                            ad: KeyHierarchy.bkAD(tenant: row.number, bucket: e, version: v.number,
                                                                                  trkGeneration: row.trkGeneration), what: "bk"))
                    }
                }
            }
        }
        return keys
    }

    /// The wrapped blobs of the old copy that lead to `ids`, each with the associated data it
    /// was sealed with (the attacker knows the layout): the record's wrapped DEK, its bucket's
    /// wrapped BK, the tenant's wrapped TRK and SBK.
    static func oldChain(keystore path: String, tenant: String, ids: [RecordID]) throws -> [(blob: [UInt8], ad: [UInt8])] {
        let env = try Environment(path: path, databases: Layout.keystoreDatabases)
        defer { env.close() }
        let dbs = KeystoreDatabases(env)
        return try env.read { txn in
            let row = try #require(try txn.withValue(forKey: Array(tenant.utf8), in: dbs.tenants) { b in try b.map(TenantRow.decode) })
            let mkGeneration: UInt64 = 1
            var out: [([UInt8], [UInt8])] = [
                (row.wrappedTRK, KeyHierarchy.trkAD(slug: tenant, tenant: row.number, mkGeneration: mkGeneration, trkGeneration: row.trkGeneration)),
                (row.wrappedSBK, KeyHierarchy.sbkAD(tenant: row.number, trkGeneration: row.trkGeneration)),
            ]
            for id in ids {
                let m = try #require(try txn.withValue(forKey: Layout.recordKey(row.number, id), in: dbs.records) { b in try b.map(RecordMeta.decode) })
                out.append((m.wrappedDEK, KeyHierarchy.dekAD(tenant: row.number, id: id, version: m.version, bucket: m.bucket, bucketVersion: m.bucketVersion)))
                let b = try #require(try txn.withValue(forKey: Layout.bucketKey(row.number, m.bucket), in: dbs.buckets) { b in try b.map(BucketRow.decode) })
                for v in b.versions {
                    out.append((v.wrappedBK, KeyHierarchy.bkAD(tenant: row.number, bucket: m.bucket, version: v.number, trkGeneration: row.trkGeneration)))
                }
            }
            return out
        }
    }

    static func opens(_ blob: [UInt8], ad: [UInt8], with key: Key) -> Bool {
        do {
            _ = try KeyHierarchy.unwrap(blob, under: key.bytes, ad: ad, what: "attack")
            return true
        } catch {
            return false
        }
    }

    static func copyDirectory(_ from: String, to: String) throws {
        try FileManager.default.copyItem(atPath: from, toPath: to)
    }

    @Test func erasedRecordsStayShreddedAgainstOldCopiesAfterRotation() async throws {
        let tv = try TestVault()
        let acme = tenant("acme")
        _ = try await tv.vault.createTenant(acme, actor: .system)
        var victims: [RecordID] = []
        var others: [RecordID] = []
        for i in 0..<4 {
            victims.append(try await tv.vault.write(try newRecord("victim-42", #"{"secret":"victim \#(i)"}"#), tenant: acme, actor: agent).id)
            others.append(try await tv.vault.write(try newRecord("other-7", #"{"note":"other \#(i)"}"#), tenant: acme, actor: agent).id)
        }
        let victimKeys = try await Self.dataKeys(tv.vault, tenant: acme, ids: victims)
        let otherKeys = try await Self.dataKeys(tv.vault, tenant: acme, ids: others)

        // The attacker's backup: every file of the data directory before the erasure.
        let backup = tv.dir.path + "/backup-before-erasure"
        try Self.copyDirectory(tv.dir.data, to: backup)

        let receipt = try await tv.vault.erase(subject: try Subject("victim-42"), reference: "ticket-1", tenant: acme, actor: admin)
        #expect(receipt.erased == victims.count)
        // Unreadable through every API at once, before any rotation.
        for id in victims {
            await #expect(throws: VaultError.notFound) { try await tv.vault.read(id, tenant: acme, actor: agent) }
        }
        #expect(try await tv.vault.records(of: try Subject("victim-42"), tenant: acme, actor: agent).isEmpty)

        let summary = try await tv.vault.rotate()
        #expect(summary.masterGeneration == 2)
        #expect(summary.bucketsRekeyed >= 1)
        #expect(summary.recordsRewrapped == others.count)
        // The other records survive the rotation.
        for id in others { #expect(try await tv.vault.read(id, tenant: acme, actor: agent).subject.text == "other-7") }
        tv.vault.close()

        let reachable = try Self.reachableKeys(keystore: tv.dir.data + "/keystore", keyFile: tv.dir.keyFile)
        #expect(reachable.count >= 4)  // MK, TRK, SBK, at least one BK

        // Attack: every reachable key against every wrapped blob on the way to an erased
        // record in the old copy (with the exact AD it was sealed with).
        let chain = try Self.oldChain(keystore: backup + "/keystore", tenant: "acme", ids: victims)
        for (blob, ad) in chain {
            for key in reachable { #expect(!Self.opens(blob, ad: ad, with: key)) }
        }
        // And every reachable key directly against the old ciphertexts (as if it were the DEK).
        let oldRecords = try Environment(path: backup + "/records", databases: Layout.recordsDatabases)
        let sealed: [[UInt8]] = try oldRecords.read { txn in
            try victims.map { id in try #require(try txn.value(forKey: Layout.ciphertextKey(1, id, 1), in: oldRecords.database(Layout.ciphertexts))) }
        }
        oldRecords.close()
        for blob in sealed {
            for key in reachable {
                let opened = blob.withUnsafeBytes { b in
                    (try? SealedRecord.open(b, dek: key.bytes, ad: [], what: "attack")) != nil
                }
                #expect(!opened)
            }
        }

        // No file, old or new, holds a raw data key.
        for (path, bytes) in try allFiles(under: backup) + (try allFiles(under: tv.dir.data)) {
            for dek in victimKeys + otherKeys {
                #expect(!contains(bytes, dek), "raw DEK bytes found in \(path)")
            }
        }

        // Control: the same attack code does open what is still live in the current keystore.
        let liveChain = try Self.oldChainCurrent(tv: tv, ids: others)
        let opened = liveChain.filter { (blob, ad) in reachable.contains { Self.opens(blob, ad: ad, with: $0) } }
        #expect(opened.count == liveChain.count)
    }

    /// A rotation interrupted after its first chunk leaves a ring whose new version already
    /// wraps some DEKs. An erasure of those records before the next rotation must be shredded
    /// by that rotation too: it finishes the ring, then re-keys the bucket again, so the version
    /// that wrapped the erased DEKs is gone as well.
    @Test func anErasureDuringAnInterruptedRotationIsShreddedByTheNextOne() async throws {
        let tv = try TestVault(rotationChunkSize: 2, faults: RotationTests.crash(at: .rotationChunkCommitted))
        let acme = tenant("acme")
        _ = try await tv.vault.createTenant(acme, actor: .system)
        var victims: [RecordID] = []
        var others: [RecordID] = []
        for i in 0..<2 {
            tv.clock.advance(milliseconds: 1)
            victims.append(try await tv.vault.write(try newRecord("victim-42", #"{"secret":\#(i)}"#), tenant: acme, actor: agent).id)
        }
        for i in 0..<4 {
            tv.clock.advance(milliseconds: 1)
            others.append(try await tv.vault.write(try newRecord("other-7", #"{"note":\#(i)}"#), tenant: acme, actor: agent).id)
        }
        tv.clock.advance(milliseconds: 1)
        _ = try await tv.vault.write(try newRecord("dirt", "{}"), tenant: acme, actor: agent)
        _ = try await tv.vault.erase(subject: try Subject("dirt"), reference: nil, tenant: acme, actor: admin)
        await #expect(throws: (any Error).self) { try await tv.vault.rotate() }

        let vault = try tv.reopen()
        // The first chunk re-wrapped the two victims (the oldest ids) to version 2.
        let victimKeys = try await Self.dataKeys(vault, tenant: acme, ids: victims)
        for id in victims { #expect(try await KeyRingTests.meta(vault, tenant: acme, id).bucketVersion == 2) }
        let backup = tv.dir.path + "/backup-before-erasure"
        try Self.copyDirectory(tv.dir.data, to: backup)
        _ = try await vault.erase(subject: try Subject("victim-42"), reference: nil, tenant: acme, actor: admin)
        let summary = try await vault.rotate()
        #expect(summary.bucketsRekeyed == 1)  // the second pass: the resumed ring, dirtied again
        for id in others { #expect(try await vault.read(id, tenant: acme, actor: agent).subject.text == "other-7") }
        vault.close()

        let chain = try Self.oldChain(keystore: backup + "/keystore", tenant: "acme", ids: victims)
        let reachable = try Self.reachableKeys(keystore: tv.dir.data + "/keystore", keyFile: tv.dir.keyFile)
        for (blob, ad) in chain {
            for key in reachable { #expect(!Self.opens(blob, ad: ad, with: key)) }
        }
        for (path, bytes) in try allFiles(under: backup) + (try allFiles(under: tv.dir.data)) {
            for dek in victimKeys { #expect(!contains(bytes, dek), "raw DEK bytes found in \(path)") }
        }
    }

    /// The live wrapped DEKs of `ids` in the current keystore, with their ADs (positive control).
    static func oldChainCurrent(tv: TestVault, ids: [RecordID]) throws -> [(blob: [UInt8], ad: [UInt8])] {
        let env = try Environment(path: tv.dir.data + "/keystore", databases: Layout.keystoreDatabases)
        defer { env.close() }
        let dbs = KeystoreDatabases(env)
        return try env.read { txn in
            try ids.map { id in
                let m = try #require(try txn.withValue(forKey: Layout.recordKey(1, id), in: dbs.records) { b in try b.map(RecordMeta.decode) })
                return (m.wrappedDEK, KeyHierarchy.dekAD(tenant: 1, id: id, version: m.version, bucket: m.bucket, bucketVersion: m.bucketVersion))
            }
        }
    }

    @Test func expiredRecordsStayShreddedAgainstOldCopiesAfterSweepAndRotation() async throws {
        let tv = try TestVault(bucketWidthSeconds: 1)
        let acme = tenant("acme")
        _ = try await tv.vault.createTenant(acme, actor: .system)
        let shortLived = try await tv.vault.write(try newRecord("cust-1", #"{"call":"short"}"#, retention: 2), tenant: acme, actor: agent).id
        let longLived = try await tv.vault.write(try newRecord("cust-1", #"{"call":"long"}"#), tenant: acme, actor: agent).id
        let keys = try await Self.dataKeys(tv.vault, tenant: acme, ids: [shortLived])
        let backup = tv.dir.path + "/backup-before-expiry"
        try Self.copyDirectory(tv.dir.data, to: backup)

        tv.clock.advance(seconds: 3)
        await #expect(throws: VaultError.notFound) { try await tv.vault.read(shortLived, tenant: acme, actor: agent) }
        let sweep = try await tv.vault.sweep()
        #expect(sweep.bucketsDestroyed == 1)
        #expect(sweep.entriesRemoved == 1)
        _ = try await tv.vault.rotate()
        #expect(try await tv.vault.read(longLived, tenant: acme, actor: agent).data.text == #"{"call":"long"}"#)
        tv.vault.close()

        let reachable = try Self.reachableKeys(keystore: tv.dir.data + "/keystore", keyFile: tv.dir.keyFile)
        for (blob, ad) in try Self.oldChain(keystore: backup + "/keystore", tenant: "acme", ids: [shortLived]) {
            for key in reachable { #expect(!Self.opens(blob, ad: ad, with: key)) }
        }
        for (path, bytes) in try allFiles(under: backup) + (try allFiles(under: tv.dir.data)) {
            #expect(!contains(bytes, keys[0]), "raw DEK bytes found in \(path)")
        }
    }

    @Test func offboardingShredsEveryRecordOfTheTenantInOneStep() async throws {
        let tv = try TestVault()
        let acme = tenant("acme"), globex = tenant("globex")
        _ = try await tv.vault.createTenant(acme, actor: .system)
        _ = try await tv.vault.createTenant(globex, actor: .system)
        var ids: [RecordID] = []
        for i in 0..<5 { ids.append(try await tv.vault.write(try newRecord("c\(i)", "{}"), tenant: acme, actor: agent).id) }
        let kept = try await tv.vault.write(try newRecord("c0", #"{"g":1}"#), tenant: globex, actor: agent).id
        try await tv.vault.offboardTenant(acme, actor: .system)
        for id in ids {
            await #expect(throws: VaultError.tenantNotFound("acme")) { try await tv.vault.read(id, tenant: acme, actor: agent) }
        }
        let sweep = try await tv.vault.sweep()
        #expect(sweep.entriesRemoved == ids.count)
        #expect(try await tv.vault.read(kept, tenant: globex, actor: agent).data.text == #"{"g":1}"#)
        await #expect(throws: VaultError.tenantExists("acme")) { try await tv.vault.createTenant(acme, actor: .system) }
        tv.vault.close()
        let records = try Environment(path: tv.dir.data + "/records", databases: Layout.recordsDatabases)
        defer { records.close() }
        #expect(try records.read { try $0.count(in: records.database(Layout.ciphertexts)) } == 1)
    }
}
