import Foundation
import Testing
import Sodium
@testable import VaultCore

@Suite struct SmokeTests {
    @Test func writeReadCorrectDeleteAcrossReopen() async throws {
        let tv = try TestVault()
        let acme = tenant("acme")
        _ = try await tv.vault.createTenant(acme, actor: .system)
        let r = try await tv.vault.write(try newRecord("cust-1", #"{"note":"hello"}"#), tenant: acme, actor: agent)
        let got = try await tv.vault.read(r.id, tenant: acme, actor: agent)
        #expect(got.data.text == #"{"note":"hello"}"#)
        #expect(got.subject.text == "cust-1")
        #expect(got.version == 1)
        let c = try await tv.vault.correct(r.id, data: payload(#"{"note":"fixed"}"#), tenant: acme, actor: agent)
        #expect(c.version == 2)
        let vault = try tv.reopen()
        defer { vault.close() }
        let again = try await vault.read(r.id, tenant: acme, actor: agent)
        #expect(again.data.text == #"{"note":"fixed"}"#)
        #expect(again.version == 2)
        try await vault.delete(r.id, tenant: acme, actor: admin)
        await #expect(throws: VaultError.notFound) { try await vault.read(r.id, tenant: acme, actor: agent) }
        let v = try await vault.verifyAudit()
        #expect(v.isIntact)
        #expect(v.entries == 7)  // tenant.create, write, read, correct, read, delete, read (not found)
    }
}

/// One vault per data directory: a directory whose lock another holder keeps is refused (after
/// the short wait), and one released during that wait is taken (a predecessor still exiting, or
/// a child being spawned that holds a copy of the descriptor until its exec).
@Suite struct DirectoryLockTests {
    @Test func aHeldDirectoryIsRefusedAndOneReleasedMeanwhileIsTaken() async throws {
        let tv = try TestVault()
        let data = tv.dir.data
        // The open vault holds the lock: another open is refused, naming the directory.
        #expect { _ = try Vault.open(dataDirectory: data, masterKeyFile: tv.dir.keyFile) } throws: {
            "\($0)".contains("\(data) is in use by another process")
        }
        // Another holder that lets go within the wait.
        tv.vault.close()
        let holder = try DirectoryLock(directory: data)
        // A thread of its own: the open below blocks this one while it waits.
        Thread.detachNewThread {
            usleep(300_000)
            holder.release()
        }
        let reopened = try Vault.open(dataDirectory: data, masterKeyFile: tv.dir.keyFile)
        reopened.close()
    }
}
