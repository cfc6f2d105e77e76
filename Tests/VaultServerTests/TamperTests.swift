import Foundation
import Sodium
import Testing
import VaultClient
@testable import VaultCore
#if canImport(Glibc)
import Glibc
#endif

// The tamper suite (issue 5). Every test stops the daemon, edits bytes on disk (LMDB values
// through the repo's LMDB module, or the master key file), starts the real daemon again on
// the same directories and asks through the real socket. The promise it checks:
//
// - a 200 for a record always carries exactly the bytes it carried before the tamper;
// - a damaged record answers a 500 problem (naming the record or the key that failed), or
//   a 404 where the tamper only takes the record away (expiry moved into the past, metadata
//   row deleted: the same power as deleting it);
// - records the damaged bytes do not protect still read back, and /healthz answers;
// - a damaged audit entry is named by GET /v1/admin/audit/verify;
// - a damaged, missing, loose (0644) or foreign master key file stops the daemon from
//   starting with a clear error (in process and through the `shredvault serve` binary), and
//   the vault opens intact once the file is put back.
//
// Known limitations, kept visible as known issues (`withKnownIssue`) in their own tests:
// - rotation stops at the first damaged key or row, for every tenant (so does a sweep that
//   meets undecodable metadata);
// - the subject index is not authenticated: a removed entry hides a record from its
//   subject's erasure (a planted one is refused since this suite: listing and erasure check
//   the record's authenticated tag);
// - the audit chain is an unkeyed hash chain: a rewrite that recomputes every later hash and
//   the head is not detected;
// - an earlier authentic state (metadata and ciphertext put back together) reads back until
//   the next rotation re-keys the bucket.

/// What one record read must answer after a tamper.
enum TamperReadOutcome: Sendable, CustomStringConvertible {
    /// 200 carrying exactly the original bytes.
    case readsBack
    /// A 500 problem whose detail contains every given text (a record id, a key's name).
    case serverError([String])
    /// A 404 problem, as for an expired or erased record: the tamper only took it away.
    case notFound
    /// 200 with the original bytes, or a problem with one of these statuses.
    case readsBackOr(Set<Int>)

    var description: String {
        switch self {
        case .readsBack: "200 with the original bytes"
        case .serverError(let texts): "500 naming \(texts)"
        case .notFound: "404"
        case .readsBackOr(let s): "200 with the original bytes or one of \(s.sorted())"
        }
    }
}

/// What a tamper must lead to.
struct TamperExpectation: Sendable {
    /// Per record label; records not listed read back exactly.
    var reads: [String: TamperReadOutcome] = [:]
    /// What reads answer once a sweep and a rotation have run, when it differs from `reads`
    /// (a rotation skips a damaged data key and trims the key version it was wrapped under).
    var readsAfterRotation: [String: TamperReadOutcome]? = nil
    /// The audit entry verify must name as the first broken one (nil: the chain is intact).
    var auditBrokenAt: UInt64? = nil
    /// The daemon must refuse to start with an error containing this text.
    var refusal: String? = nil
    /// Whether an untouched tenant (initech) can still write and read a new record.
    var writes = true
    /// Tenants whose listing may fail although no record read does (a damaged blinding key).
    var listingsMayFail: Set<String> = []
    /// More checks through the API (subject routes, cross-tenant probes); returns problems.
    var extra: (@Sendable (TamperVault) async -> [String])? = nil
}

enum TamperCase: String, CaseIterable, Sendable, CustomTestStringConvertible {
    // records/ciphertexts
    case ciphertextByteFlipped, ciphertextFormatByteFlipped, ciphertextNonceFlipped, ciphertextTagFlipped
    case ciphertextTruncated, ciphertextCutToHeader, ciphertextExtended, ciphertextEmptied, ciphertextDeleted
    case ciphertextMovedWithinTenant, ciphertextMovedAcrossTenants, ciphertextsSwapped
    // wrapped keys
    case dekByteFlipped, dekFormatByteFlipped, dekTruncated, deksSwapped, dekMovedAcrossTenants
    case bucketKeyFlipped, bucketKeysSwapped, bucketVersionChanged, bucketKeyDeleted
    case rootKeyFlipped, rootKeysSwapped, rootKeyGenerationChanged, tenantRowsSwapped, blindingKeyFlipped
    // record metadata
    case metadataCategoryChanged, metadataChannelChanged, metadataCreatedAtChanged, metadataExpiryExtended
    case metadataExpiryMovedToThePast, metadataSubjectTagChanged, metadataVersionChanged, metadataBucketChanged
    case metadataBucketVersionChanged, metadataCiphertextCountChanged, metadataFormatByteFlipped, metadataTruncated
    case metadataRowsSwapped, metadataMovedAcrossTenants, metadataDeleted
    // audit log
    case auditEntryContentFlipped, auditEntryHashFlipped, auditEntryPrevFlipped, auditEntryTruncated
    case auditEntryDeleted, auditEntriesSwapped, auditTailDeleted, auditHeadHashFlipped, auditHeadRolledBack
    // master key file, and the keystore's record of it
    case masterKeyByteFlipped, masterKeyHeaderFlipped, masterKeyTruncated, masterKeyExtended
    case masterKeyWrongGeneration, masterKeyWorldReadable, masterKeyGroupReadable, masterKeyMissing
    case masterKeyOfAnotherVault, masterKeySymlink, masterKeyIsADirectory
    case masterKeyCheckFlipped, tokenHashKeyFlipped, keystoreFormatChanged

    var testDescription: String { rawValue }
}

extension TamperCase {
    /// Edits the stopped vault and says what must follow.
    func apply(to v: TamperVault) throws -> TamperExpectation {
        let ks = TamperVault.Env.keystore, rec = TamperVault.Env.records
        let ct = Layout.ciphertexts
        /// Each label answers a 500 naming its record id.
        func named(_ labels: String...) -> [String: TamperReadOutcome] {
            Dictionary(uniqueKeysWithValues: labels.map { ($0, .serverError([v.id($0)])) })
        }
        func all(_ labels: [String], _ outcome: TamperReadOutcome) -> [String: TamperReadOutcome] {
            Dictionary(uniqueKeysWithValues: labels.map { ($0, outcome) })
        }
        let placement = try v.placement()
        func sameBucket(as label: String) -> [String] { v.labels.filter { placement[$0]! == placement[label]! } }
        func ofTenant(_ t: String) -> [String] { v.labels.filter { v.records[$0]!.tenant == t } }
        func swap(_ env: TamperVault.Env, _ db: String, _ k1: [UInt8], _ k2: [UInt8]) throws {
            let a = try #require(try v.value(env, db, k1)), b = try #require(try v.value(env, db, k2))
            try v.set(env, db, k1, b)
            try v.set(env, db, k2, a)
        }
        func modifyBucket(_ label: String, _ change: (inout BucketRow) -> Void) throws {
            try v.modify(ks, Layout.buckets, try v.bucketKey(label)) { b in
                var row = try b.withUnsafeBytes { try BucketRow.decode($0) }
                change(&row)
                b = row.encode()
            }
        }
        func modifyTenant(_ slug: String, _ change: (inout TenantRow) -> Void) throws {
            try v.modify(ks, Layout.tenants, Array(slug.utf8)) { b in
                var row = try b.withUnsafeBytes { try TenantRow.decode($0) }
                change(&row)
                b = row.encode()
            }
        }
        let head = try #require(try v.value(ks, Layout.meta, AuditLog.headKey)).withUnsafeBytes { try AuditHead.decode($0) }
        func auditEntry(_ seq: UInt64, _ change: (inout [UInt8]) -> Void) throws {
            try v.modify(ks, Layout.audit, Layout.auditKey(seq), change)
        }
        let bucketKeyOfAcme = ["bucket key", "of tenant acme"]

        switch self {
        // MARK: ciphertexts
        case .ciphertextByteFlipped:
            try v.modify(rec, ct, try v.ciphertextKey("a1")) { $0[$0.count / 2] ^= 0x01 }
            return .init(reads: named("a1"))
        case .ciphertextFormatByteFlipped:
            try v.modify(rec, ct, try v.ciphertextKey("a1")) { $0[0] ^= 0x80 }
            return .init(reads: named("a1"))
        case .ciphertextNonceFlipped:
            try v.modify(rec, ct, try v.ciphertextKey("a1")) { $0[1] ^= 0x01 }
            return .init(reads: named("a1"))
        case .ciphertextTagFlipped:
            try v.modify(rec, ct, try v.ciphertextKey("a1")) { $0[$0.count - 1] ^= 0x01 }
            return .init(reads: named("a1"))
        case .ciphertextTruncated:
            try v.modify(rec, ct, try v.ciphertextKey("a1")) { $0.removeLast() }
            return .init(reads: named("a1"))
        case .ciphertextCutToHeader:
            try v.modify(rec, ct, try v.ciphertextKey("a1")) { $0 = Array($0.prefix(12)) }
            return .init(reads: named("a1"))
        case .ciphertextExtended:
            try v.modify(rec, ct, try v.ciphertextKey("a1")) { $0.append(0) }
            return .init(reads: named("a1"))
        case .ciphertextEmptied:
            try v.modify(rec, ct, try v.ciphertextKey("a1")) { $0 = [] }
            return .init(reads: named("a1"))
        case .ciphertextDeleted:
            try v.set(rec, ct, try v.ciphertextKey("a1"), nil)
            return .init(reads: named("a1"))
        case .ciphertextMovedWithinTenant:
            try v.set(rec, ct, try v.ciphertextKey("a1"), try v.value(rec, ct, try v.ciphertextKey("a2")))
            return .init(reads: named("a1"))
        case .ciphertextMovedAcrossTenants:
            try v.set(rec, ct, try v.ciphertextKey("a1"), try v.value(rec, ct, try v.ciphertextKey("g1")))
            return .init(reads: named("a1"))
        case .ciphertextsSwapped:
            try swap(rec, ct, try v.ciphertextKey("a1"), try v.ciphertextKey("a2"))
            return .init(reads: named("a1", "a2"))

        // MARK: wrapped keys
        case .dekByteFlipped:
            try v.modifyMeta("a1") { $0.wrappedDEK[10] ^= 0x01 }
            return .init(reads: named("a1"))
        case .dekFormatByteFlipped:
            try v.modifyMeta("a1") { $0.wrappedDEK[0] ^= 0x80 }
            return .init(reads: ["a1": .serverError([v.id("a1"), "not a wrapped key"])],
                         readsAfterRotation: ["a1": .serverError([v.id("a1"), "bucket key", "is gone"])])
        case .dekTruncated:
            try v.modifyMeta("a1") { $0.wrappedDEK.removeLast() }
            return .init(reads: ["a1": .serverError([v.id("a1"), "not a wrapped key"])],
                         readsAfterRotation: ["a1": .serverError([v.id("a1"), "bucket key", "is gone"])])
        case .deksSwapped:
            let a1 = try v.meta("a1").wrappedDEK, a2 = try v.meta("a2").wrappedDEK
            try v.modifyMeta("a1") { $0.wrappedDEK = a2 }
            try v.modifyMeta("a2") { $0.wrappedDEK = a1 }
            return .init(reads: named("a1", "a2"))
        case .dekMovedAcrossTenants:
            let g1 = try v.meta("g1").wrappedDEK
            try v.modifyMeta("a1") { $0.wrappedDEK = g1 }
            return .init(reads: named("a1"))
        case .bucketKeyFlipped:
            try modifyBucket("a1") { var w = $0.current.wrappedBK; w[20] ^= 0x01; $0 = $0.withCurrent(wrappedBK: w) }
            return .init(reads: all(sameBucket(as: "a1"), .serverError(bucketKeyOfAcme)))
        case .bucketKeysSwapped:
            try #require(placement["a1"]! != placement["a4"]!, "a4 must sit in another bucket than a1")
            let k1 = try v.bucketKey("a1"), k4 = try v.bucketKey("a4")
            let b1 = try #require(try v.value(ks, Layout.buckets, k1)).withUnsafeBytes { try BucketRow.decode($0) }
            let b4 = try #require(try v.value(ks, Layout.buckets, k4)).withUnsafeBytes { try BucketRow.decode($0) }
            try modifyBucket("a1") { $0 = $0.withCurrent(wrappedBK: b4.current.wrappedBK) }
            try modifyBucket("a4") { $0 = $0.withCurrent(wrappedBK: b1.current.wrappedBK) }
            return .init(reads: all(sameBucket(as: "a1") + sameBucket(as: "a4"), .serverError(bucketKeyOfAcme)))
        case .bucketVersionChanged:
            try modifyBucket("a1") { $0 = BucketRow(version: $0.current.number + 1, dirty: $0.dirty, wrappedBK: $0.current.wrappedBK) }
            return .init(reads: all(sameBucket(as: "a1"), .serverError(bucketKeyOfAcme)))
        case .bucketKeyDeleted:
            // A live record whose bucket key is gone: only the sweep may destroy a bucket key,
            // and only once every record in it has expired.
            try v.set(ks, Layout.buckets, try v.bucketKey("a1"), nil)
            return .init(reads: Dictionary(uniqueKeysWithValues: sameBucket(as: "a1").map {
                ($0, .serverError([v.id($0), "bucket key"]))
            }))
        case .rootKeyFlipped:
            try modifyTenant("acme") { $0.wrappedTRK[30] ^= 0x01 }
            return .init(reads: all(ofTenant("acme"), .serverError(["root key of tenant acme"])))
        case .rootKeysSwapped:
            let acme = try v.tenantRow("acme").wrappedTRK, globex = try v.tenantRow("globex").wrappedTRK
            try modifyTenant("acme") { $0.wrappedTRK = globex }
            try modifyTenant("globex") { $0.wrappedTRK = acme }
            return .init(reads: all(ofTenant("acme"), .serverError(["root key of tenant acme"]))
                .merging(all(ofTenant("globex"), .serverError(["root key of tenant globex"]))) { a, _ in a })
        case .rootKeyGenerationChanged:
            try modifyTenant("acme") { $0.trkGeneration += 1 }
            return .init(reads: all(ofTenant("acme"), .serverError(["root key of tenant acme"])))
        case .tenantRowsSwapped:
            // acme's slug now resolves to globex's number and keys: acme's ids are unknown
            // under it, and globex's ids fail on the root key (its AD names the slug).
            try swap(ks, Layout.tenants, Array("acme".utf8), Array("globex".utf8))
            let g1 = v.id("g1"), a1 = v.id("a1")
            return .init(reads: all(ofTenant("acme") + ofTenant("globex"), .notFound), extra: { v in
                var problems: [String] = []
                for (tenant, id) in [("acme", g1), ("globex", a1)] {
                    guard let r = try? await v.agent(tenant).send("GET", "/v1/records/\(id)") else {
                        problems.append("\(tenant) probing another tenant's id: no answer")
                        continue
                    }
                    if r.status == 200 { problems.append("\(tenant)'s token read another tenant's record after the swap") }
                    if r.status != 500 && r.status != 404 { problems.append("\(tenant) probe: \(r.status) \(r.text)") }
                }
                return problems
            })
        case .blindingKeyFlipped:
            // Reads by id never need the subject blinding key; subject routes and writes do.
            try modifyTenant("acme") { $0.wrappedSBK[30] ^= 0x01 }
            return .init(listingsMayFail: ["acme"], extra: { v in
                var problems: [String] = []
                let sbk = "subject blinding key of tenant acme"
                let list = try? await v.agent("acme").send("POST", "/v1/subjects/records", body: json(["subject": "cust-1"]))
                if list?.status != 500 || list?.isProblem != true || list?.text.contains(sbk) != true {
                    problems.append("acme subject listing: expected a 500 naming the blinding key, got \(list?.status ?? 0) \(list?.text ?? "")")
                }
                let write = try? await v.agent("acme").send("POST", "/v1/records", body: json(
                    ["subject": "cust-1", "category": "personal", "channel": "phone", "data": ["x": 1]]))
                if write?.status != 500 || write?.text.contains(sbk) != true {
                    problems.append("acme write: expected a 500 naming the blinding key, got \(write?.status ?? 0) \(write?.text ?? "")")
                }
                let other = try? await v.agent("globex").send("POST", "/v1/subjects/records", body: json(["subject": "cust-1"]))
                if other?.status != 200 || other?.text.contains(v.id("g1")) != true {
                    problems.append("globex subject listing: \(other?.status ?? 0) \(other?.text ?? "")")
                }
                return problems
            })

        // MARK: record metadata
        case .metadataCategoryChanged:
            try v.modifyMeta("a1") { $0.category = $0.category == .nonPersonal ? .personal : .nonPersonal }
            return .init(reads: named("a1"))
        case .metadataChannelChanged:
            try v.modifyMeta("a1") { $0.channel = $0.channel == .email ? .chat : .email }
            return .init(reads: named("a1"))
        case .metadataCreatedAtChanged:
            try v.modifyMeta("a1") { $0.createdAt -= 86_400_000 }
            return .init(reads: named("a1"))
        case .metadataExpiryExtended:
            try v.modifyMeta("a1") { $0.expiresAt += 400 * 86_400_000 }
            return .init(reads: named("a1"))
        case .metadataExpiryMovedToThePast:
            // Reads refuse at expires_at before any key is touched: a tamper that only
            // shortens a record's life answers like expiry (denial, never disclosure).
            try v.modifyMeta("a1") { $0.expiresAt = $0.createdAt + 1 }
            return .init(reads: ["a1": .notFound])
        case .metadataSubjectTagChanged:
            try v.modifyMeta("a1") { $0.tag[0] ^= 0x01 }
            return .init(reads: named("a1"))
        case .metadataVersionChanged:
            try v.modifyMeta("a1") { $0.version += 1 }
            return .init(reads: named("a1"))
        case .metadataBucketChanged:
            try v.modifyMeta("a1") { $0.bucket += 1000 }
            return .init(reads: ["a1": .serverError([v.id("a1"), "bucket key"])])
        case .metadataBucketVersionChanged:
            try v.modifyMeta("a1") { $0.bucketVersion += 1 }
            return .init(reads: named("a1"))
        case .metadataCiphertextCountChanged:
            // Only the report's byte counts use it: nothing to detect, nothing to disclose.
            try v.modifyMeta("a1") { $0.ciphertextCount += 100 }
            return .init()
        case .metadataFormatByteFlipped:
            // A row this build cannot decode is `corrupt`, which the API answers as a bare
            // "internal error" (Problem.from); the server's log line names the record.
            try v.modify(ks, Layout.records, try v.metaKey("a1")) { $0[0] ^= 0x80 }
            return .init(reads: ["a1": .serverError(["internal error"])])
        case .metadataTruncated:
            try v.modify(ks, Layout.records, try v.metaKey("a1")) { $0.removeLast(5) }
            return .init(reads: ["a1": .serverError(["internal error"])])
        case .metadataRowsSwapped:
            try swap(ks, Layout.records, try v.metaKey("a1"), try v.metaKey("a2"))
            return .init(reads: named("a1", "a2"))
        case .metadataMovedAcrossTenants:
            try v.set(ks, Layout.records, try v.metaKey("a1"), try v.value(ks, Layout.records, try v.metaKey("g1")))
            return .init(reads: named("a1"))
        case .metadataDeleted:
            // Without its metadata (and wrapped DEK) the record does not exist: like an erasure.
            try v.set(ks, Layout.records, try v.metaKey("a1"), nil)
            return .init(reads: ["a1": .notFound])

        // MARK: audit log
        case .auditEntryContentFlipped:
            try auditEntry(5) { $0[10] ^= 0x01 }
            return .init(auditBrokenAt: 5)
        case .auditEntryHashFlipped:
            try auditEntry(5) { $0[$0.count - 1] ^= 0x01 }
            return .init(auditBrokenAt: 5)
        case .auditEntryPrevFlipped:
            try auditEntry(5) { $0[$0.count - 33] ^= 0x01 }
            return .init(auditBrokenAt: 5)
        case .auditEntryTruncated:
            try auditEntry(5) { $0.removeLast() }
            return .init(auditBrokenAt: 5)
        case .auditEntryDeleted:
            try v.set(ks, Layout.audit, Layout.auditKey(5), nil)
            return .init(auditBrokenAt: 5)
        case .auditEntriesSwapped:
            try swap(ks, Layout.audit, Layout.auditKey(5), Layout.auditKey(6))
            return .init(auditBrokenAt: 5)
        case .auditTailDeleted:
            try v.set(ks, Layout.audit, Layout.auditKey(head.seq), nil)
            return .init(auditBrokenAt: head.seq)
        case .auditHeadHashFlipped:
            // New entries chain from the recorded head: the first of them is named.
            try v.modify(ks, Layout.meta, AuditLog.headKey) { $0[$0.count - 1] ^= 0x01 }
            return .init(auditBrokenAt: head.seq + 1)
        case .auditHeadRolledBack:
            // The head points one entry back: the next append collides with the newest entry,
            // so every audited operation fails (closed), and verify names the entry past the head.
            let previous = try #require(try v.value(ks, Layout.audit, Layout.auditKey(head.seq - 1)))
            let hash = Array(previous.suffix(32))
            try v.set(ks, Layout.meta, AuditLog.headKey, AuditHead(seq: head.seq - 1, hash: hash).encode())
            return .init(reads: all(v.labels, .serverError([])), auditBrokenAt: head.seq, writes: false,
                         listingsMayFail: Set(TamperVault.tenants))

        // MARK: master key file
        case .masterKeyByteFlipped:
            try v.modifyKeyFile { $0[20] ^= 0x01 }
            return .init(refusal: "does not match this keystore")
        case .masterKeyHeaderFlipped:
            try v.modifyKeyFile { $0[0] ^= 0x01 }
            return .init(refusal: "not a ShredVault master key file (bad header)")
        case .masterKeyTruncated:
            try v.modifyKeyFile { $0.removeLast() }
            return .init(refusal: "not a ShredVault master key file (wrong size)")
        case .masterKeyExtended:
            try v.modifyKeyFile { $0.append(0) }
            return .init(refusal: "not a ShredVault master key file (wrong size)")
        case .masterKeyWrongGeneration:
            try v.modifyKeyFile { $0[12] = 2 }
            return .init(refusal: "does not match this keystore (it expects generation 1)")
        case .masterKeyWorldReadable:
            try v.modifyKeyFile({ _ in }, mode: 0o644)
            return .init(refusal: "readable or writable by group or others (mode 644)")
        case .masterKeyGroupReadable:
            try v.modifyKeyFile({ _ in }, mode: 0o640)
            return .init(refusal: "readable or writable by group or others (mode 640)")
        case .masterKeyMissing:
            v.saveKeyFile()
            try v.removeKeyFile()
            return .init(refusal: "no such file")
        case .masterKeyOfAnotherVault:
            let other = v.dir + "/keys/other.key"
            try MasterKeyFile(path: other).create()
            let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: other)))
            try FileManager.default.removeItem(atPath: other)
            try v.modifyKeyFile { $0 = bytes }
            return .init(refusal: "does not match this keystore")
        case .masterKeySymlink:
            let real = v.dir + "/keys/master.real"
            v.saveKeyFile()
            try FileManager.default.moveItem(atPath: v.keyFile, toPath: real)
            try FileManager.default.createSymbolicLink(atPath: v.keyFile, withDestinationPath: real)
            v.onUndo { try? FileManager.default.removeItem(atPath: real) }
            return .init(refusal: "cannot open")
        case .masterKeyIsADirectory:
            v.saveKeyFile()
            try v.removeKeyFile()
            try FileManager.default.createDirectory(atPath: v.keyFile, withIntermediateDirectories: false,
                                                    attributes: [.posixPermissions: 0o700])
            return .init(refusal: "is not a regular file")
        case .masterKeyCheckFlipped:
            try v.modify(ks, Layout.meta, Vault.metaMasterKey) { $0[$0.count - 1] ^= 0x01 }
            return .init(refusal: "does not match this keystore")
        case .tokenHashKeyFlipped:
            try v.modify(ks, Layout.meta, Vault.metaTokenKey) { $0[$0.count - 1] ^= 0x01 }
            return .init(refusal: "token hash key failed authentication")
        case .keystoreFormatChanged:
            try v.set(ks, Layout.meta, Vault.metaFormatKey, [2])
            return .init(refusal: "keystore format")
        }
    }
}

// MARK: - Checks through the API

/// Reads every record through the socket and compares each answer with what it must be;
/// also asks /healthz. Returns the problems found (empty: all as expected).
private func checkReads(_ v: TamperVault, _ expected: [String: TamperReadOutcome]) async -> [String] {
    var problems: [String] = []
    do {
        let h = try await v.client(nil).send("GET", "/healthz")
        if h.status != 200 { problems.append("/healthz answered \(h.status)") }
    } catch {
        return ["/healthz: the daemon does not answer (\(error))"]
    }
    for label in v.labels {
        let r: HTTPResponse
        do { r = try await v.read(label) } catch {
            problems.append("\(label): no answer (\(error))")
            continue
        }
        let original = v.records[label]!.original
        if r.status == 200 && r.body != original {
            problems.append("\(label): WRONG PLAINTEXT: a 200 whose bytes differ from the original (\(r.text))")
            continue
        }
        let outcome = expected[label] ?? .readsBack
        let ok: Bool
        switch outcome {
        case .readsBack: ok = r.status == 200
        case .serverError(let texts): ok = r.status == 500 && r.isProblem && texts.allSatisfy { r.problemDetail.contains($0) }
        case .notFound: ok = r.status == 404 && r.isProblem
        case .readsBackOr(let statuses): ok = r.status == 200 || (statuses.contains(r.status) && r.isProblem)
        }
        if !ok { problems.append("\(label): expected \(outcome), got \(r.status) \(r.text)") }
    }
    return problems
}

/// Lists `TamperVault.listedSubject` in every tenant. A 200 must consist of original record
/// bodies only (a subset, in order); tenants outside `mayFail` must list exactly as before.
private func checkListings(_ v: TamperVault, mayFail: Set<String>) async -> [String] {
    var problems: [String] = []
    for tenant in TamperVault.tenants {
        let r: HTTPResponse
        do { r = try await v.listing(tenant) } catch {
            problems.append("listing of \(tenant): no answer (\(error))")
            continue
        }
        let bodies = v.labels.filter { v.records[$0]!.tenant == tenant && v.records[$0]!.subject == TamperVault.listedSubject }
            .sorted { v.id($0) < v.id($1) }.map { v.records[$0]!.original }
        if r.status == 200 {
            var subsets: [[UInt8]] = []
            for mask in 0..<(1 << bodies.count) {
                let chosen: [[UInt8]] = bodies.indices.filter { mask & (1 << $0) != 0 }.map { bodies[$0] }
                let inner: [UInt8] = Array(chosen.joined(separator: [UInt8(ascii: ",")]))
                subsets.append(Array("{\"records\":[".utf8) + inner + Array("]}".utf8))
            }
            if !subsets.contains(r.body) {
                problems.append("listing of \(tenant): WRONG PLAINTEXT: a 200 that is not made of original records (\(r.text))")
            } else if !mayFail.contains(tenant) && r.body != v.listings[tenant] {
                problems.append("listing of \(tenant) changed: \(r.text)")
            }
        } else if !mayFail.contains(tenant) {
            problems.append("listing of \(tenant): \(r.status) \(r.text)")
        } else if !(r.isProblem && [401, 403, 404, 500].contains(r.status)) {
            problems.append("listing of \(tenant): \(r.status) \(r.text)")
        }
    }
    return problems
}

/// Verifies the audit chain through the operator route.
private func checkAudit(_ v: TamperVault, brokenAt: UInt64?) async -> [String] {
    do {
        let r = try await v.operatorClient.send("GET", "/v1/admin/audit/verify")
        guard r.status == 200, let o = try? r.object() else { return ["audit verify: \(r.status) \(r.text)"] }
        let intact = o["intact"] as? Bool, first = (o["first_broken"] as? Int).map(UInt64.init)
        if let brokenAt {
            if intact != false || first != brokenAt { return ["audit verify: expected entry \(brokenAt) named, got \(r.text)"] }
        } else if intact != true {
            return ["audit verify: the chain is reported broken: \(r.text)"]
        }
        return []
    } catch {
        return ["audit verify: no answer (\(error))"]
    }
}

/// An untouched tenant still writes and reads back a new record.
private func checkFreshWrite(_ v: TamperVault) async -> [String] {
    do {
        let agent = v.agent("initech")
        let w = try await agent.send("POST", "/v1/records", body: json(
            ["subject": "cust-new", "category": "personal", "channel": "web", "data": ["fresh": true]]))
        guard w.status == 201, let id = try w.object()["id"] as? String else { return ["initech write: \(w.status) \(w.text)"] }
        let r = try await agent.send("GET", "/v1/records/\(id)")
        guard r.status == 200, (try r.object()["data"] as? [String: Any])?["fresh"] as? Bool == true else {
            return ["initech read of a fresh record: \(r.status) \(r.text)"]
        }
        return []
    } catch {
        return ["initech write: no answer (\(error))"]
    }
}

/// Each label must answer a 500 naming its record id.
private func named(_ v: TamperVault, _ labels: String...) -> [String: TamperReadOutcome] {
    Dictionary(uniqueKeysWithValues: labels.map { ($0, .serverError([v.id($0)])) })
}

extension HTTPResponse {
    fileprivate var problemDetail: String { ((try? object())?["detail"] as? String) ?? "" }
}

private func recordProblems(_ problems: [String], _ context: String, sourceLocation: SourceLocation = #_sourceLocation) {
    for p in problems { Issue.record("\(context): \(p)", sourceLocation: sourceLocation) }
}

// MARK: - The suite

@Suite struct TamperTests {
    /// Each named tamper, then a restart on the same files: detected where it lands, and
    /// nowhere else; then a sweep and a rotation, and the same again.
    @Test(arguments: TamperCase.allCases)
    func tamperIsDetected(_ tamper: TamperCase) async throws {
        let v = try await TamperVault.make()
        do {
            try await run(tamper, on: v)
        } catch {
            Issue.record(error, "\(tamper)")
        }
        await v.remove()
    }

    private func run(_ tamper: TamperCase, on v: TamperVault) async throws {
        let expected = try tamper.apply(to: v)
        if let refusal = expected.refusal {
            try await checkRefusal(tamper, v, refusal)
            return
        }
        try await v.start()
        let mayFail = expected.listingsMayFail.union(expected.reads.keys.map { v.records[$0]!.tenant })
        recordProblems(await checkReads(v, expected.reads), "\(tamper), after restart")
        recordProblems(await checkListings(v, mayFail: mayFail), "\(tamper), after restart")
        recordProblems(await checkAudit(v, brokenAt: expected.auditBrokenAt), "\(tamper), after restart")
        if expected.writes { recordProblems(await checkFreshWrite(v), "\(tamper)") }
        if let extra = expected.extra { recordProblems(await extra(v), "\(tamper)") }

        // The operator's maintenance must neither crash nor launder the damage. A sweep that
        // meets damaged keys or metadata refuses as a whole, naming what failed; a rotation
        // names and skips a damaged key (see rotationNamesAndSkipsOneDamagedRecord): logged
        // here, then everything is read again.
        for route in ["/v1/admin/sweep", "/v1/admin/rotate"] {
            let r = try await v.operatorClient.send("POST", route)
            if r.status != 200 {
                #expect((r.status == 500 || r.status == 503) && r.isProblem, "\(tamper): \(route) answered \(r.status) \(r.text)")
                print("tamper \(tamper): POST \(route) refused: \(r.status) \(r.problemDetail)")
            }
        }
        let readsAfterRotation = expected.readsAfterRotation ?? expected.reads
        recordProblems(await checkReads(v, readsAfterRotation), "\(tamper), after sweep and rotation")
        recordProblems(await checkListings(v, mayFail: mayFail), "\(tamper), after sweep and rotation")
        recordProblems(await checkAudit(v, brokenAt: expected.auditBrokenAt), "\(tamper), after sweep and rotation")

        // And once more from the files, after a second restart.
        await v.stop()
        try await v.start()
        recordProblems(await checkReads(v, readsAfterRotation), "\(tamper), after a second restart")
        await v.stop()
    }

    /// The daemon refuses to start, in process and as the real binary, with a clear error;
    /// the refusal changes nothing: with the file put back, every record reads back.
    private func checkRefusal(_ tamper: TamperCase, _ v: TamperVault, _ refusal: String) async throws {
        do {
            try await v.start()
            Issue.record("\(tamper): the daemon started")
            await v.stop()
        } catch let error as VaultError {
            #expect(error.description.contains(refusal), "\(tamper): \(error)")
        } catch {
            Issue.record("\(tamper): refused with an unexpected error: \(error)")
        }
        let served = try await runShredvaultServe(dir: v.dir)
        #expect(served != nil, "\(tamper): shredvault serve started on the damaged vault")
        if let served {
            #expect(served.status == 1, "\(tamper): shredvault serve exited \(served.status)")
            #expect(served.stderr.contains("shredvault: ") && served.stderr.contains(refusal),
                    "\(tamper): shredvault serve said: \(served.stderr)")
        }
        try v.undo()
        try await v.start()
        recordProblems(await checkReads(v, [:]), "\(tamper), restored")
        recordProblems(await checkListings(v, mayFail: []), "\(tamper), restored")
        recordProblems(await checkAudit(v, brokenAt: nil), "\(tamper), restored")
        await v.stop()
    }
}

// MARK: - Random byte flips

/// Which records a flipped value protects, and what else it may touch.
private enum BlastRadius {
    /// These records may fail (with one of the statuses); every other one must read back.
    case records(Set<String>, statuses: Set<Int>)
    /// No record depends on it; verify must name this audit entry.
    case auditEntry(UInt64)
    /// The audit's numbering or tree (tail or archive): every record reads back and lists, and
    /// nothing is asked of verify, which checks the chain (a tenant's saved heads catch the rest).
    case auditIndex
    /// Shared state (meta: master key check, token key, audit head; tokens): any record may
    /// be refused, the daemon may refuse to start, but a 200 is still exactly the original.
    case anything

    var refusalAllowed: Bool { if case .anything = self { true } else { false } }
}

extension TamperTests {
    /// `SHREDVAULT_TAMPER_ROUNDS` rounds (default 40): one random byte of one random value of
    /// the records or keystore databases is XORed with a random non-zero mask, the daemon is
    /// restarted and every record is read; then the byte is put back. A round passes when no
    /// 200 carries other bytes than the original, every record the value does not protect
    /// reads back, the daemon answers, and a refusal (if any) is a clear error.
    /// `SHREDVAULT_TAMPER_SEED` replays a run.
    @Test func randomByteFlips() async throws {
        let environment = ProcessInfo.processInfo.environment
        let rounds = max(0, Int(environment["SHREDVAULT_TAMPER_ROUNDS"] ?? "") ?? 40)
        let seed = UInt64(environment["SHREDVAULT_TAMPER_SEED"] ?? "") ?? UInt64.random(in: 1...UInt64.max)
        var rng = TamperRandom(seed: seed)
        print("tamper random flips: \(rounds) rounds, SHREDVAULT_TAMPER_SEED=\(seed)")

        let v = try await TamperVault.make()
        // One start with a short tail fills the record store's archive (entries, numbering,
        // subtrees); the rounds run with the default tail, so no move during a round copies a
        // flipped entry out of reach of its undo.
        v.auditTail = 4
        try await v.start()
        await v.stop()
        v.auditTail = AuditArchive.defaultTail
        let placement = try v.placement()
        let byID = Dictionary(uniqueKeysWithValues: v.labels.map { (RecordID(v.id($0))!.bytes, $0) })
        var tenantNumbers: [String: UInt32] = [:]
        for t in TamperVault.tenants { tenantNumbers[t] = try v.tenantNumber(t) }
        let targets: [(TamperVault.Env, String)] = [
            (.records, Layout.ciphertexts), (.keystore, Layout.records), (.keystore, Layout.buckets),
            (.keystore, Layout.tenants), (.keystore, Layout.audit), (.keystore, Layout.meta),
            (.keystore, Layout.tokens), (.keystore, Layout.policies),
            (.records, Layout.audit), (.records, Layout.auditByTenant), (.records, Layout.auditTree),
            (.keystore, Layout.auditByTenant), (.keystore, Layout.auditTree),
        ]

        func radius(_ db: String, _ key: [UInt8]) -> BlastRadius {
            switch db {
            case Layout.ciphertexts:
                return .records([byID[Array(key[4..<20])]].compactMap { $0 }.reduce(into: []) { $0.insert($1) }, statuses: [500])
            case Layout.records:
                return .records([byID[Array(key[4..<20])]].compactMap { $0 }.reduce(into: []) { $0.insert($1) }, statuses: [404, 500])
            case Layout.buckets:
                let t: UInt32 = key.withUnsafeBytes { readBE($0, at: 0) }, e: UInt64 = key.withUnsafeBytes { readBE($0, at: 4) }
                return .records(Set(v.labels.filter { placement[$0]! == (t, e) }), statuses: [500])
            case Layout.tenants:
                let slug = String(decoding: key, as: UTF8.self)
                return .records(Set(v.labels.filter { v.records[$0]!.tenant == slug }), statuses: [401, 404, 500])
            case Layout.audit:
                return .auditEntry(key.withUnsafeBytes { readBE($0, at: 0) })
            case Layout.auditByTenant, Layout.auditTree:
                return .auditIndex
            case Layout.policies:
                return .records([], statuses: [])
            default:
                return .anything
            }
        }

        var passed = 0, failed = 0, detected = 0, noEffect = 0, refused = 0
        for round in stride(from: 1, through: rounds, by: 1) {
            let (env, db) = targets[Int.random(in: 0..<targets.count, using: &rng)]
            // The audit head is left to the named cases: putting an old head back after the
            // daemon appended entries would itself be a tamper (auditHeadRolledBack).
            let values = try v.entries(env, db).filter { !$0.1.isEmpty && !(db == Layout.meta && $0.0 == AuditLog.headKey) }
            guard !values.isEmpty else { continue }
            let (key, value) = values[Int.random(in: 0..<values.count, using: &rng)]
            let offset = Int.random(in: 0..<value.count, using: &rng)
            let mask = UInt8.random(in: 1...255, using: &rng)
            try v.modify(env, db, key) { $0[offset] ^= mask }
            let blast = radius(db, key)
            let what = "\(env.rawValue)/\(db) key \(key.hex.prefix(48)) byte \(offset)/\(value.count) ^0x\(String(mask, radix: 16))"

            var problems: [String] = []
            var effect = "no effect"
            do {
                try await v.start()
                var expected: [String: TamperReadOutcome] = [:]
                switch blast {
                case .records(let labels, let statuses): for l in labels { expected[l] = .readsBackOr(statuses) }
                case .auditEntry, .auditIndex: break
                case .anything: for l in v.labels { expected[l] = .readsBackOr([401, 403, 404, 500]) }
                }
                problems += await checkReads(v, expected)
                var listingsMayFail: Set<String> = []
                switch blast {
                case .records(let labels, _): listingsMayFail = Set(labels.map { v.records[$0]!.tenant })
                case .auditEntry, .auditIndex: break
                case .anything: listingsMayFail = Set(TamperVault.tenants)
                }
                problems += await checkListings(v, mayFail: listingsMayFail)
                switch blast {
                case .auditEntry(let seq): problems += await checkAudit(v, brokenAt: seq)
                case .records: problems += await checkAudit(v, brokenAt: nil)
                case .anything, .auditIndex: break
                }
                // What the round did, for the log line.
                var failing: [String] = []
                for label in v.labels {
                    if let r = try? await v.read(label), r.status != 200 {
                        failing.append("\(label) \(r.status) \(r.problemDetail)")
                    }
                }
                for t in TamperVault.tenants {
                    if let r = try? await v.listing(t), r.status != 200 || r.body != v.listings[t] {
                        failing.append("listing of \(t) \(r.status) \(r.status == 200 ? "without the damaged record" : r.problemDetail)")
                    }
                }
                if case .auditEntry = blast, problems.isEmpty { failing.append("audit verify names the entry") }
                if !failing.isEmpty { effect = "detected: " + failing.joined(separator: "; ") }
                await v.stop()
            } catch let error as VaultError where blast.refusalAllowed {
                effect = "refused to start: \(error)"
                refused += 1
            } catch {
                problems.append("refused to start: \(error)")
                await v.stop()
            }
            try v.undo()
            if problems.isEmpty {
                passed += 1
                if effect == "no effect" { noEffect += 1 } else if !effect.hasPrefix("refused") { detected += 1 }
                print("tamper round \(round): \(what) -> \(effect)")
            } else {
                failed += 1
                print("tamper round \(round): \(what) -> FAILED: \(problems.joined(separator: "; "))")
                recordProblems(problems, "round \(round) (\(what), seed \(seed))")
            }
        }

        // Every byte is back: the vault is whole again.
        try await v.start()
        let final = await checkReads(v, [:]) + (await checkListings(v, mayFail: [])) + (await checkAudit(v, brokenAt: nil))
        recordProblems(final, "after every round was undone")
        await v.remove()
        print("tamper random flips: \(detected) detected, \(refused) refused to start, \(noEffect) without effect")
        print("tamper random flips: \(passed) passed, \(failed) failed")
        #expect(failed == 0 && final.isEmpty)
    }
}

// MARK: - Tampers the vault does not (fully) detect

extension TamperTests {
    /// The subject index is not authenticated. An entry planted under another subject must
    /// neither disclose that record in a listing (or disclosure export) nor let an erasure
    /// destroy it: both refuse with a 500 naming the record, and nothing is erased.
    @Test func subjectIndexEntryPlantedUnderAnotherSubject() async throws {
        let v = try await TamperVault.make()
        do {
            let t = try v.tenantNumber("acme")
            // cust-1 has a1 and a3 in acme; plant a2 (cust-2) under cust-1.
            try v.set(.keystore, Layout.subjects, Layout.subjectKey(t, try v.meta("a1").tag, v.recordID("a2")), [])
            try await v.start()
            for (client, export) in [(v.agent("acme"), false), (v.admin("acme"), true)] {
                let list = try await client.send("POST", "/v1/subjects/records", body: json(["subject": "cust-1", "export": export]))
                #expect(!list.text.contains(v.id("a2")) || list.status != 200,
                        "a listing of cust-1 (export: \(export)) discloses cust-2's record")
                #expect(list.status == 500 && list.isProblem && list.problemDetail.contains(v.id("a2")), "\(list.status) \(list.text)")
            }
            let erase = try await v.admin("acme").send("POST", "/v1/subjects/erase", body: json(["subject": "cust-1"]))
            #expect(erase.status == 500 && erase.isProblem && erase.problemDetail.contains(v.id("a2")),
                    "erasing cust-1 with a planted entry: \(erase.status) \(erase.text)")
            recordProblems(await checkReads(v, [:]), "planted index entry: nothing was erased")
            let other = try await v.agent("acme").send("POST", "/v1/subjects/records", body: json(["subject": "cust-2"]))
            #expect(other.status == 200 && other.text.contains(v.id("a2")), "cust-2's own listing: \(other.status)")
            await v.stop()
        } catch {
            Issue.record(error)
        }
        await v.remove()
    }

    /// An entry removed from the subject index hides that record from its subject's erasure.
    @Test func subjectIndexEntryRemoved() async throws {
        let v = try await TamperVault.make()
        do {
            let t = try v.tenantNumber("acme")
            try v.set(.keystore, Layout.subjects, Layout.subjectKey(t, try v.meta("a3").tag, v.recordID("a3")), nil)
            try await v.start()
            let erased = try await v.admin("acme").send("POST", "/v1/subjects/erase", body: json(["subject": "cust-1"]))
            #expect(erased.status == 200, "\(erased.text)")
            #expect(try await v.read("a1").status == 404)
            let a3 = try await v.read("a3")
            #expect(a3.status != 200 || a3.body == v.records["a3"]!.original, "wrong plaintext")
            withKnownIssue("the subject index is not authenticated: a removed entry hides a record from its subject's erasure") {
                #expect(a3.status == 404, "a3 (cust-1) still reads after cust-1 was erased")
            }
            await v.stop()
        } catch {
            Issue.record(error)
        }
        await v.remove()
    }

    /// One damaged wrapped DEK in a dirty bucket no longer stops rotation for every tenant:
    /// the rotation completes, names the record in its summary and leaves it as it is (it was
    /// unreadable already); every other record is re-keyed and reads back.
    @Test func rotationNamesAndSkipsOneDamagedRecord() async throws {
        let v = try await TamperVault.make()
        do {
            try v.modifyMeta("a1") { $0.wrappedDEK[10] ^= 0x01 }   // a1's bucket is dirty (a5 was corrected)
            try await v.start()
            let stats = try await v.operatorClient.send("GET", "/v1/admin/stats")
            let generation = try #require(try stats.object()["master_key_generation"] as? Int)
            let rotate = try await v.operatorClient.send("POST", "/v1/admin/rotate")
            #expect(rotate.status == 200, "rotation refused: \(rotate.problemDetail)")
            let summary = try rotate.object()
            let skipped = try #require(summary["skipped"] as? [String])
            #expect(skipped.count == 1 && skipped[0].contains(v.id("a1")), "skipped: \(skipped)")
            #expect((summary["records_rewrapped"] as? Int ?? 0) >= 1)
            let after = try await v.operatorClient.send("GET", "/v1/admin/stats")
            #expect(try after.object()["master_key_generation"] as? Int == generation + 1)
            recordProblems(await checkReads(v, named(v, "a1")), "after the rotation")
            await v.stop()
        } catch {
            Issue.record(error)
        }
        await v.remove()
    }

    /// The audit chain is BLAKE2b without a key, its head in the same keystore: whoever can
    /// write the keystore can change an entry and recompute every later hash and the head, and
    /// the vault's own check of the chain then passes (a known issue). What catches it is the
    /// transparency log's head signed before the rewrite and kept outside the vault: the
    /// offline verifiers name the rewrite from that head and the entries listed after it.
    @Test func auditChainRewrittenWithRecomputedHashes() async throws {
        let v = try await TamperVault.make()
        do {
            let kept = v.dir + "/operator-audit"
            try await v.start()
            try AuditTransparencyRouteTests.save(try await v.operatorClient.send("GET", "/v1/audit/keys"), kept + "/keys.json")
            try AuditTransparencyRouteTests.save(try await v.operatorClient.send("GET", "/v1/audit/head"), kept + "/heads/1.json")
            await v.stop()
            let entries = try v.entries(.keystore, Layout.audit)
            var prev: [UInt8] = []
            for (key, value) in entries {
                let seq: UInt64 = key.withUnsafeBytes { readBE($0, at: 0) }
                var (entry, canonical) = try value.withUnsafeBytes { try AuditEntry.decode($0) }
                if seq < 5 {
                    prev = entry.hash
                    continue
                }
                if seq == 5 { canonical[16] ^= 0x01 }   // the entry's time, by a millisecond
                let hash = KeyedHash.hash(prev + canonical, outputCount: 32)
                try v.set(.keystore, Layout.audit, key, canonical + prev + hash)
                prev = hash
                entry = try (canonical + prev + hash).withUnsafeBytes { try AuditEntry.decode($0) }.entry
                _ = entry
            }
            try v.set(.keystore, Layout.meta, AuditLog.headKey, AuditHead(seq: UInt64(entries.count), hash: prev).encode())
            try await v.start()
            recordProblems(await checkReads(v, [:]), "recomputed audit chain")
            let problems = await checkAudit(v, brokenAt: 5)
            withKnownIssue("an unkeyed hash chain: a rewrite with recomputed hashes verifies as intact") {
                recordProblems(problems, "recomputed audit chain")
            }
            try AuditTransparencyRouteTests.save(try await v.operatorClient.send("GET", "/v1/admin/audit?after=0&limit=1000"),
                                                 kept + "/entries/1.json")
            try AuditTransparencyRouteTests.save(try await v.operatorClient.send("GET", "/v1/audit/head"), kept + "/heads/2.json")
            let offline = try AuditTransparencyRouteTests.verify(kept)
            #expect(offline.status == 1 && offline.output.contains("history rewritten"), "\(offline.output)")
            await v.stop()
        } catch {
            Issue.record(error)
        }
        await v.remove()
    }

    /// Token rows carry a MAC over the token's hash and every field. A row rebound on disk
    /// (acme's agent to tenant globex, acme's admin to the operator role, keeping the old MAC:
    /// the key is out of reach) fails it: the daemon still starts, names both tokens, and
    /// both answer 401; nobody else is affected, and revoking the damaged tokens clears them.
    @Test func tokenRowReboundToAnotherTenant() async throws {
        let v = try await TamperVault.make()
        do {
            var rebound: [String] = []
            for (key, value) in try v.entries(.keystore, Layout.tokens) where key.first == UInt8(ascii: "h") {
                let mac = Array(value.suffix(TokenRow.macCount))
                let info = try Array(value.dropLast(TokenRow.macCount)).withUnsafeBytes { try TokenInfo.decode($0) }
                let moved: TokenInfo
                switch info.name {
                case "acme-agent":
                    moved = TokenInfo(id: info.id, tenant: "globex", role: info.role, name: info.name,
                                      createdAt: info.createdAt, revokedAt: nil)
                case "acme-admin":
                    moved = TokenInfo(id: info.id, tenant: nil, role: .operator, name: info.name,
                                      createdAt: info.createdAt, revokedAt: nil)
                default:
                    continue
                }
                try v.set(.keystore, Layout.tokens, key, moved.encode() + mac)
                rebound.append(info.id)
            }
            try #require(rebound.count == 2)
            try await v.start()
            let failures = try #require(v.daemon).vault.tokenRowFailures.map(\.description)
            #expect(failures.count == 2, "\(failures)")
            for id in rebound {
                #expect(failures.contains { $0.contains("token \(id): its row failed authentication") }, "\(failures)")
            }

            let r = try await v.agent("acme").send("GET", "/v1/records/\(v.id("g1"))")
            #expect(r.status == 401, "acme's rebound agent token on globex's g1: \(r.status) \(r.text)")
            let own = try await v.agent("acme").send("GET", "/v1/records/\(v.id("a1"))")
            #expect(own.status == 401, "acme's rebound agent token on its own a1: \(own.status)")
            let tenants = try await v.admin("acme").send("GET", "/v1/admin/tenants")
            #expect(tenants.status == 401, "acme's admin token rebound as operator: \(tenants.status) \(tenants.text)")
            // globex and initech read as before; acme's records answer 401 (its agent token is the damaged one).
            recordProblems(await checkReads(v, Dictionary(uniqueKeysWithValues: v.labels.filter { v.records[$0]!.tenant == "acme" }
                .map { ($0, TamperReadOutcome.readsBackOr([401])) })), "rebound token rows")

            // The operator revokes the damaged tokens; the next start is clean.
            for id in rebound {
                let revoked = try await v.operatorClient.send("DELETE", "/v1/admin/tokens/\(id)")
                #expect(revoked.status == 204 || revoked.status == 200, "revoking \(id): \(revoked.status) \(revoked.text)")
            }
            await v.stop()
            try await v.start()
            #expect(try #require(v.daemon).vault.tokenRowFailures.isEmpty)
            #expect(try await v.agent("acme").send("GET", "/v1/records/\(v.id("g1"))").status == 401)
            await v.stop()
        } catch {
            Issue.record(error)
        }
        await v.remove()
    }

    /// A token row moved onto another token's hash (acme's agent row copied over globex's
    /// agent row) fails its MAC: globex's token does not become acme's, nor stays globex's.
    @Test func tokenRowCopiedOverAnotherToken() async throws {
        let v = try await TamperVault.make()
        do {
            var rows: [String: ([UInt8], [UInt8])] = [:]
            for (key, value) in try v.entries(.keystore, Layout.tokens) where key.first == UInt8(ascii: "h") {
                let info = try Array(value.dropLast(TokenRow.macCount)).withUnsafeBytes { try TokenInfo.decode($0) }
                rows[info.name] = (key, value)
            }
            let acme = try #require(rows["acme-agent"]), globex = try #require(rows["globex-agent"])
            try v.set(.keystore, Layout.tokens, globex.0, acme.1)
            try await v.start()
            #expect(try #require(v.daemon).vault.tokenRowFailures.count == 1)
            let r = try await v.agent("globex").send("GET", "/v1/records/\(v.id("a1"))")
            #expect(r.status == 401, "globex's token with acme's row: \(r.status)")
            #expect(try await v.agent("acme").send("GET", "/v1/records/\(v.id("a1"))").status == 200)
            await v.stop()
        } catch {
            Issue.record(error)
        }
        await v.remove()
    }

    /// Putting back an earlier authentic state of a record (metadata with its wrapped DEK, and
    /// the old ciphertext) after a correction: the old version reads back until the next
    /// rotation re-keys the (dirty) bucket; after it, the same rollback is detected.
    @Test func recordRolledBackToAnEarlierVersion() async throws {
        let v = try await TamperVault.make()
        do {
            let metaKey = try v.metaKey("a1")
            let oldMeta = try #require(try v.value(.keystore, Layout.records, metaKey))
            let oldCiphertextKey = try v.ciphertextKey("a1")
            let oldCiphertext = try #require(try v.value(.records, Layout.ciphertexts, oldCiphertextKey))
            let oldBody = v.records["a1"]!.original

            try await v.start()
            let corrected = try await v.agent("acme").send("PUT", "/v1/records/\(v.id("a1"))",
                                                           body: json(["data": ["note": "a1 corrected"]]))
            #expect(corrected.status == 200)
            try await v.captureOriginals()
            await v.stop()
            let current = v.records["a1"]!.original
            #expect(current != oldBody)

            // Roll back: old metadata and old ciphertext, both authentic.
            try v.set(.keystore, Layout.records, metaKey, oldMeta)
            try v.set(.records, Layout.ciphertexts, oldCiphertextKey, oldCiphertext)
            try await v.start()
            let stale = try await v.read("a1")
            #expect(stale.status != 200 || stale.body == current || stale.body == oldBody, "bytes that were never stored")
            withKnownIssue("an earlier authentic state reads back until the next rotation (no freshness anchor)") {
                #expect(stale.status == 500, "a1 answered its pre-correction version: \(stale.status)")
            }
            await v.stop()
            try v.undo()

            // A rotation re-keys the dirty bucket: the same rollback no longer opens.
            try await v.start()
            let rotated = try await v.operatorClient.send("POST", "/v1/admin/rotate")
            #expect(rotated.status == 200, "\(rotated.text)")
            recordProblems(await checkReads(v, [:]), "after rotation")
            await v.stop()
            try v.set(.keystore, Layout.records, metaKey, oldMeta)
            try v.set(.records, Layout.ciphertexts, oldCiphertextKey, oldCiphertext)
            try await v.start()
            recordProblems(await checkReads(v, ["a1": .serverError([v.id("a1")])]), "rollback after rotation")
            await v.stop()
        } catch {
            Issue.record(error)
        }
        await v.remove()
    }
}

extension BucketRow {
    /// The same one-version row with another wrapped key (a tamper).
    func withCurrent(wrappedBK: [UInt8]) -> BucketRow {
        BucketRow(version: current.number, dirty: dirty, wrappedBK: wrappedBK)
    }
}
