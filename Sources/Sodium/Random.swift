import CSodium

/// Non-secret randomness from libsodium's CSPRNG (`randombytes_*`).
///
/// For keys use `SecretBytes.random(count:)`, which writes straight into guarded memory.
public enum Random {
    /// `count` random bytes (randombytes_buf), for non-secret randomness: nonces, ids, tokens shown once.
    ///
    /// - Warning: The result is an ordinary array (copied freely, never wiped): do
    ///   not use it for key material. Traps if `count` is negative.
    public static func bytes(count: Int) -> [UInt8] {
        precondition(count >= 0, "Random.bytes(count:) needs a non-negative count")
        return [UInt8](unsafeUninitializedCapacity: count) { buffer, initializedCount in
            fill(UnsafeMutableRawBufferPointer(buffer))
            initializedCount = count
        }
    }

    /// Fills `buffer` with random bytes (randombytes_buf).
    public static func fill(_ buffer: UnsafeMutableRawBufferPointer) {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        Sodium.initializeOrTrap()
        randombytes_buf(base, buffer.count)
    }

    /// A uniform random value in `0..<upperBound` (randombytes_uniform), without modulo bias.
    ///
    /// libsodium returns 0 when `upperBound` is 0 or 1.
    public static func uniform(_ upperBound: UInt32) -> UInt32 {
        Sodium.initializeOrTrap()
        return randombytes_uniform(upperBound)
    }
}
