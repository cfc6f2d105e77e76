import CSodium

/// Ed25519 signatures (libsodium `crypto_sign`): the audit's signed tree heads.
///
/// The secret half lives in guarded memory only: the 32-byte seed a key file holds and the
/// 64-byte expanded secret key libsodium signs with. The public key is not secret.
public struct SigningKey: ~Copyable, Sendable {
    /// 32 (`crypto_sign_seedbytes()`).
    public static let seedCount = Int(crypto_sign_seedbytes())
    /// 32 (`crypto_sign_publickeybytes()`).
    public static let publicKeyCount = Int(crypto_sign_publickeybytes())
    /// 64 (`crypto_sign_bytes()`).
    public static let signatureCount = Int(crypto_sign_bytes())

    private let secretKey: SecretBytes
    public let publicKey: [UInt8]

    /// The key pair of `seed` (`crypto_sign_seed_keypair`).
    /// - Throws: `.invalidLength("seed", …)` when the seed is not 32 bytes.
    public init(seed: borrowing SecretBytes) throws {
        try Sodium.initialize()
        guard seed.count == Self.seedCount else {
            throw SodiumError.invalidLength("seed", expected: Self.seedCount, actual: seed.count)
        }
        var secret = try SecretBytes(count: Int(crypto_sign_secretkeybytes()))
        var pk = [UInt8](repeating: 0, count: Self.publicKeyCount)
        let rc = seed.withUnsafeBytes { s in
            secret.withUnsafeMutableBytes { sk in
                pk.withUnsafeMutableBufferPointer { p in
                    crypto_sign_seed_keypair(p.baseAddress!, sk.baseAddress!.assumingMemoryBound(to: UInt8.self),
                                             s.baseAddress!.assumingMemoryBound(to: UInt8.self))
                }
            }
        }
        precondition(rc == 0, "crypto_sign_seed_keypair always succeeds")  // libsodium: returns 0
        secretKey = secret
        publicKey = pk
    }

    /// The detached signature of `message` (`crypto_sign_detached`).
    public func sign(_ message: [UInt8]) -> [UInt8] {
        var signature = [UInt8](repeating: 0, count: Self.signatureCount)
        secretKey.withUnsafeBytes { sk in
            message.withUnsafeBufferPointer { m in
                signature.withUnsafeMutableBufferPointer { s in
                    // libsodium: crypto_sign_detached always returns 0.
                    _ = crypto_sign_detached(s.baseAddress!, nil, m.baseAddress, UInt64(m.count),
                                             sk.baseAddress!.assumingMemoryBound(to: UInt8.self))
                }
            }
        }
        return signature
    }

    /// Whether `signature` is `publicKey`'s signature of `message` (`crypto_sign_verify_detached`).
    public static func verify(signature: [UInt8], of message: [UInt8], publicKey: [UInt8]) -> Bool {
        Sodium.initializeOrTrap()
        guard signature.count == signatureCount, publicKey.count == publicKeyCount else { return false }
        return signature.withUnsafeBufferPointer { s in
            message.withUnsafeBufferPointer { m in
                publicKey.withUnsafeBufferPointer { p in
                    crypto_sign_verify_detached(s.baseAddress!, m.baseAddress, UInt64(m.count), p.baseAddress!) == 0
                }
            }
        }
    }
}
