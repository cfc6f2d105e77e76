import CSodium

/// BLAKE2b (crypto_generichash).
///
/// Keyed BLAKE2b is a MAC/PRF (e.g. blind indexes); unkeyed, a collision-resistant
/// digest (the audit hash chain). `deriveKey` is libsodium's `crypto_kdf`, which is
/// keyed BLAKE2b with the subkey id and context in the salt and personal fields.
public enum KeyedHash {
    /// Valid output sizes (`crypto_generichash_bytes_min()...bytes_max()`, 16...64).
    public static let outputCountRange: ClosedRange<Int> =
        Int(crypto_generichash_bytes_min())...Int(crypto_generichash_bytes_max())
    /// Valid key sizes for `hash(_:key:outputCount:)` (`crypto_generichash_keybytes_min()...keybytes_max()`, 16...64).
    public static let keyCountRange: ClosedRange<Int> =
        Int(crypto_generichash_keybytes_min())...Int(crypto_generichash_keybytes_max())
    /// The master key size for `deriveKey` (`crypto_kdf_keybytes()`, 32).
    public static let derivationKeyCount: Int = Int(crypto_kdf_keybytes())
    /// Valid subkey sizes for `deriveKey` (`crypto_kdf_bytes_min()...bytes_max()`, 16...64).
    public static let derivedKeyCountRange: ClosedRange<Int> =
        Int(crypto_kdf_bytes_min())...Int(crypto_kdf_bytes_max())
    /// The context size for `deriveKey` (`crypto_kdf_contextbytes()`, 8).
    public static let contextCount: Int = Int(crypto_kdf_contextbytes())

    /// Keyed BLAKE2b with a key of 16...64 bytes, output 16...64 bytes.
    ///
    /// libsodium `crypto_generichash(out, outlen, in, inlen, key, keylen)`.
    /// - Throws: `.invalidLength("key" | "outputCount", …)`, `expected` being the
    ///   bound of the range that was crossed.
    public static func hash(
        _ message: UnsafeRawBufferPointer,
        key: borrowing SecretBytes,
        outputCount: Int = 32
    ) throws -> [UInt8] {
        try Sodium.initialize()
        try check("key", key.count, in: keyCountRange)
        try check("outputCount", outputCount, in: outputCountRange)
        return generichash(message, key: UnsafeRawBufferPointer(start: key.base, count: key.count), outputCount: outputCount)
    }

    /// Unkeyed BLAKE2b (audit hash chain, digests), output 16...64 bytes.
    ///
    /// - Warning: Traps when `outputCount` is outside 16...64: sizes are constants
    ///   chosen by the programmer, and this entry point cannot throw.
    public static func hash(_ message: UnsafeRawBufferPointer, outputCount: Int = 32) -> [UInt8] {
        Sodium.initializeOrTrap()
        precondition(outputCountRange.contains(outputCount), "BLAKE2b outputCount must be in 16...64")
        return generichash(message, key: UnsafeRawBufferPointer(start: nil, count: 0), outputCount: outputCount)
    }

    /// Keyed BLAKE2b of a byte array; see `hash(_:key:outputCount:)`.
    public static func hash(_ message: [UInt8], key: borrowing SecretBytes, outputCount: Int = 32) throws -> [UInt8] {
        try message.withUnsafeBytes { (message: UnsafeRawBufferPointer) throws -> [UInt8] in
            try hash(message, key: key, outputCount: outputCount)
        }
    }

    /// Unkeyed BLAKE2b of a byte array; see `hash(_:outputCount:)`.
    ///
    /// - Warning: Traps when `outputCount` is outside 16...64.
    public static func hash(_ message: [UInt8], outputCount: Int = 32) -> [UInt8] {
        message.withUnsafeBytes { message in
            hash(message, outputCount: outputCount)
        }
    }

    /// Subkey derivation (crypto_kdf_derive_from_key, BLAKE2b): context must be exactly 8 ASCII bytes.
    ///
    /// The same (key, subkeyID, context, count) always gives the same subkey; any
    /// change gives an independent one. The subkey is written straight into
    /// guarded memory.
    /// - Warning: The context separates uses (e.g. `"bucketky"`, `"blindidx"`): never
    ///   reuse one context for two purposes. Traps on a non-ASCII context, which is
    ///   a constant and therefore a programmer error.
    /// - Throws: `.invalidLength("key" | "context" | "count", …)`,
    ///   `.allocationFailure`.
    public static func deriveKey(
        from key: borrowing SecretBytes,
        subkeyID: UInt64,
        context: StaticString,
        count: Int = 32
    ) throws -> SecretBytes {
        try Sodium.initialize()
        guard key.count == derivationKeyCount else {
            throw SodiumError.invalidLength("key", expected: derivationKeyCount, actual: key.count)
        }
        // A StaticString built from a single scalar has no pointer representation:
        // it is at most 4 UTF-8 bytes, never a valid context.
        let contextLength = context.hasPointerRepresentation ? context.utf8CodeUnitCount : context.unicodeScalar.utf8.count
        guard context.hasPointerRepresentation, contextLength == contextCount else {
            throw SodiumError.invalidLength("context", expected: contextCount, actual: contextLength)
        }
        let contextBytes = UnsafeRawBufferPointer(start: context.utf8Start, count: contextLength)
        precondition(contextBytes.allSatisfy { $0 < 0x80 }, "crypto_kdf context must be ASCII")
        try check("count", count, in: derivedKeyCountRange)

        var subkey = try SecretBytes(count: count)
        let status = subkey.withUnsafeMutableBytes { subkeyBytes in
            context.utf8Start.withMemoryRebound(to: CChar.self, capacity: contextLength) { contextChars in
                crypto_kdf_derive_from_key(
                    subkeyBytes.baseAddress!.assumingMemoryBound(to: UInt8.self),
                    count,
                    subkeyID,
                    contextChars,
                    UnsafeRawPointer(key.base).assumingMemoryBound(to: UInt8.self)
                )
            }
        }
        // libsodium: -1 only for a subkey length outside bytes_min...bytes_max, checked above.
        precondition(status == 0, "crypto_kdf_derive_from_key failed")
        return subkey
    }

    // MARK: - Helpers

    private static func check(_ name: String, _ value: Int, in range: ClosedRange<Int>) throws {
        guard range.contains(value) else {
            let bound = value < range.lowerBound ? range.lowerBound : range.upperBound
            throw SodiumError.invalidLength(name, expected: bound, actual: value)
        }
    }

    /// `crypto_generichash`; `key` may be empty (unkeyed). Sizes are checked by the callers.
    private static func generichash(_ message: UnsafeRawBufferPointer, key: UnsafeRawBufferPointer, outputCount: Int) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: outputCount) { buffer, initializedCount in
            let status = crypto_generichash(
                buffer.baseAddress!,
                outputCount,
                cBytes(message),
                UInt64(message.count),
                key.count == 0 ? nil : cBytes(key),
                key.count
            )
            // libsodium: -1 only for sizes outside the ranges checked by the callers.
            precondition(status == 0, "crypto_generichash failed")
            initializedCount = outputCount
        }
    }
}
