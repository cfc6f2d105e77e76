/// The stored formats of the keystore. Each encodes to a blob whose first byte is its
/// format version; `decode` refuses any other version with `VaultError.corrupt`.

struct TenantRow: Equatable {
    enum Status: UInt8 { case active = 1, offboarded = 2 }
    var number: UInt32
    var status: Status
    var createdAt: Int64
    /// Renewed by each rotation (docs/architecture.md, Rotate step 2); part of every AD under the TRK.
    var trkGeneration: UInt32
    /// TRK sealed under the master key; empty once offboarded (the key is destroyed).
    var wrappedTRK: [UInt8]
    /// SBK sealed under the TRK; empty once offboarded.
    var wrappedSBK: [UInt8]

    static let format: UInt8 = 1

    func encode() -> [UInt8] {
        var w = ByteWriter(capacity: 180)
        w.u8(Self.format)
        w.u32(number)
        w.u8(status.rawValue)
        w.i64(createdAt)
        w.u32(trkGeneration)
        w.field(wrappedTRK)
        w.field(wrappedSBK)
        return w.bytes
    }

    static func decode(_ b: UnsafeRawBufferPointer) throws -> TenantRow {
        var r = ByteReader(b, what: "tenant row")
        try r.format(format)
        let number = try r.u32()
        guard let status = Status(rawValue: try r.u8()) else { throw VaultError.corrupt("tenant row: bad status") }
        let row = TenantRow(number: number, status: status, createdAt: try r.i64(), trkGeneration: try r.u32(),
                            wrappedTRK: try r.field(), wrappedSBK: try r.field())
        try r.end()
        return row
    }
}

/// A bucket's key ring (HashiCorp Vault's key policies, `keysutil/policy.go`): the key
/// versions that may still open data keys of this bucket, oldest first. New data keys are
/// wrapped under the newest (`current`); the oldest is the minimum decryption version.
///
/// A ring holds one version, except while a rotation re-keys the bucket: the new version is
/// added, live data keys are re-wrapped to it in bounded transactions, and the previous
/// version is then trimmed (deleted for good, as Vault's `path_trim.go`).
///
/// Stored as format 1 (one version: version, dirty, wrapped key — the format written before
/// rings) or format 2 (dirty, then two versions, ascending).
struct BucketRow: Equatable {
    struct Version: Equatable {
        var number: UInt32
        /// The bucket key of this version, sealed under the tenant root key.
        var wrappedBK: [UInt8]
    }

    /// Ascending by `number`; never empty.
    private(set) var versions: [Version]
    /// Set when a DEK under this bucket key was destroyed (erasure, deletion, correction):
    /// the next rotation re-keys the bucket so the old wrapped DEK can never be opened.
    var dirty: Bool

    static let format: UInt8 = 1
    static let ringFormat: UInt8 = 2
    /// Versions a ring may hold: the current and, during a re-key, the previous one.
    static let maximumVersions = 2

    init(version: UInt32, dirty: Bool, wrappedBK: [UInt8]) {
        versions = [Version(number: version, wrappedBK: wrappedBK)]
        self.dirty = dirty
    }

    init(versions: [Version], dirty: Bool) throws {
        guard !versions.isEmpty, versions.count <= Self.maximumVersions,
              zip(versions, versions.dropFirst()).allSatisfy({ $0.number < $1.number })
        else { throw VaultError.corrupt("bucket row: bad key ring") }
        self.versions = versions
        self.dirty = dirty
    }

    /// The version new data keys are wrapped under.
    var current: Version { versions[versions.count - 1] }
    /// The oldest version still able to open data keys.
    var minimumDecryptionVersion: UInt32 { versions[0].number }
    /// True while a rotation re-keys the bucket (a previous version is still in the ring).
    var isRekeying: Bool { versions.count > 1 }

    func version(_ number: UInt32) -> Version? { versions.first { $0.number == number } }

    /// Adds `next` as the current version, keeping the current one as the previous.
    mutating func add(_ next: Version) throws {
        try self = BucketRow(versions: versions + [next], dirty: dirty)
    }

    /// Removes every version but the current one.
    mutating func trim() { versions = [current] }

    /// Replaces the wrapped key of every version (a tenant root key renewal re-wraps them all).
    mutating func rewrapVersions(_ wrap: (Version) throws -> [UInt8]) rethrows {
        for i in versions.indices { versions[i].wrappedBK = try wrap(versions[i]) }
    }

    func encode() -> [UInt8] {
        var w = ByteWriter(capacity: 84 * versions.count)
        if versions.count == 1 {
            w.u8(Self.format)
            w.u32(current.number)
            w.u8(dirty ? 1 : 0)
            w.field(current.wrappedBK)
            return w.bytes
        }
        w.u8(Self.ringFormat)
        w.u8(dirty ? 1 : 0)
        w.u8(UInt8(versions.count))
        for v in versions {
            w.u32(v.number)
            w.field(v.wrappedBK)
        }
        return w.bytes
    }

    static func decode(_ b: UnsafeRawBufferPointer) throws -> BucketRow {
        var r = ByteReader(b, what: "bucket row")
        let row: BucketRow
        switch b.first {
        case format:
            try r.format(format)
            row = BucketRow(version: try r.u32(), dirty: try r.u8() != 0, wrappedBK: try r.field())
        case ringFormat:
            try r.format(ringFormat)
            let dirty = try r.u8() != 0
            let count = Int(try r.u8())
            // A one-version ring is stored as format 1: format 2 always holds a previous version.
            guard count >= 2 && count <= maximumVersions else { throw VaultError.corrupt("bucket row: bad key ring") }
            var versions: [Version] = []
            for _ in 0..<count { versions.append(Version(number: try r.u32(), wrappedBK: try r.field())) }
            row = try BucketRow(versions: versions, dirty: dirty)
        default:
            try r.format(format)  // throws, naming the unknown version
            throw VaultError.corrupt("bucket row")
        }
        try r.end()
        return row
    }
}

/// What the keystore holds about one record: only what expiry and routing need in clear
/// (docs/architecture.md, Principles 1), plus the record's data key wrapped under its bucket key.
struct RecordMeta: Equatable {
    var category: DataCategory
    var channel: Channel
    var createdAt: Int64
    var expiresAt: Int64
    var version: UInt32
    var tag: [UInt8]          // 16
    var bucket: UInt64
    var bucketVersion: UInt32
    var ciphertextCount: UInt32
    var wrappedDEK: [UInt8]

    static let format: UInt8 = 1

    func encode() -> [UInt8] {
        var w = ByteWriter(capacity: 150)
        w.u8(Self.format)
        w.u8(category.code)
        w.u8(channel.code)
        w.i64(createdAt)
        w.i64(expiresAt)
        w.u32(version)
        w.raw(tag)
        w.u64(bucket)
        w.u32(bucketVersion)
        w.u32(ciphertextCount)
        w.field(wrappedDEK)
        return w.bytes
    }

    static func decode(_ b: UnsafeRawBufferPointer) throws -> RecordMeta {
        var r = ByteReader(b, what: "record metadata")
        try r.format(format)
        let m = RecordMeta(
            category: try DataCategory(code: try r.u8()), channel: try Channel(code: try r.u8()),
            createdAt: try r.i64(), expiresAt: try r.i64(), version: try r.u32(), tag: try r.raw(16),
            bucket: try r.u64(), bucketVersion: try r.u32(), ciphertextCount: try r.u32(), wrappedDEK: try r.field())
        try r.end()
        return m
    }

    /// Binds a ciphertext to everything stored about its record in clear: moving a sealed
    /// record under other metadata (another tenant, id, version, category, expiry) fails.
    func digest(tenant: UInt32, id: RecordID) -> [UInt8] {
        var w = ByteWriter(capacity: 64)
        w.u32(tenant)
        w.raw(id.bytes)
        w.u8(category.code)
        w.u8(channel.code)
        w.i64(createdAt)
        w.i64(expiresAt)
        w.raw(tag)
        return KeyedHashDigest.of(w.bytes)
    }
}

/// A legal hold as stored: the target in clear (a subject *tag* or a record id, both
/// already stored in clear elsewhere), the free-text reason and reference sealed.
struct LegalHoldRow: Equatable {
    enum Kind: UInt8 { case subject = 1, record = 2 }
    var kind: Kind
    var target: [UInt8]     // 16: subject tag or record id
    var createdAt: Int64
    var sealedText: [UInt8] // reason and reference, sealed under the tenant's text key

    static let format: UInt8 = 1

    func encode() -> [UInt8] {
        var w = ByteWriter()
        w.u8(Self.format)
        w.u8(kind.rawValue)
        w.raw(target)
        w.i64(createdAt)
        w.field(sealedText)
        return w.bytes
    }

    static func decode(_ b: UnsafeRawBufferPointer) throws -> LegalHoldRow {
        var r = ByteReader(b, what: "legal hold")
        try r.format(format)
        guard let kind = Kind(rawValue: try r.u8()) else { throw VaultError.corrupt("legal hold: bad kind") }
        let row = LegalHoldRow(kind: kind, target: try r.raw(16), createdAt: try r.i64(), sealedText: try r.field())
        try r.end()
        return row
    }
}
