import CSodium

/// Anonymous public-key encryption (libsodium `crypto_box_seal`: X25519 with an ephemeral
/// sender key, then XSalsa20-Poly1305): whoever holds a recipient's public key can seal a
/// secret only that recipient's private key opens.
///
/// The journal's single-use key exchange: a standby publishes a fresh key pair's public half
/// per master key generation, and the rotation to the next generation seals that generation's
/// key to it; the standby destroys the private half once it has opened the box.
public struct ExchangeKeyPair: ~Copyable, Sendable {
    /// 32 (`crypto_box_publickeybytes()`).
    public static let publicKeyCount = Int(crypto_box_publickeybytes())
    /// 32 (`crypto_box_secretkeybytes()`).
    public static let secretKeyCount = Int(crypto_box_secretkeybytes())
    /// 48 (`crypto_box_sealbytes()`): a sealed box is this much longer than its message.
    public static let sealOverhead = Int(crypto_box_sealbytes())

    /// The private half, in guarded memory only.
    public let secretKey: SecretBytes
    public let publicKey: [UInt8]

    /// A new random key pair (`crypto_box_keypair`), the private half made in guarded memory.
    /// - Throws: `.allocationFailure` when `sodium_malloc` fails.
    public init() throws {
        try Sodium.initialize()
        var secret = try SecretBytes(count: Self.secretKeyCount)
        var pk = [UInt8](repeating: 0, count: Self.publicKeyCount)
        let rc = secret.withUnsafeMutableBytes { sk in
            pk.withUnsafeMutableBufferPointer { p in
                crypto_box_keypair(p.baseAddress!, sk.baseAddress!.assumingMemoryBound(to: UInt8.self))
            }
        }
        precondition(rc == 0, "crypto_box_keypair always succeeds")  // libsodium: returns 0
        secretKey = secret
        publicKey = pk
    }

    /// The key pair of a stored private half (the public half is `crypto_scalarmult_base` of it).
    /// - Throws: `.invalidLength("secret key", …)` when it is not 32 bytes.
    public init(secretKey: consuming SecretBytes) throws {
        try Sodium.initialize()
        guard secretKey.count == Self.secretKeyCount else {
            throw SodiumError.invalidLength("secret key", expected: Self.secretKeyCount, actual: secretKey.count)
        }
        var pk = [UInt8](repeating: 0, count: Self.publicKeyCount)
        let rc = secretKey.withUnsafeBytes { sk in
            pk.withUnsafeMutableBufferPointer { p in
                crypto_scalarmult_base(p.baseAddress!, sk.baseAddress!.assumingMemoryBound(to: UInt8.self))
            }
        }
        // libsodium: -1 only for a secret key whose public key is the all-zero point, which a
        // clamped X25519 scalar never gives.
        guard rc == 0 else { throw SodiumError.invalidLength("secret key", expected: Self.secretKeyCount, actual: 0) }
        self.secretKey = secretKey
        publicKey = pk
    }

    /// Seals `message` to `publicKey` (`crypto_box_seal`); the box is `sealOverhead` bytes longer.
    /// - Throws: `.invalidLength("public key", …)` for a key that is not 32 bytes.
    public static func seal(_ message: borrowing SecretBytes, to publicKey: [UInt8]) throws -> [UInt8] {
        try Sodium.initialize()
        guard publicKey.count == publicKeyCount else {
            throw SodiumError.invalidLength("public key", expected: publicKeyCount, actual: publicKey.count)
        }
        var box = [UInt8](repeating: 0, count: message.count + sealOverhead)
        let rc = message.withUnsafeBytes { m in
            box.withUnsafeMutableBufferPointer { b in
                publicKey.withUnsafeBufferPointer { p in
                    crypto_box_seal(b.baseAddress!, m.baseAddress!.assumingMemoryBound(to: UInt8.self), UInt64(m.count),
                                    p.baseAddress!)
                }
            }
        }
        // libsodium: -1 when the public key is a low-order point (no shared secret).
        guard rc == 0 else { throw SodiumError.authenticationFailure }
        return box
    }

    /// Opens a box sealed to this key pair into guarded memory (`crypto_box_seal_open`).
    /// - Throws: `.authenticationFailure` when the box was not sealed to this key or was changed.
    public func open(_ box: [UInt8]) throws -> SecretBytes {
        guard box.count >= Self.sealOverhead else { throw SodiumError.authenticationFailure }
        var message = try SecretBytes(count: box.count - Self.sealOverhead)
        let rc = message.withUnsafeMutableBytes { m in
            box.withUnsafeBufferPointer { b in
                publicKey.withUnsafeBufferPointer { p in
                    secretKey.withUnsafeBytes { sk in
                        crypto_box_seal_open(m.baseAddress!.assumingMemoryBound(to: UInt8.self), b.baseAddress!,
                                             UInt64(b.count), p.baseAddress!, sk.baseAddress!.assumingMemoryBound(to: UInt8.self))
                    }
                }
            }
        }
        guard rc == 0 else { throw SodiumError.authenticationFailure }
        return message
    }
}
