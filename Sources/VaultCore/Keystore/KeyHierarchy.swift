import Sodium

/// A key in guarded memory that can sit in a dictionary or cross to the writer thread.
/// Immutable after creation; the `SecretBytes` inside is wiped when the box is released.
final class Key: @unchecked Sendable {
    // unchecked: `bytes` is never mutated after init, and SecretBytes is only read through it.
    let bytes: SecretBytes
    init(_ bytes: consuming SecretBytes) { self.bytes = bytes }
    static func random() throws -> Key { Key(try SecretBytes.random(count: AEAD.keyCount)) }
}

enum KeyedHashDigest {
    /// BLAKE2b-256 of `bytes` (unkeyed).
    static func of(_ bytes: [UInt8]) -> [UInt8] { KeyedHash.hash(bytes, outputCount: 32) }
}

/// The key hierarchy of docs/architecture.md: how each key is wrapped and what associated data
/// binds it. Every wrap is XChaCha20-Poly1305-IETF with a random nonce; the AD names
/// the key's role and position, so a wrapped key moved anywhere else fails to open.
///
/// ```
/// MK ─ TRK(t, trkGen)     AD "trk" | slug | t | mkGen | trkGen
///       ├ SBK(t)          AD "sbk" | t | trkGen
///       └ BK(t, e, v)     AD "bk"  | t | e | v | trkGen
///          └ DEK(t, id)   AD "dek" | t | id | version | e | v
///             └ record    AD "rec" | t | id | version | metadata digest
/// ```
enum KeyHierarchy {
    /// Sealed blobs carry a 1-byte format version in front of the AEAD box.
    static let sealedFormat: UInt8 = 1

    static func trkAD(slug: String, tenant: UInt32, mkGeneration: UInt64, trkGeneration: UInt32) -> [UInt8] {
        var w = ByteWriter()
        w.raw(Array("trk".utf8)); w.string(slug); w.u32(tenant); w.u64(mkGeneration); w.u32(trkGeneration)
        return w.bytes
    }

    static func sbkAD(tenant: UInt32, trkGeneration: UInt32) -> [UInt8] {
        var w = ByteWriter()
        w.raw(Array("sbk".utf8)); w.u32(tenant); w.u32(trkGeneration)
        return w.bytes
    }

    static func bkAD(tenant: UInt32, bucket: UInt64, version: UInt32, trkGeneration: UInt32) -> [UInt8] {
        var w = ByteWriter()
        w.raw(Array("bk".utf8)); w.u32(tenant); w.u64(bucket); w.u32(version); w.u32(trkGeneration)
        return w.bytes
    }

    static func dekAD(tenant: UInt32, id: RecordID, version: UInt32, bucket: UInt64, bucketVersion: UInt32) -> [UInt8] {
        var w = ByteWriter()
        w.raw(Array("dek".utf8)); w.u32(tenant); w.raw(id.bytes); w.u32(version); w.u64(bucket); w.u32(bucketVersion)
        return w.bytes
    }

    static func recordAD(tenant: UInt32, id: RecordID, version: UInt32, digest: [UInt8]) -> [UInt8] {
        var w = ByteWriter()
        w.raw(Array("rec".utf8)); w.u32(tenant); w.raw(id.bytes); w.u32(version); w.raw(digest)
        return w.bytes
    }

    static func masterCheckAD(generation: UInt64) -> [UInt8] {
        Array("shredvault master key check".utf8) + .be(generation)
    }

    static func holdTextAD(tenant: UInt32, hold: RecordID) -> [UInt8] {
        Array("hold".utf8) + .be(tenant) + hold.bytes
    }

    /// Seals `secret` under `key`: format byte || nonce || ciphertext || tag.
    static func wrap(_ secret: borrowing SecretBytes, under key: borrowing SecretBytes, ad: [UInt8]) throws -> [UInt8] {
        let box = try ad.withUnsafeBytes { try AEAD.seal(secret: secret, key: key, associatedData: $0) }
        return [sealedFormat] + box
    }

    /// Opens a wrapped key into guarded memory; any failure is an integrity error naming `what`.
    static func unwrap(_ blob: [UInt8], under key: borrowing SecretBytes, ad: [UInt8], what: @autoclosure () -> String) throws -> Key {
        guard blob.first == sealedFormat else { throw VaultError.integrity("\(what()): not a wrapped key") }
        do {
            let key: Key = try blob.withUnsafeBytes { b in
                try ad.withUnsafeBytes { a in
                    Key(try AEAD.openSecret(UnsafeRawBufferPointer(rebasing: b[1...]), key: key, associatedData: a))
                }
            }
            guard key.bytes.count == AEAD.keyCount else { throw VaultError.corrupt("\(what()): wrong key length") }
            return key
        } catch SodiumError.authenticationFailure {
            throw VaultError.integrity("\(what()) failed authentication")
        }
    }
}
