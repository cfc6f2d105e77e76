import Foundation
import Testing
import Sodium
@testable import VaultCore

@Suite struct RotationTests {
    static func crash(at target: FaultPoint) -> @Sendable (FaultPoint) throws -> Void {
        { point in if point == target { throw SimulatedCrash() } }
    }

    struct Fixture {
        let kept: [(RecordID, String)]
        let erased: [RecordID]
    }

    static func populate(_ vault: Vault) async throws -> Fixture {
        let acme = tenant("acme"), globex = tenant("globex")
        _ = try await vault.createTenant(acme, actor: .system)
        _ = try await vault.createTenant(globex, actor: .system)
        var kept: [(RecordID, String)] = []
        var erased: [RecordID] = []
        for i in 0..<5 {
            let body = #"{"i":\#(i)}"#
            kept.append((try await vault.write(try newRecord("keep", body), tenant: acme, actor: agent).id, body))
            erased.append(try await vault.write(try newRecord("gone", body), tenant: acme, actor: agent).id)
        }
        _ = try await vault.write(try newRecord("keep", "{}"), tenant: globex, actor: agent)
        _ = try await vault.erase(subject: try Subject("gone"), reference: nil, tenant: acme, actor: admin)
        return Fixture(kept: kept, erased: erased)
    }

    static func check(_ vault: Vault, _ f: Fixture) async throws {
        for (id, body) in f.kept {
            #expect(try await vault.read(id, tenant: tenant("acme"), actor: agent).data.text == body)
        }
        for id in f.erased {
            await #expect(throws: VaultError.notFound) { try await vault.read(id, tenant: tenant("acme"), actor: agent) }
        }
        #expect(try await vault.verifyAudit().isIntact)
    }

    @Test func rotationRekeysDirtyBucketsAndAdvancesTheMasterKey() async throws {
        let tv = try TestVault()
        let f = try await Self.populate(tv.vault)
        let first = try await tv.vault.rotate()
        #expect(first.masterGeneration == 2)
        #expect(first.tenantsRenewed == 2)
        #expect(first.bucketsRekeyed == 1)
        #expect(first.recordsRewrapped == f.kept.count)
        #expect(first.keystoreBytesAfter <= first.keystoreBytesBefore)
        try await Self.check(tv.vault, f)
        // A second rotation has no dirty bucket left.
        let second = try await tv.vault.rotate()
        #expect(second.masterGeneration == 3)
        #expect(second.bucketsRekeyed == 0)
        let vault = try tv.reopen()
        defer { vault.close() }
        try await Self.check(vault, f)
        #expect(try MasterKeyFile(path: tv.dir.keyFile).load().generation == 3)
        #expect(!FileManager.default.fileExists(atPath: tv.dir.keyFile + ".next"))
    }

    /// A crash at each point of rotation and compaction leaves a vault that opens and reads
    /// correctly with whichever master key generation is committed.
    @Test(arguments: [
        (FaultPoint.rotationNextKeyWritten, UInt64(1)),
        (.rotationKeystoreCommitted, 2),
        (.rotationKeyPromoted, 2),
        (.compactionCopied, 2),
        (.compactionBetweenRenames, 2),
    ])
    func crashDuringRotationLeavesAReadableVault(point: FaultPoint, committedGeneration: UInt64) async throws {
        let tv = try TestVault(faults: Self.crash(at: point))
        let f = try await Self.populate(tv.vault)
        await #expect(throws: (any Error).self) { try await tv.vault.rotate() }
        // The crashed writer takes nothing more.
        await #expect(throws: (any Error).self) { try await tv.vault.listTenants() }

        let vault = try tv.reopen()
        defer { vault.close() }
        #expect(try MasterKeyFile(path: tv.dir.keyFile).load().generation == committedGeneration)
        for leftover in [tv.dir.keyFile + ".next", tv.dir.data + "/keystore.new", tv.dir.data + "/keystore.old"] {
            #expect(!FileManager.default.fileExists(atPath: leftover), "\(leftover) left behind")
        }
        try await Self.check(vault, f)
        // And the next rotation completes.
        let summary = try await vault.rotate()
        #expect(summary.masterGeneration == committedGeneration + 1)
        try await Self.check(vault, f)
    }

    @Test func compactionShrinksTheKeystoreAndKeepsEverything() async throws {
        let tv = try TestVault()
        let acme = tenant("acme")
        _ = try await tv.vault.createTenant(acme, actor: .system)
        for i in 0..<300 { _ = try await tv.vault.write(try newRecord("s\(i % 3)", #"{"n":\#(i)}"#), tenant: acme, actor: agent) }
        _ = try await tv.vault.erase(subject: try Subject("s0"), reference: nil, tenant: acme, actor: admin)
        _ = try await tv.vault.erase(subject: try Subject("s1"), reference: nil, tenant: acme, actor: admin)
        #expect(try !tv.vault.writer.stores.keystore.readsAhead() && !tv.vault.writer.stores.records.readsAhead())
        let (before, after) = try await tv.vault.compact()
        #expect(after < before)
        #expect(try await tv.vault.records(of: try Subject("s2"), tenant: acme, actor: agent).count == 100)
        #expect(try await tv.vault.verifyAudit().isIntact)
        // The compacted keystore is opened as the original was: read-ahead off (random access).
        #expect(try !tv.vault.writer.stores.keystore.readsAhead())
        tv.vault.close()
    }
}

@Suite struct OpeningTests {
    @Test(arguments: [".tmp", ".next.tmp"])
    func aKeyFileCutShortByACrashIsDestroyedAtStartUp(_ suffix: String) async throws {
        let tv = try TestVault()
        let leftover = tv.dir.keyFile + suffix
        let fd = open(leftover, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        #expect(fd >= 0)
        _ = [UInt8](repeating: 0x5A, count: 45).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        let reopened = try tv.reopen()
        defer { reopened.close() }
        #expect(!FileManager.default.fileExists(atPath: leftover))
        #expect(FileManager.default.fileExists(atPath: tv.dir.keyFile))
    }

    @Test func refusesAKeyFileReadableByOthers() async throws {
        let tv = try TestVault()
        tv.vault.close()
        chmod(tv.dir.keyFile, 0o644)
        #expect(throws: VaultError.self) {
            try Vault.open(dataDirectory: tv.dir.data, masterKeyFile: tv.dir.keyFile, configuration: tv.configuration)
        }
        do {
            _ = try Vault.open(dataDirectory: tv.dir.data, masterKeyFile: tv.dir.keyFile, configuration: tv.configuration)
        } catch let VaultError.masterKey(message) {
            #expect(message.contains("chmod 600"))
        }
    }

    @Test func refusesAnotherMasterKey() async throws {
        let tv = try TestVault()
        tv.vault.close()
        let other = tv.dir.path + "/keys/other.key"
        try MasterKeyFile(path: other).create()
        #expect {
            try Vault.open(dataDirectory: tv.dir.data, masterKeyFile: other, configuration: tv.configuration)
        } throws: { error in
            guard case VaultError.masterKey(let m) = error else { return false }
            return m.contains("does not match")
        }
    }

    @Test func refusesAWorldWritableDataDirectory() async throws {
        let tv = try TestVault()
        tv.vault.close()
        chmod(tv.dir.data, 0o777)
        #expect {
            try Vault.open(dataDirectory: tv.dir.data, masterKeyFile: tv.dir.keyFile, configuration: tv.configuration)
        } throws: { error in
            guard case VaultError.dataDirectory(let m) = error else { return false }
            return m.contains("world-writable")
        }
    }

    @Test func refusesADataDirectoryAlreadyOpen() async throws {
        let tv = try TestVault()
        defer { tv.vault.close() }
        #expect {
            try Vault.open(dataDirectory: tv.dir.data, masterKeyFile: tv.dir.keyFile, configuration: tv.configuration)
        } throws: { error in
            guard case VaultError.dataDirectory(let m) = error else { return false }
            return m.contains("in use")
        }
    }

    @Test func refusesToOverwriteAKeyFileOrAVault() async throws {
        let tv = try TestVault()
        tv.vault.close()
        #expect(throws: VaultError.self) {
            try Vault.create(dataDirectory: tv.dir.data, masterKeyFile: tv.dir.path + "/keys/new.key", configuration: tv.configuration)
        }
        #expect(throws: VaultError.self) {
            try Vault.create(dataDirectory: tv.dir.path + "/data2", masterKeyFile: tv.dir.keyFile, configuration: tv.configuration)
        }
    }

    @Test func createdFilesArePrivate() async throws {
        let tv = try TestVault()
        tv.vault.close()
        for path in [tv.dir.keyFile, tv.dir.data + "/keystore/data.mdb", tv.dir.data + "/records/data.mdb"] {
            var st = stat()
            #expect(stat(path, &st) == 0)
            #expect(st.st_mode & 0o077 == 0, "\(path) has mode \(String(st.st_mode & 0o777, radix: 8))")
        }
    }
}
