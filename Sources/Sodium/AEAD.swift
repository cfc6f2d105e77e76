import CSodium

/// XChaCha20-Poly1305-IETF (crypto_aead_xchacha20poly1305_ietf_*), random 192-bit nonce.
///
/// Sealed box layout: nonce (24) || ciphertext || tag (16).
///
/// A 192-bit random nonce makes collisions negligible however many messages one
/// key seals, so no nonce state is kept. The associated data is authenticated, not
/// encrypted: bind a box to where it belongs (record id, key version, path) so that
/// a box moved elsewhere fails to open.
///
/// - Warning: Buffers passed to one call must not overlap (libsodium supports only
///   exact in-place operation, which the nonce prefix rules out).
public enum AEAD {
    /// The key size in bytes (`crypto_aead_xchacha20poly1305_ietf_keybytes()`, 32).
    public static let keyCount: Int = Int(crypto_aead_xchacha20poly1305_ietf_keybytes())
    /// The nonce size in bytes (`crypto_aead_xchacha20poly1305_ietf_npubbytes()`, 24).
    public static let nonceCount: Int = Int(crypto_aead_xchacha20poly1305_ietf_npubbytes())
    /// The authentication tag size in bytes (`crypto_aead_xchacha20poly1305_ietf_abytes()`, 16).
    public static let tagCount: Int = Int(crypto_aead_xchacha20poly1305_ietf_abytes())
    /// The bytes a sealed box adds to its plaintext: `nonceCount + tagCount` (40).
    public static let overhead: Int = nonceCount + tagCount

    /// The size of the sealed box for `plaintextCount` bytes: `plaintextCount + overhead`.
    public static func sealedCount(plaintextCount: Int) -> Int {
        plaintextCount + overhead
    }

    /// libsodium aborts (`sodium_misuse()`) on longer messages; we throw first.
    /// `size_t` imports as `Int`, and the 64-bit maximum (SIZE_MAX - ABYTES) does
    /// not fit: read it unsigned and clamp.
    private static let maximumPlaintextCount: Int = {
        let maximum = UInt(bitPattern: crypto_aead_xchacha20poly1305_ietf_messagebytes_max())
        return maximum > UInt(Int.max) ? Int.max : Int(maximum)
    }()

    /// Seals into `output` (which must be exactly sealedCount(plaintext.count) bytes) with a fresh random nonce.
    ///
    /// The nonce comes from `randombytes_buf`; the box is `nonce || ciphertext || tag`
    /// (`crypto_aead_xchacha20poly1305_ietf_encrypt`, combined mode, after the nonce).
    /// - Throws: `.invalidLength("key" | "output" | "plaintext", …)`.
    public static func seal(
        _ plaintext: UnsafeRawBufferPointer,
        key: borrowing SecretBytes,
        associatedData: UnsafeRawBufferPointer,
        into output: UnsafeMutableRawBufferPointer
    ) throws {
        try Sodium.initialize()
        try checkKey(key)
        guard plaintext.count <= maximumPlaintextCount else {
            throw SodiumError.invalidLength("plaintext", expected: maximumPlaintextCount, actual: plaintext.count)
        }
        let expected = sealedCount(plaintextCount: plaintext.count)
        guard output.count == expected, let outputBase = output.baseAddress else {
            throw SodiumError.invalidLength("output", expected: expected, actual: output.count)
        }
        let nonce = UnsafeMutableRawBufferPointer(start: outputBase, count: nonceCount)
        Random.fill(nonce)
        let status = encrypt(
            into: outputBase + nonceCount,
            plaintext: plaintext,
            associatedData: associatedData,
            nonce: UnsafeRawPointer(outputBase),
            key: key
        )
        // libsodium: encryption returns 0 for every length it accepts, and the length
        // was checked above; a failure would be a libsodium bug: leave no half box.
        guard status == 0 else {
            secureZero(output)
            preconditionFailure("crypto_aead_xchacha20poly1305_ietf_encrypt failed")
        }
    }

    /// Convenience: returns the sealed box as [UInt8] (fine for ciphertexts, which are not secret).
    ///
    /// - Throws: `.invalidLength("key" | "plaintext", …)`.
    public static func seal(
        _ plaintext: UnsafeRawBufferPointer,
        key: borrowing SecretBytes,
        associatedData: UnsafeRawBufferPointer
    ) throws -> [UInt8] {
        let count = sealedCount(plaintextCount: plaintext.count)
        return try [UInt8](unsafeUninitializedCapacity: count) { buffer, initializedCount in
            try seal(plaintext, key: key, associatedData: associatedData, into: UnsafeMutableRawBufferPointer(buffer))
            initializedCount = count
        }
    }

    /// Wraps a secret (e.g. a data key under a bucket key): seal of the secret's bytes.
    ///
    /// - Throws: `.invalidLength("key", …)`.
    public static func seal(
        secret: borrowing SecretBytes,
        key: borrowing SecretBytes,
        associatedData: UnsafeRawBufferPointer
    ) throws -> [UInt8] {
        try seal(
            UnsafeRawBufferPointer(start: secret.base, count: secret.count),
            key: key,
            associatedData: associatedData
        )
    }

    /// Opens into `output` (exactly box.count - overhead bytes), zeroing `output` on failure.
    ///
    /// Throws `.authenticationFailure` on any failure of the box, also when it is
    /// shorter than `overhead`. libsodium verifies the tag before writing any plaintext
    /// (`crypto_aead_xchacha20poly1305_ietf_decrypt` returns -1 on a forged box),
    /// so unauthenticated plaintext is never released.
    /// - Throws: `.authenticationFailure`; `.invalidLength("key" | "output", …)` for
    ///   a wrong-sized key or output (caller bugs, not forgeries). `output` is zeroed
    ///   whatever the error.
    public static func open(
        _ box: UnsafeRawBufferPointer,
        key: borrowing SecretBytes,
        associatedData: UnsafeRawBufferPointer,
        into output: UnsafeMutableRawBufferPointer
    ) throws {
        do {
            try Sodium.initialize()
            try checkKey(key)
            guard box.count >= overhead, let boxBase = box.baseAddress else {
                throw SodiumError.authenticationFailure
            }
            let expected = box.count - overhead
            guard output.count == expected else {
                throw SodiumError.invalidLength("output", expected: expected, actual: output.count)
            }
            let status = decrypt(
                into: output,
                ciphertext: UnsafeRawBufferPointer(start: boxBase + nonceCount, count: box.count - nonceCount),
                associatedData: associatedData,
                nonce: boxBase,
                key: key
            )
            guard status == 0 else { throw SodiumError.authenticationFailure }
        } catch {
            secureZero(output)
            throw error
        }
    }

    /// Unwraps a secret straight into guarded memory (never through [UInt8]).
    ///
    /// - Throws: `.authenticationFailure` (also for a box shorter than `overhead`),
    ///   `.invalidLength("key", …)`, `.allocationFailure`.
    public static func openSecret(
        _ box: UnsafeRawBufferPointer,
        key: borrowing SecretBytes,
        associatedData: UnsafeRawBufferPointer
    ) throws -> SecretBytes {
        try Sodium.initialize()
        try checkKey(key)
        guard box.count >= overhead else { throw SodiumError.authenticationFailure }
        var secret = try SecretBytes(count: box.count - overhead)
        // On failure `open` zeroes the buffer and `secret` is freed (wiped) on the way out.
        try secret.withUnsafeMutableBytes { (output: UnsafeMutableRawBufferPointer) throws -> Void in
            try open(box, key: key, associatedData: associatedData, into: output)
        }
        return secret
    }

    /// Deterministic form for known-answer tests only: explicit 24-byte nonce, returns ciphertext||tag (no nonce prefix).
    ///
    /// - Warning: Never use in production: reusing a (key, nonce) pair with
    ///   ChaCha20-Poly1305 reveals the XOR of plaintexts and allows forgeries. Use
    ///   `seal`, which draws a fresh random nonce.
    /// - Throws: `.invalidLength("key" | "nonce" | "plaintext", …)`.
    public static func sealDetached(
        _ plaintext: UnsafeRawBufferPointer,
        key: borrowing SecretBytes,
        nonce: UnsafeRawBufferPointer,
        associatedData: UnsafeRawBufferPointer
    ) throws -> [UInt8] {
        try Sodium.initialize()
        try checkKey(key)
        guard nonce.count == nonceCount, let nonceBase = nonce.baseAddress else {
            throw SodiumError.invalidLength("nonce", expected: nonceCount, actual: nonce.count)
        }
        guard plaintext.count <= maximumPlaintextCount else {
            throw SodiumError.invalidLength("plaintext", expected: maximumPlaintextCount, actual: plaintext.count)
        }
        let count = plaintext.count + tagCount
        return [UInt8](unsafeUninitializedCapacity: count) { buffer, initializedCount in
            let status = encrypt(
                into: UnsafeMutableRawPointer(buffer.baseAddress!),
                plaintext: plaintext,
                associatedData: associatedData,
                nonce: nonceBase,
                key: key
            )
            precondition(status == 0, "crypto_aead_xchacha20poly1305_ietf_encrypt failed")
            initializedCount = count
        }
    }

    // MARK: - libsodium calls

    private static func checkKey(_ key: borrowing SecretBytes) throws {
        guard key.count == keyCount else {
            throw SodiumError.invalidLength("key", expected: keyCount, actual: key.count)
        }
    }

    /// `crypto_aead_xchacha20poly1305_ietf_encrypt`, writing `plaintext.count + tagCount` bytes at `ciphertext`.
    private static func encrypt(
        into ciphertext: UnsafeMutableRawPointer,
        plaintext: UnsafeRawBufferPointer,
        associatedData: UnsafeRawBufferPointer,
        nonce: UnsafeRawPointer,
        key: borrowing SecretBytes
    ) -> Int32 {
        crypto_aead_xchacha20poly1305_ietf_encrypt(
            ciphertext.assumingMemoryBound(to: UInt8.self),
            nil,  // clen_p: the length is known (plaintext + ABYTES)
            cBytes(plaintext),
            UInt64(plaintext.count),
            cBytes(associatedData),
            UInt64(associatedData.count),
            nil,  // nsec: unused by this construction, must be NULL
            nonce.assumingMemoryBound(to: UInt8.self),
            UnsafeRawPointer(key.base).assumingMemoryBound(to: UInt8.self)
        )
    }

    /// `crypto_aead_xchacha20poly1305_ietf_decrypt` of `ciphertext || tag` into `output`.
    private static func decrypt(
        into output: UnsafeMutableRawBufferPointer,
        ciphertext: UnsafeRawBufferPointer,
        associatedData: UnsafeRawBufferPointer,
        nonce: UnsafeRawPointer,
        key: borrowing SecretBytes
    ) -> Int32 {
        // libsodium verifies the tag before decrypting (and clears `m` on failure;
        // `open` wipes it again regardless). An empty output may pass NULL: libsodium
        // then only verifies, and there is nothing to write.
        crypto_aead_xchacha20poly1305_ietf_decrypt(
            output.baseAddress?.assumingMemoryBound(to: UInt8.self),
            nil,  // mlen_p: the length is known (ciphertext - ABYTES)
            nil,  // nsec: unused, must be NULL
            ciphertext.baseAddress!.assumingMemoryBound(to: UInt8.self),  // at least ABYTES long
            UInt64(ciphertext.count),
            cBytes(associatedData),
            UInt64(associatedData.count),
            nonce.assumingMemoryBound(to: UInt8.self),
            UnsafeRawPointer(key.base).assumingMemoryBound(to: UInt8.self)
        )
    }
}

/// A byte pointer for libsodium, or NULL for an empty buffer without storage;
/// libsodium accepts NULL with a zero length for messages and associated data.
func cBytes(_ buffer: UnsafeRawBufferPointer) -> UnsafePointer<UInt8>? {
    buffer.baseAddress?.assumingMemoryBound(to: UInt8.self)
}
