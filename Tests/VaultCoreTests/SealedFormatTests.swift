import Foundation
import Testing
import LMDB
import Sodium
@testable import VaultCore

/// The four barrier properties (HashiCorp Vault's barrier tests) for every sealed format:
/// confidentiality, integrity, move integrity (the AD binds position), unique ciphertexts.
@Suite struct SealedFormatTests {
    static let id1 = RecordID.generate(milliseconds: 1_800_000_000_000)
    static let id2 = RecordID.generate(milliseconds: 1_800_000_000_001)

    /// Every AD a wrapped key is sealed with, and a neighbour it must not open under.
    static let wrapADs: [(String, [UInt8], [UInt8])] = [
        ("trk", KeyHierarchy.trkAD(slug: "acme", tenant: 1, mkGeneration: 1, trkGeneration: 1),
         KeyHierarchy.trkAD(slug: "globex", tenant: 2, mkGeneration: 1, trkGeneration: 1)),
        ("trk-generation", KeyHierarchy.trkAD(slug: "acme", tenant: 1, mkGeneration: 1, trkGeneration: 1),
         KeyHierarchy.trkAD(slug: "acme", tenant: 1, mkGeneration: 2, trkGeneration: 1)),
        ("sbk", KeyHierarchy.sbkAD(tenant: 1, trkGeneration: 1), KeyHierarchy.sbkAD(tenant: 2, trkGeneration: 1)),
        ("bk", KeyHierarchy.bkAD(tenant: 1, bucket: 20_000, version: 1, trkGeneration: 1),
         KeyHierarchy.bkAD(tenant: 1, bucket: 20_001, version: 1, trkGeneration: 1)),
        ("bk-version", KeyHierarchy.bkAD(tenant: 1, bucket: 20_000, version: 1, trkGeneration: 1),
         KeyHierarchy.bkAD(tenant: 1, bucket: 20_000, version: 2, trkGeneration: 1)),
        ("dek-record", KeyHierarchy.dekAD(tenant: 1, id: id1, version: 1, bucket: 5, bucketVersion: 1),
         KeyHierarchy.dekAD(tenant: 1, id: id2, version: 1, bucket: 5, bucketVersion: 1)),
        ("dek-tenant", KeyHierarchy.dekAD(tenant: 1, id: id1, version: 1, bucket: 5, bucketVersion: 1),
         KeyHierarchy.dekAD(tenant: 2, id: id1, version: 1, bucket: 5, bucketVersion: 1)),
    ]

    @Test(arguments: wrapADs.map { $0.0 })
    func wrappedKeysHoldTheBarrier(_ name: String) throws {
        let (_, ad, moved) = try #require(Self.wrapADs.first { $0.0 == name })
        let kek = try Key.random()
        let secret = try Key.random()
        let raw = secret.bytes.withUnsafeBytes { Array($0) }
        let blob = try KeyHierarchy.wrap(secret.bytes, under: kek.bytes, ad: ad)
        // Confidentiality: the key bytes are not in the blob.
        #expect(!contains(blob, raw))
        #expect(!contains(blob, Array(raw[0..<16])))
        // Round trip.
        let opened = try KeyHierarchy.unwrap(blob, under: kek.bytes, ad: ad, what: "k")
        let same = opened.bytes.constantTimeEquals(secret.bytes)
        #expect(same)
        // Integrity: every flipped byte fails.
        for i in 0..<blob.count {
            var bad = blob
            bad[i] ^= 0x01
            #expect(throws: VaultError.self) { try KeyHierarchy.unwrap(bad, under: kek.bytes, ad: ad, what: "k") }
        }
        // Truncation fails.
        #expect(throws: VaultError.self) { try KeyHierarchy.unwrap(Array(blob.dropLast()), under: kek.bytes, ad: ad, what: "k") }
        // Move integrity: the blob does not open in another position.
        #expect(throws: VaultError.self) { try KeyHierarchy.unwrap(blob, under: kek.bytes, ad: moved, what: "k") }
        // Unique: the same key wrapped twice gives different blobs.
        #expect(try KeyHierarchy.wrap(secret.bytes, under: kek.bytes, ad: ad) != blob)
    }

    @Test func sealedRecordsHoldTheBarrier() throws {
        let dek = try Key.random()
        let subject = SensitiveBytes(copying: Array("cust-000123".utf8))
        let data = SensitiveBytes(copying: Array(#"{"notes":"asked about the invoice of March, card ending 4242"}"#.utf8))
        let meta = RecordMeta(category: .personal, channel: .phone, createdAt: 1, expiresAt: 2, version: 1,
                              tag: [UInt8](repeating: 7, count: 16), bucket: 0, bucketVersion: 1, ciphertextCount: 0, wrappedDEK: [])
        let ad = KeyHierarchy.recordAD(tenant: 1, id: Self.id1, version: 1, digest: meta.digest(tenant: 1, id: Self.id1))
        let sealed = try SealedRecord.seal(subject: subject, data: data, dek: dek.bytes, ad: ad)
        #expect(!contains(sealed, Array("cust-000123".utf8)))
        #expect(!contains(sealed, Array("invoice".utf8)))
        let (s, d) = try sealed.withUnsafeBytes { try SealedRecord.open($0, dek: dek.bytes, ad: ad, what: "r") }
        #expect(s.text == "cust-000123")
        #expect(d.text == data.text)
        for i in stride(from: 0, to: sealed.count, by: 1) {
            var bad = sealed
            bad[i] ^= 0x80
            #expect(throws: VaultError.self) { try bad.withUnsafeBytes { try SealedRecord.open($0, dek: dek.bytes, ad: ad, what: "r") } }
        }
        // Moved: another record, another tenant, another version, other metadata.
        var longer = meta
        longer.expiresAt += 1
        let moves: [[UInt8]] = [
            KeyHierarchy.recordAD(tenant: 1, id: Self.id2, version: 1, digest: meta.digest(tenant: 1, id: Self.id2)),
            KeyHierarchy.recordAD(tenant: 2, id: Self.id1, version: 1, digest: meta.digest(tenant: 2, id: Self.id1)),
            KeyHierarchy.recordAD(tenant: 1, id: Self.id1, version: 2, digest: meta.digest(tenant: 1, id: Self.id1)),
            KeyHierarchy.recordAD(tenant: 1, id: Self.id1, version: 1, digest: longer.digest(tenant: 1, id: Self.id1)),
        ]
        for moved in moves {
            #expect(throws: VaultError.self) { try sealed.withUnsafeBytes { try SealedRecord.open($0, dek: dek.bytes, ad: moved, what: "r") } }
        }
        #expect(try SealedRecord.seal(subject: subject, data: data, dek: dek.bytes, ad: ad) != sealed)
    }

    /// On disk: a ciphertext copied over another record's (same tenant or another tenant)
    /// is detected as an integrity failure of that record, and other records still read.
    @Test func ciphertextMovedOnDiskIsDetected() async throws {
        let tv = try TestVault()
        let acme = tenant("acme"), globex = tenant("globex")
        _ = try await tv.vault.createTenant(acme, actor: .system)
        _ = try await tv.vault.createTenant(globex, actor: .system)
        let a1 = try await tv.vault.write(try newRecord("s1", #"{"a":1}"#), tenant: acme, actor: agent).id
        let a2 = try await tv.vault.write(try newRecord("s2", #"{"a":2}"#), tenant: acme, actor: agent).id
        let g1 = try await tv.vault.write(try newRecord("s1", #"{"g":1}"#), tenant: globex, actor: agent).id
        let a3 = try await tv.vault.write(try newRecord("s3", #"{"a":3}"#), tenant: acme, actor: agent).id
        tv.vault.close()

        let env = try Environment(path: tv.dir.data + "/records", databases: Layout.recordsDatabases)
        let db = env.database(Layout.ciphertexts)
        try env.write { txn in
            let fromA1 = try #require(try txn.value(forKey: Layout.ciphertextKey(1, a1, 1), in: db))
            let fromG1 = try #require(try txn.value(forKey: Layout.ciphertextKey(2, g1, 1), in: db))
            try txn.put(fromA1, forKey: Layout.ciphertextKey(1, a2, 1), in: db)   // moved within the tenant
            try txn.put(fromG1, forKey: Layout.ciphertextKey(1, a3, 1), in: db)   // moved across tenants
        }
        env.close()

        let vault = try tv.reopen()
        defer { vault.close() }
        for id in [a2, a3] {
            await #expect {
                try await vault.read(id, tenant: acme, actor: agent)
            } throws: { error in
                guard case VaultError.integrity(let m) = error else { return false }
                return m.contains(id.description)
            }
        }
        #expect(try await vault.read(a1, tenant: acme, actor: agent).data.text == #"{"a":1}"#)
        #expect(try await vault.read(g1, tenant: globex, actor: agent).data.text == #"{"g":1}"#)
    }

    @Test func recordIDsRoundTripAndSortByTime() throws {
        var ids: [RecordID] = []
        for ms in stride(from: Int64(1_700_000_000_000), to: 1_700_000_000_100, by: 7) {
            let id = RecordID.generate(milliseconds: ms)
            #expect(id.description.count == 26)
            #expect(RecordID(id.description) == id)
            #expect(RecordID(id.description.lowercased()) == id)
            #expect(id.milliseconds == ms)
            ids.append(id)
        }
        #expect(ids == ids.sorted())
        #expect(ids.map(\.description) == ids.map(\.description).sorted())
        #expect(RecordID("8" + String(repeating: "0", count: 25)) == nil)   // above 128 bits
        #expect(RecordID("not-an-id") == nil)
        #expect(RecordID(String(repeating: "U", count: 26)) == nil)         // U is not Crockford
    }
}
