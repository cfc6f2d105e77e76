import Foundation
import Locking
import Sodium
@testable import VaultCore

/// A temporary directory per test, removed when the value is released.
final class TemporaryDirectory: Sendable {
    let path: String

    init() {
        let base = FileManager.default.temporaryDirectory.path
        path = base + "/shredvault-test-" + UUID().uuidString.prefix(8).lowercased()
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true,
                                                 attributes: [.posixPermissions: 0o700])
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    var data: String { path + "/data" }
    var keyFile: String { path + "/keys/master.key" }
}

/// A clock tests move by hand, to cross expiry boundaries without sleeping.
final class ManualClock: Sendable {
    private let ms: Locked<Int64>
    init(_ start: Int64 = 1_800_000_000_000) { ms = Locked(start) }
    var now: Int64 { ms.withLock { $0 } }
    func advance(seconds: Int64) { ms.withLock { $0 += seconds * 1000 } }
    func advance(milliseconds: Int64) { ms.withLock { $0 += milliseconds } }
    var vaultClock: VaultClock { VaultClock { self.now } }
}

/// A vault in a fresh temporary directory.
struct TestVault {
    let dir: TemporaryDirectory
    let clock: ManualClock
    var configuration: VaultConfiguration
    let vault: Vault

    init(bucketWidthSeconds: Int64? = 86_400, maxBatch: Int = 256, sweepBatchSize: Int = 5_000,
         recordsMapSize: Int = 1 << 30, rotationChunkSize: Int = 10_000, auditTail: UInt64 = TestVault.auditTail,
         faults: (@Sendable (FaultPoint) throws -> Void)? = nil) throws {
        dir = TemporaryDirectory()
        clock = ManualClock()
        try FileManager.default.createDirectory(atPath: dir.path + "/keys", withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        configuration = VaultConfiguration(bucketWidthSeconds: bucketWidthSeconds, maxBatch: maxBatch,
                                           keystoreMapSize: 256 << 20, recordsMapSize: recordsMapSize,
                                           sweepBatchSize: sweepBatchSize, clock: clock.vaultClock)
        configuration.rotationChunkSize = rotationChunkSize
        configuration.auditTail = auditTail
        configuration.faultInjector = faults
        vault = try Vault.create(dataDirectory: dir.data, masterKeyFile: dir.keyFile, configuration: configuration)
    }

    /// Closes this vault and opens the same directory again.
    func reopen(faults: (@Sendable (FaultPoint) throws -> Void)? = nil) throws -> Vault {
        vault.close()
        var c = configuration
        c.faultInjector = faults
        return try Vault.open(dataDirectory: dir.data, masterKeyFile: dir.keyFile, configuration: c)
    }
}

let agent = Actor("tok-agent")
let admin = Actor("tok-admin")

func tenant(_ s: String) -> TenantID { try! TenantID(s) }

func payload(_ text: String) -> SensitiveBytes { SensitiveBytes(copying: Array(text.utf8)) }

func newRecord(_ subject: String, _ data: String, category: DataCategory = .personal, channel: Channel = .phone,
               retention: Int64? = nil) throws -> NewRecord {
    NewRecord(subject: try Subject(subject), category: category, channel: channel, data: payload(data),
              retentionSeconds: retention)
}

extension SensitiveBytes {
    var text: String { withUnsafeBytes { String(decoding: $0, as: UTF8.self) } }
}

/// Every file under `path`, recursively, as bytes.
func allFiles(under path: String) throws -> [(String, [UInt8])] {
    var out: [(String, [UInt8])] = []
    guard let e = FileManager.default.enumerator(atPath: path) else { return out }
    for case let rel as String in e {
        let full = path + "/" + rel
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: full, isDirectory: &isDir), !isDir.boolValue {
            out.append((full, Array(try Data(contentsOf: URL(fileURLWithPath: full)))))
        }
    }
    return out
}

func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    guard !needle.isEmpty, haystack.count >= needle.count else { return false }
    // memchr for the first byte, memcmp for the rest: fast enough for a server's data directory.
    return haystack.withUnsafeBytes { h in
        needle.withUnsafeBytes { n in
            guard let base = h.baseAddress, let nb = n.baseAddress else { return false }
            let first = Int32(n[0])
            var offset = 0
            let last = h.count - n.count
            while offset <= last {
                guard let hit = memchr(base + offset, first, last - offset + 1) else { return false }
                let at = base.distance(to: UnsafeRawPointer(hit))
                if memcmp(base + at, nb, n.count) == 0 { return true }
                offset = at + 1
            }
            return false
        }
    }
}

// MARK: - Helpers added for the isolation/erasure/expiry/retention/hold/audit/group-commit/storage suites

import LMDB

extension TestVault {
    /// A vault in a fresh temporary directory with chosen map sizes (e.g. a tiny record store
    /// to reach MDB_MAP_FULL quickly).
    init(recordsMapSize: Int, keystoreMapSize: Int = 256 << 20, bucketWidthSeconds: Int64 = 86_400,
         maxBatch: Int = 256, auditTail: UInt64 = TestVault.auditTail) throws {
        dir = TemporaryDirectory()
        clock = ManualClock()
        try FileManager.default.createDirectory(atPath: dir.path + "/keys", withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        configuration = VaultConfiguration(bucketWidthSeconds: bucketWidthSeconds, maxBatch: maxBatch,
                                           keystoreMapSize: keystoreMapSize, recordsMapSize: recordsMapSize,
                                           clock: clock.vaultClock)
        configuration.auditTail = auditTail
        vault = try Vault.create(dataDirectory: dir.data, masterKeyFile: dir.keyFile, configuration: configuration)
    }

    /// A short audit tail, so that tests read and verify the archive and the tail together.
    static let auditTail: UInt64 = 16

    /// Opens the data directory again; every vault previously opened on it must be closed.
    func openAgain() throws -> Vault {
        try Vault.open(dataDirectory: dir.data, masterKeyFile: dir.keyFile, configuration: configuration)
    }
}

/// A record id no tenant has: fresh random bits.
func unknownRecordID(at milliseconds: Int64 = 1_800_000_000_000) -> RecordID {
    RecordID.generate(milliseconds: milliseconds)
}

/// The internal number of a tenant, read from the keystore files (no vault may be open on the directory).
func storedTenantNumber(_ slug: String, dataDirectory: String) throws -> UInt32 {
    let env = try Environment(path: dataDirectory + "/keystore", databases: Layout.keystoreDatabases)
    defer { env.close() }
    let db = env.database(Layout.tenants)
    let row = try env.read { txn in
        try txn.withValue(forKey: Array(slug.utf8), in: db) { b in try b.map(TenantRow.decode) }
    }
    guard let row else { throw VaultError.tenantNotFound(slug) }
    return row.number
}

/// Every key of the record store's ciphertexts database, read from the files (no vault may be
/// open on the directory).
func storedCiphertextKeys(dataDirectory: String) throws -> [[UInt8]] {
    let env = try Environment(path: dataDirectory + "/records", databases: Layout.recordsDatabases)
    defer { env.close() }
    let db = env.database(Layout.ciphertexts)
    return try env.read { txn in
        var keys: [[UInt8]] = []
        try txn.forEach(in: db) { k, _ in
            keys.append(Array(k))
            return .continue
        }
        return keys
    }
}

/// Edits a vault's files directly (no vault may be open on the directory), both environments
/// in one write, the record store's first as the vault commits: the keystore's transaction and
/// databases, the record store's, and the audit's databases in both.
func withStoredVault<R>(_ dataDirectory: String,
                        _ body: (borrowing Transaction, KeystoreDatabases, borrowing Transaction, AuditDatabases) throws -> R) throws -> R {
    let keystore = try Environment(path: dataDirectory + "/keystore", databases: Layout.keystoreDatabases)
    defer { keystore.close() }
    let records = try Environment(path: dataDirectory + "/records", databases: Layout.recordsDatabases)
    defer { records.close() }
    return try keystore.write { ks in
        try records.write { rec in try body(ks, KeystoreDatabases(keystore), rec, AuditDatabases(keystore: keystore, records: records)) }
    }
}
