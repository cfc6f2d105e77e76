import Foundation
import LMDB
public import Sodium

/// `keys/audit.key`: the Ed25519 key that signs the transparency logs' tree heads. Beside the
/// master key file, never in the keystore or the journal: whoever can rewrite the keystore
/// cannot sign a head for the rewritten history.
///
/// Layout (45 bytes): `"SVAK"`, a format byte (1), the time it was made (i64 ms, big-endian),
/// the 32-byte seed. 0600, owned by the vault's user, checked at every start like the master key.
public struct AuditKeyFile: Sendable {
    static let magic: [UInt8] = Array("SVAK".utf8)
    static let format: UInt8 = 1
    static let length = 4 + 1 + 8 + 32

    public let path: String

    public init(path: String) { self.path = path }

    /// The default place: `audit.key` beside the master key file.
    public init(besideMasterKey masterKeyFile: String) {
        path = MasterKeyFile.directory(of: masterKeyFile) + "/audit.key"
    }

    public var exists: Bool { Posix.exists(path) }

    /// Where a rotation makes the next key before the keystore lists it (`AuditKeys.rotate`).
    var next: AuditKeyFile { AuditKeyFile(path: path + ".next") }

    /// Makes a new key made at `now`; refuses to overwrite a file.
    func create(now: Int64) throws {
        guard !exists else { throw VaultError.auditKey("\(path) already exists; refusing to overwrite an audit key") }
        var file = try SecretBytes(count: Self.length)
        let seed = try SecretBytes.random(count: SigningKey.seedCount)
        file.withUnsafeMutableBytes { out in
            out.copyBytes(from: Self.magic)
            out[4] = Self.format
            withUnsafeBytes(of: now.bigEndian) { UnsafeMutableRawBufferPointer(rebasing: out[5..<13]).copyMemory(from: $0) }
            seed.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: out[13..<45]).copyMemory(from: $0) }
        }
        try SecretFile.write(file, to: path, failure: VaultError.auditKey)
    }

    func load() throws -> AuditSigner {
        let raw = try SecretFile.read(path, length: Self.length, kind: "ShredVault audit key file", failure: VaultError.auditKey)
        let made: Int64 = try raw.withUnsafeBytes { buf in
            guard Array(buf[0..<4]) == Self.magic, buf[4] == Self.format else {
                throw VaultError.auditKey("\(path) is not a ShredVault audit key file (bad header)")
            }
            return Int64(bitPattern: buf[5..<13].reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
        }
        let seed = try raw.withUnsafeBytes { try SecretBytes(copying: UnsafeRawBufferPointer(rebasing: $0[13..<45])) }
        return AuditSigner(key: try SigningKey(seed: seed), made: made)
    }
}

/// A public key that signs (or signed) this vault's tree heads, listed from `from` on.
public struct AuditPublicKey: Sendable, Equatable {
    public let publicKey: [UInt8]
    /// When the vault began signing with it (ms).
    public let from: Int64
    /// The lowercase hex of the first 8 bytes of SHA-256(public key).
    public var keyID: String { Self.keyID(publicKey) }

    static func keyID(_ publicKey: [UInt8]) -> String { Array(SHA256.hash(publicKey).prefix(8)).hex }
}

/// The signing half, in guarded memory.
final class AuditSigner: Sendable {
    let key: SigningKey
    let made: Int64
    let keyID: String

    init(key: consuming SigningKey, made: Int64) {
        self.keyID = AuditPublicKey.keyID(key.publicKey)
        self.key = key
        self.made = made
    }
}

/// A signed tree head of one log (API: `GET /v1/audit/head`).
public struct SignedTreeHead: Sendable, Equatable {
    public let size: UInt64
    public let root: [UInt8]
    /// When it was signed (ms).
    public let at: Int64
    /// The tenant whose log it heads; nil for the operator's.
    public let tenant: String?
    public let signature: [UInt8]
    public let keyID: String

    /// What the signature covers: the canonical JSON of size, root, at and tenant (keys sorted,
    /// no white space, root in base64, at in RFC 3339 with milliseconds, tenant null for the
    /// operator's log) — what `json.dumps(..., sort_keys=True, separators=(",", ":"))` writes.
    public static func signedBytes(size: UInt64, root: [UInt8], at: String, tenant: String?) -> [UInt8] {
        // Slugs are [a-z0-9-] and the other values are ASCII: nothing to escape.
        let t = tenant.map { "\"\($0)\"" } ?? "null"
        return Array("{\"at\":\"\(at)\",\"root\":\"\(Data(root).base64EncodedString())\",\"size\":\(size),\"tenant\":\(t)}".utf8)
    }
}

/// The vault's list of audit public keys (`meta` row `audit_keys`): format 1, a u16 count, then
/// each key's 32 bytes and its `from` (i64 ms). Public values, but a rewritten list cannot fool
/// a verifier: a tenant checks heads against the keys it saved itself.
enum AuditKeys {
    static let metaKey = Array("audit_keys".utf8)

    static func list(in txn: borrowing Transaction, dbs: KeystoreDatabases) throws -> [AuditPublicKey] {
        try txn.withValue(forKey: metaKey, in: dbs.meta) { b in
            guard let b else { return [] }
            var r = ByteReader(b, what: "audit key list")
            try r.format(1)
            let n = try r.u16()
            var keys: [AuditPublicKey] = []
            for _ in 0..<n { keys.append(AuditPublicKey(publicKey: try r.raw(SigningKey.publicKeyCount), from: try r.i64())) }
            try r.end()
            return keys
        }
    }

    static func encode(_ keys: [AuditPublicKey]) -> [UInt8] {
        var w = ByteWriter(capacity: 3 + keys.count * 40)
        w.u8(1)
        w.u16(UInt16(keys.count))
        for k in keys {
            w.raw(k.publicKey)
            w.i64(k.from)
        }
        return w.bytes
    }

    /// The signer of an opening vault. The file must hold the vault's current key. A missing file
    /// is made only when the vault has signed with no key yet, or when `newKey` says so (a restore
    /// on a new machine, an operator who lost the file): the new key is listed after the others,
    /// and tenants see heads signed by a key they have not saved — which they should question.
    static func settle(_ stores: Stores, file: AuditKeyFile, newKey: Bool, now: Int64,
                       progress: ((String) -> Void)?) throws -> AuditSigner {
        try finishRotation(stores, file: file, progress: progress)
        let keys = try stores.keystore.read { try list(in: $0, dbs: stores.ks) }
        if !file.exists {
            guard keys.isEmpty || newKey else {
                throw VaultError.auditKey("\(file.path) is missing; this vault's heads are signed by key "
                                          + "\(keys.last!.keyID): put that file back, or start with --new-audit-key "
                                          + "to sign with a new key from now on (tenants will see the change)")
            }
            try file.create(now: now)
            progress?("made a new audit signing key, \(file.path)")
        }
        let signer = try file.load()
        if let current = keys.last, current.publicKey == signer.key.publicKey { return signer }
        if keys.contains(where: { $0.publicKey == signer.key.publicKey }) {
            throw VaultError.auditKey("\(file.path) holds an earlier audit key of this vault (\(signer.keyID)); "
                                      + "the current one is \(keys.last!.keyID)")
        }
        guard keys.isEmpty || newKey else {
            throw VaultError.auditKey("\(file.path) is not this vault's audit key (it holds \(signer.keyID), the vault "
                                      + "signs with \(keys.last!.keyID)); start with --new-audit-key to sign with it from now on")
        }
        let listed = keys + [AuditPublicKey(publicKey: signer.key.publicKey, from: now)]
        try stores.write { ks, _ in try ks.put(encode(listed), forKey: metaKey, in: stores.ks.meta) }
        return signer
    }

    /// A rotation cut short: a `.next` file whose key the keystore lists as current replaces
    /// the file (the rotation committed); one it does not list is shredded (it did not).
    static func finishRotation(_ stores: Stores, file: AuditKeyFile, progress: ((String) -> Void)?) throws {
        let next = file.next
        guard next.exists else { return }
        let signer = try next.load()
        let current = try stores.keystore.read { try list(in: $0, dbs: stores.ks) }.last
        if current?.publicKey == signer.key.publicKey {
            try Posix.shred(file.path)
            try Posix.rename(next.path, file.path)
            try Posix.fsyncDirectory(MasterKeyFile.directory(of: file.path))
            progress?("finished the rotation of the audit signing key to \(signer.keyID)")
        } else {
            try Posix.shred(next.path)
            progress?("removed \(next.path): a rotation made that key and never listed it")
        }
    }

    /// A new signing key, listed after the others from now on. It is made beside the file
    /// (`.next`, 0600), listed in the keystore with the rotation's audit entry in one write;
    /// then the old file is shredded and the new one renamed over it. A crash between the
    /// steps is finished or undone at the next open (`finishRotation`). Heads signed before
    /// stay valid: their key is still listed by `GET /v1/audit/keys`.
    static func rotate(_ stores: Stores, file: AuditKeyFile, context: OperationContext, actor: Actor) throws -> AuditSigner {
        try finishRotation(stores, file: file, progress: nil)  // a failed rotation of this process
        let next = file.next
        try next.create(now: context.now)
        let signer = try next.load()
        do {
            try stores.write { ks, rec in
                let keys = try list(in: ks, dbs: stores.ks)
                try ks.put(encode(keys + [AuditPublicKey(publicKey: signer.key.publicKey, from: context.now)]),
                           forKey: metaKey, in: stores.ks.meta)
                try AuditLog.append(.init(tenant: nil, actor: actor, action: "audit.rotate_key", target: "audit-key:\(signer.keyID)"),
                                    in: ks, rec, dbs: stores.ks, context: context)
            }
        } catch {
            // Never listed, so nothing was signed with it; a file that cannot go is said too (the
            // next open or rotation removes it).
            do { try Posix.shred(next.path) } catch let shredError {
                throw VaultError.auditKey("the rotation failed (\(error)), and \(next.path) could not be removed: \(shredError)")
            }
            throw error
        }
        context.adoptCommitted()
        try finishRotation(stores, file: file, progress: nil)
        return signer
    }

    /// A standby's check at its start, so that its promotion does not fail for want of the key:
    /// the file holds the vault's current key (or none is listed yet), unless `newKey`.
    static func checkForStandby(_ stores: Stores, file: AuditKeyFile, newKey: Bool) throws {
        guard !newKey else { return }
        let keys = try stores.keystore.read { try list(in: $0, dbs: stores.ks) }
        guard file.exists else {
            guard let current = keys.last else { return }
            throw VaultError.auditKey("\(file.path) is missing: copy the writer's audit key (\(current.keyID)) there, or "
                                      + "start with --new-audit-key to sign with a new key once promoted")
        }
        let signer = try file.load()
        if let current = keys.last, current.publicKey != signer.key.publicKey {
            throw VaultError.auditKey("\(file.path) holds audit key \(signer.keyID), not the writer's \(current.keyID)")
        }
    }
}
