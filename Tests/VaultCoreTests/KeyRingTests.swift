import Foundation
import Locking
import Testing
import LMDB
import Sodium
@testable import VaultCore

/// Bucket key rings and the bounded rotation built on them: a bucket being re-keyed holds
/// its previous and current key versions, re-wrapping runs in chunks with ordinary
/// operations between them, and the previous version is trimmed once nothing needs it.
@Suite struct KeyRingTests {
    /// Every bucket row of the vault, by tenant number and bucket.
    static func rings(_ vault: Vault) async throws -> [(tenant: UInt32, bucket: UInt64, row: BucketRow)] {
        try await vault.perform { ks, _, _ in
            var out: [(UInt32, UInt64, BucketRow)] = []
            try ks.forEach(in: vault.writer.stores.ks.buckets) { k, v in
                out.append((readBE(k, at: 0), readBE(k, at: 4), try BucketRow.decode(v)))
                return .continue
            }
            return out
        }
    }

    static func meta(_ vault: Vault, tenant: TenantID, _ id: RecordID) async throws -> RecordMeta {
        try await vault.perform { ks, _, _ in
            let t = try ResolvedTenant.load(tenant, in: ks, dbs: vault.writer.stores.ks)
            guard let m = try t.meta(id, in: ks, dbs: vault.writer.stores.ks) else { throw VaultError.notFound }
            return m
        }
    }

    /// `count` records of `subject` in acme, one millisecond apart (so their ids, and the
    /// re-wrap scan, follow the order written), all in one bucket.
    static func write(_ vault: Vault, clock: ManualClock, subject: String, count: Int) async throws -> [(RecordID, String)] {
        var out: [(RecordID, String)] = []
        for i in 0..<count {
            clock.advance(milliseconds: 1)
            let body = #"{"s":"\#(subject)","i":\#(i)}"#
            out.append((try await vault.write(try newRecord(subject, body), tenant: tenant("acme"), actor: agent).id, body))
        }
        return out
    }

    static func readAll(_ vault: Vault, _ records: [(RecordID, String)]) async throws {
        for (id, body) in records {
            #expect(try await vault.read(id, tenant: tenant("acme"), actor: agent).data.text == body)
        }
    }

    @Test func aRotationRewrapsInBoundedChunksAndTrimsEveryRing() async throws {
        let tv = try TestVault(rotationChunkSize: 3)
        _ = try await tv.vault.createTenant(tenant("acme"), actor: .system)
        let kept = try await Self.write(tv.vault, clock: tv.clock, subject: "keep", count: 19)
        _ = try await Self.write(tv.vault, clock: tv.clock, subject: "gone", count: 1)
        _ = try await tv.vault.erase(subject: try Subject("gone"), reference: nil, tenant: tenant("acme"), actor: admin)
        let before = try await Self.rings(tv.vault)
        #expect(before.count == 1 && before[0].row.dirty && before[0].row.current.number == 1)

        let summary = try await tv.vault.rotate()
        #expect(summary.bucketsRekeyed == 1)
        #expect(summary.recordsRewrapped == kept.count)
        // 19 records, at most 3 a transaction: at least 7 transactions.
        #expect(summary.rewrapTransactions >= 7)
        #expect(summary.skipped.isEmpty)
        let after = try await Self.rings(tv.vault)
        #expect(after.count == 1)
        #expect(after[0].row.versions.map(\.number) == [2])
        #expect(!after[0].row.dirty)
        for (id, _) in kept { #expect(try await Self.meta(tv.vault, tenant: tenant("acme"), id).bucketVersion == 2) }
        try await Self.readAll(tv.vault, kept)
        #expect(try await tv.vault.verifyAudit().isIntact)
        tv.vault.close()
    }

    /// A crash after the rings are opened, or after a first chunk, leaves a vault whose rings
    /// hold both versions: every record reads (under whichever version wraps it), new records
    /// take the current version, and the next rotation finishes the job.
    @Test(arguments: [FaultPoint.rotationRingsOpened, .rotationChunkCommitted])
    func aCrashInsideAChunkedRotationLeavesAVaultThatReadsWithEitherVersion(point: FaultPoint) async throws {
        let tv = try TestVault(rotationChunkSize: 3, faults: RotationTests.crash(at: point))
        _ = try await tv.vault.createTenant(tenant("acme"), actor: .system)
        let kept = try await Self.write(tv.vault, clock: tv.clock, subject: "keep", count: 10)
        let gone = try await Self.write(tv.vault, clock: tv.clock, subject: "gone", count: 2)
        _ = try await tv.vault.erase(subject: try Subject("gone"), reference: nil, tenant: tenant("acme"), actor: admin)
        await #expect(throws: (any Error).self) { try await tv.vault.rotate() }

        let vault = try tv.reopen()
        defer { vault.close() }
        #expect(try MasterKeyFile(path: tv.dir.keyFile).load().generation == 1)
        let ring = try #require(try await Self.rings(vault).first?.row)
        #expect(ring.versions.map(\.number) == [1, 2])
        #expect(ring.minimumDecryptionVersion == 1 && ring.current.number == 2)
        let versions = try await kept.asyncMap { try await Self.meta(vault, tenant: tenant("acme"), $0.0).bucketVersion }
        #expect(versions.filter { $0 == 2 }.count == (point == .rotationChunkCommitted ? 3 : 0))
        try await Self.readAll(vault, kept)
        for (id, _) in gone {
            await #expect(throws: VaultError.notFound) { try await vault.read(id, tenant: tenant("acme"), actor: agent) }
        }
        // A record written now is wrapped under the ring's current version.
        let fresh = try await Self.write(vault, clock: tv.clock, subject: "new", count: 1)
        #expect(try await Self.meta(vault, tenant: tenant("acme"), fresh[0].0).bucketVersion == 2)

        let summary = try await vault.rotate()
        #expect(summary.masterGeneration == 2)
        #expect(summary.skipped.isEmpty)
        #expect(try await Self.rings(vault).map(\.row.versions.count) == [1])
        try await Self.readAll(vault, kept + fresh)
        #expect(try await vault.verifyAudit().isIntact)
    }

    @Test func writesAndReadsRunBetweenTheStepsOfARotation() async throws {
        // Counts the batches committed between the rotation's first and last chunk.
        final class Probe: Sendable {
            let batches = Locked<[Int]>([])
            let vault = Locked<Vault?>(nil)
        }
        let probe = Probe()
        let tv = try TestVault(rotationChunkSize: 1, faults: { point in
            if point == .rotationChunkCommitted, let v = probe.vault.withLock({ $0 }) {
                let n = v.groupCommitStatistics.batches
                probe.batches.withLock { $0.append(n) }
            }
        })
        probe.vault.withLock { $0 = tv.vault }
        _ = try await tv.vault.createTenant(tenant("acme"), actor: .system)
        let kept = try await Self.write(tv.vault, clock: tv.clock, subject: "keep", count: 30)
        _ = try await Self.write(tv.vault, clock: tv.clock, subject: "gone", count: 1)
        _ = try await tv.vault.erase(subject: try Subject("gone"), reference: nil, tenant: tenant("acme"), actor: admin)

        let rotation = Task { try await tv.vault.rotate() }
        var during: [(RecordID, String)] = []
        while probe.batches.withLock({ $0.count }) < 25 {
            during += try await Self.write(tv.vault, clock: tv.clock, subject: "during", count: 1)
            try await Self.readAll(tv.vault, [kept[during.count % kept.count]])
        }
        let summary = try await rotation.value
        // The kept records, and any written before the rings opened (still under version 1).
        #expect(summary.recordsRewrapped >= kept.count)
        let seen = probe.batches.withLock { $0 }
        #expect(seen.last! > seen.first!, "no batch ran between the rotation's chunks: \(seen)")
        try await Self.readAll(tv.vault, kept + during)
        #expect(try await Self.rings(tv.vault).allSatisfy { $0.row.versions.count == 1 })
        #expect(try await tv.vault.verifyAudit().isIntact)
        tv.vault.close()
    }

    /// One damaged bucket key (acme) and one damaged tenant root key (initech): both are
    /// named in the summary and left as they are, and every other bucket and tenant rotates.
    @Test func aDamagedKeyIsNamedAndSkippedWhileEveryOtherTenantRotates() async throws {
        let tv = try TestVault(rotationChunkSize: 4)
        var kept: [String: [(RecordID, String)]] = [:]
        for slug in ["acme", "globex", "initech"] {
            let t = tenant(slug)
            _ = try await tv.vault.createTenant(t, actor: .system)
            for s in ["keep", "gone"] {
                for i in 0..<3 {
                    let body = #"{"t":"\#(slug)","i":\#(i)}"#
                    let id = try await tv.vault.write(try newRecord(s, body), tenant: t, actor: agent).id
                    if s == "keep" { kept[slug, default: []].append((id, body)) }
                }
            }
            _ = try await tv.vault.erase(subject: try Subject("gone"), reference: nil, tenant: t, actor: admin)
        }
        // acme's second bucket: records with a shorter retention, in a bucket of their own.
        let acmeShort = try await tv.vault.write(try newRecord("keep", #"{"short":1}"#, retention: 30 * 86_400),
                                                 tenant: tenant("acme"), actor: agent).id
        tv.vault.close()

        // Damage acme's 92-day bucket key and initech's root key, on disk.
        let env = try Environment(path: tv.dir.data + "/keystore", databases: Layout.keystoreDatabases)
        let dbs = KeystoreDatabases(env)
        let acmeBucket: UInt64 = try env.write { txn in
            let m = try #require(try txn.withValue(forKey: Layout.recordKey(1, kept["acme"]![0].0), in: dbs.records) { b in try b.map(RecordMeta.decode) })
            let key = Layout.bucketKey(1, m.bucket)
            var row = try #require(try txn.withValue(forKey: key, in: dbs.buckets) { b in try b.map(BucketRow.decode) })
            var wrapped = row.current.wrappedBK
            wrapped[30] ^= 0x40
            row = BucketRow(version: row.current.number, dirty: row.dirty, wrappedBK: wrapped)
            try txn.put(row.encode(), forKey: key, in: dbs.buckets)
            var initech = try #require(try txn.withValue(forKey: Array("initech".utf8), in: dbs.tenants) { b in try b.map(TenantRow.decode) })
            initech.wrappedTRK[30] ^= 0x40
            try txn.put(initech.encode(), forKey: Array("initech".utf8), in: dbs.tenants)
            return m.bucket
        }
        env.close()

        var c = tv.configuration
        c.faultInjector = nil
        let vault = try Vault.open(dataDirectory: tv.dir.data, masterKeyFile: tv.dir.keyFile, configuration: c)
        defer { vault.close() }
        let summary = try await vault.rotate()
        #expect(summary.masterGeneration == 2)
        #expect(summary.tenantsRenewed == 2)  // acme and globex
        #expect(summary.skipped.contains { $0.contains("bucket key \(acmeBucket) v1 of tenant acme") })
        #expect(summary.skipped.contains { $0.contains("root key of tenant initech") })
        #expect(summary.skipped.allSatisfy { $0.contains("acme") || $0.contains("initech") })
        // globex rotated whole; acme's other bucket reads; the damaged ones fail as before.
        for (id, body) in kept["globex"]! {
            #expect(try await vault.read(id, tenant: tenant("globex"), actor: agent).data.text == body)
        }
        #expect(try await vault.read(acmeShort, tenant: tenant("acme"), actor: agent).data.text == #"{"short":1}"#)
        await #expect(throws: (any Error).self) { try await vault.read(kept["acme"]![0].0, tenant: tenant("acme"), actor: agent) }
        await #expect(throws: (any Error).self) { try await vault.read(kept["initech"]![0].0, tenant: tenant("initech"), actor: agent) }
        // A second rotation still goes through and names the same damage.
        let again = try await vault.rotate()
        #expect(again.masterGeneration == 3)
        #expect(again.skipped.contains { $0.contains("root key of tenant initech") })
        for (id, body) in kept["globex"]! {
            #expect(try await vault.read(id, tenant: tenant("globex"), actor: agent).data.text == body)
        }
    }

    @Test func ringsDecodeAndRefuseMalformedVersionLists() throws {
        var row = BucketRow(version: 4, dirty: true, wrappedBK: [1, 2, 3])
        #expect(row.encode().first == BucketRow.format)
        try row.add(.init(number: 5, wrappedBK: [4, 5]))
        let encoded = row.encode()
        #expect(encoded.first == BucketRow.ringFormat)
        let decoded = try encoded.withUnsafeBytes { try BucketRow.decode($0) }
        #expect(decoded == row && decoded.minimumDecryptionVersion == 4 && decoded.current.number == 5)
        // No third version, no descending ring, no one-version format-2 row.
        #expect(throws: VaultError.self) { try row.add(.init(number: 6, wrappedBK: [])) }
        #expect(throws: VaultError.self) {
            try BucketRow(versions: [.init(number: 5, wrappedBK: []), .init(number: 4, wrappedBK: [])], dirty: false)
        }
        var single = [BucketRow.ringFormat, 0, 1] + [UInt8].be(UInt32(1)) + [0, 0]
        #expect(throws: VaultError.self) { try single.withUnsafeBytes { try BucketRow.decode($0) } }
        single[0] = 9
        #expect(throws: VaultError.self) { try single.withUnsafeBytes { try BucketRow.decode($0) } }
        row.trim()
        #expect(row.versions.map(\.number) == [5] && row.encode().first == BucketRow.format)
    }
}

extension Array {
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var out: [T] = []
        for element in self { out.append(try await transform(element)) }
        return out
    }
}
