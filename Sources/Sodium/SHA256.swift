import CSodium

/// SHA-256 (libsodium `crypto_hash_sha256`): the hash of RFC 9162's Merkle trees, chosen for the
/// audit's transparency log so that any verifier (Python's `hashlib`, Go's `crypto/sha256`, a
/// browser's SubtleCrypto) recomputes the same heads without libsodium.
public enum SHA256 {
    /// 32.
    public static let digestCount = Int(crypto_hash_sha256_bytes())

    /// The digest of `parts`, concatenated (no copy is made of them).
    public static func hash(_ parts: UnsafeRawBufferPointer...) -> [UInt8] {
        Sodium.initializeOrTrap()
        var state = crypto_hash_sha256_state()
        crypto_hash_sha256_init(&state)
        for part in parts where part.count > 0 {
            crypto_hash_sha256_update(&state, part.baseAddress!.assumingMemoryBound(to: UInt8.self), UInt64(part.count))
        }
        var out = [UInt8](repeating: 0, count: digestCount)
        out.withUnsafeMutableBufferPointer { crypto_hash_sha256_final(&state, $0.baseAddress!) }
        return out
    }

    public static func hash(_ bytes: [UInt8]) -> [UInt8] {
        bytes.withUnsafeBytes { hash($0) }
    }
}
