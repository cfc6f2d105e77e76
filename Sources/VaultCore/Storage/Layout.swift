import LMDB

/// The named LMDB databases and their key encodings (docs/architecture.md, Storage).
///
/// Keystore keys start with the tenant's internal number (u32, never reused), so a
/// tenant's entries are one contiguous range and ids of one tenant can never address
/// another's. Record ids are time-ordered, so new records append at the right edge.
enum Layout {
    static let keystoreDatabases = [
        meta, tenants, policies, extensions, holds, heldTargets, buckets, deadBuckets,
        records, subjects, byBucket, audit, auditByTenant, tokens, auditTree,
    ]
    static let recordsDatabases = [ciphertexts, audit, auditByTenant, auditTree]

    /// The one-byte code of each database in a journal's change sets (`ChangeLog`). Part of
    /// the journal format: never renumber; a new database takes a new code.
    static let keystoreCodes: [(String, UInt8)] = [
        (meta, 1), (tenants, 2), (policies, 3), (extensions, 4), (holds, 5), (heldTargets, 6), (buckets, 7),
        (deadBuckets, 8), (records, 9), (subjects, 10), (byBucket, 11), (audit, 12), (auditByTenant, 13), (tokens, 14),
        (auditTree, 15),
    ]
    static let recordsCodes: [(String, UInt8)] = [(ciphertexts, 1), (audit, 2), (auditByTenant, 3), (auditTree, 4)]

    // keystore/
    static let meta = "meta"                    // name → value (format, master key generation and check, counters)
    static let tenants = "tenants"              // slug → TenantRow
    static let policies = "policies"            // t → RetentionPolicy
    static let extensions = "extensions"        // t|extID → RetentionExtension
    static let holds = "holds"                  // t|holdID → LegalHoldRow
    static let heldTargets = "held"             // t|kind|target(16) → u32 count of holds on it
    static let buckets = "buckets"              // t|e → BucketRow (wrapped BK, version, dirty)
    static let deadBuckets = "deadbuckets"      // t|e → "" (key destroyed, entries still to remove)
    static let records = "records"              // t|id → RecordMeta (wrapped DEK inside)
    static let subjects = "subjects"            // t|tag(16)|id → ""
    static let byBucket = "bybucket"            // t|e|id → ""
    // The audit's tail (AuditLog, AuditArchive): written with each operation, older rows moved to
    // the record store's databases of the same names, the archive.
    static let audit = "audit"                  // seq → AuditEntry
    static let auditByTenant = "audit_by_tenant" // t|tenant seq → chain seq (u64); t → the tenant's entry count (u64)
    static let tokens = "tokens"                // token id → TokenRow (keyed hash only)
    static let auditTree = "audit_tree"         // log(u32: 0 operator, t tenant)|level(u8)|index(u64) → 32-byte hash (AuditTree)

    // records/
    static let ciphertexts = "ciphertexts"      // t|id|version → sealed record
    // The audit's archive, keyed as in the keystore: entries through the keystore's
    // `audit_archived` (meta), their numbering and every subtree whose last leaf is theirs.

    /// The per-tenant holding bucket: where held records are re-wrapped when their own bucket expires.
    static let holdingBucket = UInt64.max

    static func tenantKey(_ t: UInt32) -> [UInt8] { .be(t) }
    static func recordKey(_ t: UInt32, _ id: RecordID) -> [UInt8] { .be(t) + id.bytes }
    static func ciphertextKey(_ t: UInt32, _ id: RecordID, _ version: UInt32) -> [UInt8] { .be(t) + id.bytes + .be(version) }
    static func bucketKey(_ t: UInt32, _ e: UInt64) -> [UInt8] { .be(t) + .be(e) }
    static func byBucketKey(_ t: UInt32, _ e: UInt64, _ id: RecordID) -> [UInt8] { .be(t) + .be(e) + id.bytes }
    static func subjectKey(_ t: UInt32, _ tag: [UInt8], _ id: RecordID) -> [UInt8] { .be(t) + tag + id.bytes }
    static func subjectPrefix(_ t: UInt32, _ tag: [UInt8]) -> [UInt8] { .be(t) + tag }
    static func auditKey(_ seq: UInt64) -> [UInt8] { .be(seq) }
    static func auditByTenantKey(_ t: UInt32, _ seq: UInt64) -> [UInt8] { .be(t) + .be(seq) }
    static func auditCountKey(_ t: UInt32) -> [UInt8] { .be(t) }
}

/// Reads the big-endian integer at `offset` of a key lent by LMDB.
func readBE<T: FixedWidthInteger>(_ bytes: UnsafeRawBufferPointer, at offset: Int, as: T.Type = T.self) -> T {
    var v: T = 0
    for i in 0..<MemoryLayout<T>.size { v = v << 8 | T(bytes[offset + i]) }
    return v
}
