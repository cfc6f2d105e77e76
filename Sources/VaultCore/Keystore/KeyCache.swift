import Sodium

/// Unwrapped keys of the hierarchy (TRK, SBK, BK) kept in guarded memory between
/// operations, and one guarded scratch buffer for data keys: unwrapping through
/// `sodium_malloc` on every record costs a dozen system calls (mmap, mprotect, mlock).
///
/// An entry is found by the exact associated data *and* wrapped blob it was opened from,
/// so a hit is always the key those bytes open to: a rolled-back or replaced blob is
/// simply never looked up again, and a blob moved elsewhere (another AD) misses and fails
/// to open as before. Bounded; cleared (every key wiped) on rotation, sweep and offboarding.
/// Confined to the writer thread.
final class KeyCache {
    /// Entries are found by the first 16 bytes of the blob's random nonce (cheap to hash),
    /// then confirmed against the full associated data and blob they were opened from.
    private struct Slot: Hashable {
        let a: UInt64, b: UInt64
        init(_ blob: [UInt8]) {
            var a: UInt64 = 0, b: UInt64 = 0
            for i in 0..<8 where i + 1 < blob.count { a = a << 8 | UInt64(blob[i + 1]) }
            for i in 8..<16 where i + 1 < blob.count { b = b << 8 | UInt64(blob[i + 1]) }
            self.a = a
            self.b = b
        }
    }
    private struct Entry {
        let ad: [UInt8]
        let blob: [UInt8]
        let key: Key
    }
    private var entries: [Slot: Entry] = [:]
    private let capacity: Int
    private var scratch: SecretBytes

    init(capacity: Int = 4096) throws {
        self.capacity = capacity
        scratch = try SecretBytes.scratch(count: AEAD.keyCount)
    }

    var count: Int { entries.count }

    func unwrap(_ blob: [UInt8], under kek: borrowing SecretBytes, ad: [UInt8], what: @autoclosure () -> String) throws -> Key {
        let slot = Slot(blob)
        if let entry = entries[slot], entry.blob == blob, entry.ad == ad { return entry.key }
        let key = try KeyHierarchy.unwrap(blob, under: kek, ad: ad, what: what())
        if entries.count >= capacity { entries.removeAll() }
        entries[slot] = Entry(ad: ad, blob: blob, key: key)
        return key
    }

    /// Releases (and so wipes) every cached key.
    func removeAll() { entries.removeAll() }

    /// Lends a fresh random key (a new DEK) from the scratch buffer; wiped afterwards.
    func withFreshKey<R>(_ body: (borrowing SecretBytes) throws -> R) throws -> R {
        scratch.withUnsafeMutableBytes { Random.fill($0) }
        defer { scratch.withUnsafeMutableBytes { secureZero($0) } }
        return try body(scratch)
    }

    /// Unwraps a data key into the scratch buffer and lends it; wiped afterwards.
    func withUnwrapped<R>(_ blob: [UInt8], under kek: borrowing SecretBytes, ad: [UInt8], what: @autoclosure () -> String,
                          _ body: (borrowing SecretBytes) throws -> R) throws -> R {
        guard blob.count == 1 + AEAD.sealedCount(plaintextCount: AEAD.keyCount), blob.first == KeyHierarchy.sealedFormat else {
            throw VaultError.integrity("\(what()): not a wrapped key")
        }
        do {
            try scratch.withUnsafeMutableBytes { out in
                try blob.withUnsafeBytes { b in
                    try ad.withUnsafeBytes { a in
                        try AEAD.open(UnsafeRawBufferPointer(rebasing: b[1...]), key: kek, associatedData: a, into: out)
                    }
                }
            }
        } catch SodiumError.authenticationFailure {
            throw VaultError.integrity("\(what()) failed authentication")
        }
        defer { scratch.withUnsafeMutableBytes { secureZero($0) } }
        return try body(scratch)
    }
}
