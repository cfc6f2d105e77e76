import Testing
import LMDB
import Sodium
@testable import VaultCore

/// The group-commit fast path runs a batch's operations directly in its transactions; an
/// operation that fails after writing must leave nothing behind and fail alone.
@Suite struct FastPathTests {
    @Test func anOperationThatFailsAfterWritingLeavesNothingAndFailsAlone() async throws {
        let tv = try TestVault()
        let acme = tenant("acme")
        _ = try await tv.vault.createTenant(acme, actor: .system)
        let marker = Array("fast-path-marker".utf8)
        let vault = tv.vault
        let results = await withTaskGroup(of: (Int, Bool).self) { group in
            for i in 0..<64 {
                group.addTask {
                    if i % 16 == 7 {
                        // Writes, then fails: its write must be rolled back.
                        let failed: Bool
                        do {
                            try await vault.perform { ks, _, _ in
                                try ks.put([1], forKey: marker + [UInt8(i)], in: vault.writer.stores.ks.meta)
                                throw VaultError.invalidArgument("deliberate failure")
                            }
                            failed = false
                        } catch {
                            failed = error as? VaultError == .invalidArgument("deliberate failure")
                        }
                        return (i, failed)
                    }
                    let ok = (try? await vault.write(try newRecord("s\(i)", #"{"i":\#(i)}"#), tenant: acme, actor: agent)) != nil
                    return (i, ok)
                }
            }
            var out: [Int: Bool] = [:]
            for await (i, ok) in group { out[i] = ok }
            return out
        }
        #expect(results.count == 64)
        #expect(results.values.allSatisfy { $0 })
        let reopened = try tv.reopen()
        defer { reopened.close() }
        #expect(try await reopened.verifyAudit().isIntact)
        let leftovers = try await reopened.perform { ks, _, _ in
            try (0..<64).filter { try ks.contains(key: marker + [UInt8($0)], in: reopened.writer.stores.ks.meta) }
        }
        #expect(leftovers.isEmpty)
        let stats = try await reopened.statistics()
        #expect(stats.records == 60)
    }
}
