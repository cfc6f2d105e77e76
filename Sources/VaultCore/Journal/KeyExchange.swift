import Sodium

/// The single-use X25519 exchange that carries a new master key generation to the standbys
/// (docs/operations.md, "A standby"; docs/threat-model.md).
///
/// A standby at generation g holds a fresh key pair for g: the private half in
/// `<key file>.exchange` (0600, beside the master key file), the public half published in the
/// journal with a tag only a holder of MK(g) can make. The rotation to g + 1 seals MK(g + 1)
/// (`crypto_box_seal`) to every public key published for g with a valid tag, inside the switch
/// change set (itself sealed under g's journal key). The standby opens its box, moves its key
/// file to g + 1, destroys the private half, and publishes a new pair for g + 1.
///
/// So no long-lived key leads from one generation to the next: an old key file and every
/// journal row of its epoch (PostgreSQL's WAL keeps them for ever) open the boxes of nobody.
enum KeyExchange {
    /// A recipient of the next generation's key, as a switch change set carries it.
    struct Sealed: Equatable {
        let publicKey: [UInt8]
        let box: [UInt8]
    }

    /// MK(g + 1)'s box count: the key plus `crypto_box_seal`'s overhead.
    static let boxCount = AEAD.keyCount + ExchangeKeyPair.sealOverhead

    /// The tag of a standby's public key for `generation`, keyed by a subkey of MK(generation):
    /// a writer seals the next generation only to keys tagged by a holder of the current one, so
    /// a PostgreSQL account that can insert rows but holds no master key receives nothing.
    static func tag(publicKey: [UInt8], name: String, generation: UInt64, master: Key) throws -> [UInt8] {
        let key = try KeyedHash.deriveKey(from: master.bytes, subkeyID: 3, context: "svexchng")
        return try KeyedHash.hash(Array("shredvault exchange key".utf8) + .be(generation) + publicKey + Array(name.utf8),
                                  key: key)
    }

    /// Seals `next` to each published key whose tag `master` (the current generation) made.
    static func seal(_ next: Key, to published: [PublishedExchangeKey], generation: UInt64, master: Key) throws -> [Sealed] {
        var sealed: [Sealed] = []
        for p in published where p.generation == generation && p.publicKey.count == ExchangeKeyPair.publicKeyCount {
            let expected = try tag(publicKey: p.publicKey, name: p.name, generation: generation, master: master)
            guard constantTimeEquals(expected, p.tag) else { continue }
            guard !sealed.contains(where: { $0.publicKey == p.publicKey }) else { continue }
            sealed.append(Sealed(publicKey: p.publicKey, box: try ExchangeKeyPair.seal(next.bytes, to: p.publicKey)))
        }
        return sealed
    }
}

/// A public key a standby published in the journal for one generation.
struct PublishedExchangeKey: Sendable {
    let name: String
    let generation: UInt64
    let publicKey: [UInt8]
    let tag: [UInt8]
}

/// `<master key file>.exchange`: a standby's private exchange key for one generation.
///
/// Layout (45 bytes): `"SVKX"`, a format byte (1), the generation (u64, big-endian), the 32-byte
/// X25519 private key. Checked like the master key file (regular, owned, mode 0600).
struct ExchangeKeyFile {
    static let magic: [UInt8] = Array("SVKX".utf8)
    static let format: UInt8 = 1
    static let length = 4 + 1 + 8 + 32

    let path: String

    init(besideMasterKey masterKeyFile: String) { path = masterKeyFile + ".exchange" }

    /// The key pair a file holds, and the generation it is for.
    final class Held {
        let generation: UInt64
        let pair: ExchangeKeyPair
        init(generation: UInt64, pair: consuming ExchangeKeyPair) {
            self.generation = generation
            self.pair = pair
        }
    }

    /// The generation and key pair the file holds, nil when there is no file.
    func load() throws -> Held? {
        guard Posix.exists(path) else { return nil }
        let raw = try SecretFile.read(path, length: Self.length, kind: "ShredVault exchange key file", failure: VaultError.masterKey)
        let generation: UInt64 = try raw.withUnsafeBytes { buf in
            guard Array(buf[0..<4]) == Self.magic, buf[4] == Self.format else {
                throw VaultError.masterKey("\(path) is not a ShredVault exchange key file (bad header)")
            }
            return readBE(buf, at: 5)
        }
        let secret = try raw.withUnsafeBytes { try SecretBytes(copying: UnsafeRawBufferPointer(rebasing: $0[13..<45])) }
        return Held(generation: generation, pair: try ExchangeKeyPair(secretKey: secret))
    }

    /// A new key pair for `generation`, written (0600, fsynced) over whatever the file held,
    /// whose blocks are zero-filled first.
    func create(generation: UInt64) throws -> ExchangeKeyPair {
        let pair = try ExchangeKeyPair()
        var file = try SecretBytes(count: Self.length)
        file.withUnsafeMutableBytes { out in
            out.copyBytes(from: Self.magic)
            out[4] = Self.format
            withUnsafeBytes(of: generation.bigEndian) { UnsafeMutableRawBufferPointer(rebasing: out[5..<13]).copyMemory(from: $0) }
            pair.secretKey.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: out[13..<45]).copyMemory(from: $0) }
        }
        try destroy()
        try SecretFile.write(file, to: path, failure: VaultError.masterKey)
        return pair
    }

    /// Zero-fills and removes the file (the private half is used, or of a past generation).
    func destroy() throws {
        try Posix.shred(path)
        try Posix.shred(path + ".tmp")
    }
}
