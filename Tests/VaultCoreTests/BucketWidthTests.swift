import Foundation
import LMDB
import Testing
@testable import VaultCore

/// The expiry-bucket width is the vault's, recorded when it is created: a restart with
/// another width would move every expiry (a narrower one shreds records months early).
@Suite struct BucketWidthTests {
    let acme = tenant("acme")

    /// The width recorded in the keystore files (no vault may be open on the directory).
    private func recordedWidth(_ dataDirectory: String) throws -> Int64? {
        let env = try Environment(path: dataDirectory + "/keystore", databases: Layout.keystoreDatabases)
        defer { env.close() }
        return try env.read { try Vault.storedBucketWidth(in: $0, meta: env.database(Layout.meta)) }
    }

    private func open(_ tv: TestVault, width: Int64?) throws -> Vault {
        var c = tv.configuration
        c.requestedBucketWidthSeconds = width
        return try Vault.open(dataDirectory: tv.dir.data, masterKeyFile: tv.dir.keyFile, configuration: c)
    }

    private func files(_ tv: TestVault) throws -> [Data] {
        try ["keystore", "records"].map { try Data(contentsOf: URL(fileURLWithPath: tv.dir.data + "/\($0)/data.mdb")) }
    }

    @Test func theWidthIsRecordedAtCreation() async throws {
        let narrow = try TestVault(bucketWidthSeconds: 1)
        narrow.vault.close()
        #expect(try recordedWidth(narrow.dir.data) == 1)
        let wide = try TestVault(bucketWidthSeconds: nil)
        wide.vault.close()
        #expect(try recordedWidth(wide.dir.data) == 86_400)
        #expect(wide.vault.configuration.bucketWidthSeconds == 86_400)
    }

    /// The reported data loss: a P1D vault restarted with PT1S would destroy every bucket key
    /// at the next sweep, shredding records with 92 days left.
    @Test func reopeningWithAnotherWidthIsRefusedAndChangesNothing() async throws {
        let tv = try TestVault(bucketWidthSeconds: nil)
        _ = try await tv.vault.createTenant(acme, actor: .system)
        let r = try await tv.vault.write(try newRecord("cust-1", #"{"n":1}"#), tenant: acme, actor: agent)
        tv.vault.close()
        let before = try files(tv)

        for (asked, text) in [(Int64(1), "PT1S"), (172_800, "P2D"), (3_600, "PT1H")] {
            #expect {
                try open(tv, width: asked).close()
            } throws: { error in
                guard case VaultError.invalidArgument(let message) = error else { return false }
                return message.contains("expiry buckets are P1D wide") && message.contains(text)
                    && message.contains("would move every expiry")
            }
        }
        #expect(try files(tv) == before, "a refused open wrote to the vault")
        #expect(try recordedWidth(tv.dir.data) == 86_400)

        // Without a width, or with the right one, it opens; a day's sweep destroys nothing.
        for width in [nil, Int64(86_400)] {
            let v = try open(tv, width: width)
            #expect(v.configuration.bucketWidthSeconds == 86_400)
            tv.clock.advance(seconds: 2 * 86_400)
            #expect(try await v.sweep().bucketsDestroyed == 0)
            #expect(try await v.read(r.id, tenant: acme, actor: agent).data.text == #"{"n":1}"#)
            v.close()
        }
    }

    /// What `serve` without `--bucket-width` does on a PT1S vault: the recorded width applies,
    /// so a record with two seconds of retention is shredded by the sweep once its second is past.
    @Test func openingWithoutAWidthUsesTheRecordedOne() async throws {
        let tv = try TestVault(bucketWidthSeconds: 1)
        tv.vault.close()
        let v = try open(tv, width: nil)
        defer { v.close() }
        #expect(v.configuration.bucketWidthSeconds == 1)
        _ = try await v.createTenant(acme, actor: .system)
        let short = try await v.write(try newRecord("cust-1", #"{"s":1}"#, retention: 2), tenant: acme, actor: agent)
        let long = try await v.write(try newRecord("cust-1", #"{"l":1}"#), tenant: acme, actor: agent)
        tv.clock.advance(seconds: 4)
        let swept = try await v.sweep()
        #expect(swept.bucketsDestroyed == 1)
        #expect(swept.entriesRemoved == 1)
        await #expect(throws: VaultError.notFound) { try await v.read(short.id, tenant: acme, actor: agent) }
        #expect(try await v.read(long.id, tenant: acme, actor: agent).data.text == #"{"l":1}"#)
    }

    /// A vault created before the width was recorded has run with the width it is opened
    /// with: the first open records that one, and it holds from then on.
    @Test func aVaultWithoutARecordedWidthRecordsTheOneItIsOpenedWith() async throws {
        for (first, recorded) in [(Int64?.some(1), Int64(1)), (nil, 86_400)] {
            let tv = try TestVault(bucketWidthSeconds: first)
            tv.vault.close()
            let env = try Environment(path: tv.dir.data + "/keystore", databases: Layout.keystoreDatabases)
            try env.write { txn in _ = try txn.delete(key: Vault.metaBucketWidth, in: env.database(Layout.meta)) }
            env.close()
            #expect(try recordedWidth(tv.dir.data) == nil)

            let v = try open(tv, width: first)
            #expect(v.configuration.bucketWidthSeconds == recorded)
            v.close()
            #expect(try recordedWidth(tv.dir.data) == recorded)
            let again = try open(tv, width: nil)
            #expect(again.configuration.bucketWidthSeconds == recorded)
            again.close()
            #expect(throws: VaultError.self) { try open(tv, width: recorded + 1).close() }
        }
    }

    @Test func aWidthBelowOneSecondOrAboveTheMaximumIsRefused() throws {
        for width: Int64 in [0, -1, ISODuration.maximumSeconds + 1] {
            let dir = TemporaryDirectory()
            #expect(throws: VaultError.self) {
                try Vault.create(dataDirectory: dir.data, masterKeyFile: dir.keyFile,
                                 configuration: VaultConfiguration(bucketWidthSeconds: width)).close()
            }
        }
    }

    @Test func aDamagedRecordedWidthIsRefused() throws {
        let tv = try TestVault(bucketWidthSeconds: 1)
        tv.vault.close()
        let env = try Environment(path: tv.dir.data + "/keystore", databases: Layout.keystoreDatabases)
        try env.write { txn in try txn.put([1] + .be(UInt64(0)), forKey: Vault.metaBucketWidth, in: env.database(Layout.meta)) }
        env.close()
        #expect(throws: VaultError.corrupt("the recorded bucket width (0 s)")) { try open(tv, width: nil).close() }
    }
}
