#if canImport(Glibc)
import Glibc
#endif
public import Sodium

/// The master key file: the root of the key hierarchy, outside LMDB (docs/architecture.md).
///
/// Layout (45 bytes): `"SVMK"` magic, a format byte (1), the generation (u64, big-endian),
/// then the 32-byte key. The generation lets the keystore say which key wraps its tenant
/// root keys, so an interrupted rotation can be finished or undone at start-up.
/// The file is read straight into guarded memory; it must be a regular file owned by
/// this user with no group or other permission bits.
public struct MasterKeyFile {
    static let magic: [UInt8] = Array("SVMK".utf8)
    static let format: UInt8 = 1
    static let length = 4 + 1 + 8 + 32

    public let path: String

    public init(path: String) { self.path = path }

    /// The file a rotation writes before the keystore commits to the new generation.
    var nextPath: String { path + ".next" }

    /// A loaded master key: its generation and the key in guarded memory.
    public struct Loaded: ~Copyable {
        public let generation: UInt64
        let key: SecretBytes
    }

    /// Creates a new file with a random key (generation 1); refuses to overwrite one.
    @discardableResult
    public func create() throws -> UInt64 {
        guard !Posix.exists(path) else {
            throw VaultError.masterKey("\(path) already exists; refusing to overwrite a master key")
        }
        let key = try SecretBytes.random(count: 32)
        try write(key: key, generation: 1, to: path)
        return 1
    }

    /// Loads the file after checking it is safe to trust.
    public func load() throws -> Loaded {
        try Self.load(path)
    }

    static func load(_ path: String) throws -> Loaded {
        let raw = try SecretFile.read(path, length: length, kind: "ShredVault master key file", failure: VaultError.masterKey)
        let generation: UInt64 = try raw.withUnsafeBytes { buf in
            guard Array(buf[0..<4]) == magic, buf[4] == format else {
                throw VaultError.masterKey("\(path) is not a ShredVault master key file (bad header)")
            }
            return buf[5..<13].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        }
        let key = try raw.withUnsafeBytes { try SecretBytes(copying: UnsafeRawBufferPointer(rebasing: $0[13..<45])) }
        return Loaded(generation: generation, key: key)
    }

    /// Writes `key` as `generation` into `target` via a temporary file, fsync and rename.
    func write(key: borrowing SecretBytes, generation: UInt64, to target: String) throws {
        var file = try SecretBytes(count: Self.length)
        file.withUnsafeMutableBytes { out in
            out.copyBytes(from: Self.magic)
            out[4] = Self.format
            withUnsafeBytes(of: generation.bigEndian) { g in
                UnsafeMutableRawBufferPointer(rebasing: out[5..<13]).copyMemory(from: g)
            }
            key.withUnsafeBytes { k in UnsafeMutableRawBufferPointer(rebasing: out[13..<45]).copyMemory(from: k) }
        }
        try SecretFile.write(file, to: target, failure: VaultError.masterKey)
    }

    /// Makes the `.next` file the master key: atomic rename over the old file, whose
    /// blocks are overwritten through a descriptor kept open across the rename.
    func promoteNext() throws {
        let oldFD = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW)
        defer { if oldFD >= 0 { close(oldFD) } }
        try Posix.rename(nextPath, path)
        try Posix.fsyncDirectory(Self.directory(of: path))
        if oldFD >= 0 { try Posix.zeroFill(fd: oldFD, path: path + " (previous generation)") }
    }

    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let d = String(path[..<slash])
        return d.isEmpty ? "/" : d
    }
}
