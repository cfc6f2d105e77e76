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
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else {
            throw VaultError.masterKey("cannot open \(path): \(Posix.errnoText())")
        }
        defer { close(fd) }
        var st = stat()
        try Posix.retrying("fstat \(path)") { fstat(fd, &st) }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw VaultError.masterKey("\(path) is not a regular file")
        }
        guard st.st_mode & 0o077 == 0 else {
            throw VaultError.masterKey(
                "\(path) is readable or writable by group or others (mode \(String(st.st_mode & 0o777, radix: 8))); run chmod 600 \(path)")
        }
        guard st.st_uid == geteuid() else {
            throw VaultError.masterKey("\(path) is not owned by the user running the vault")
        }
        guard Int(st.st_size) == length else {
            throw VaultError.masterKey("\(path) is not a ShredVault master key file (wrong size)")
        }
        var raw = try SecretBytes(count: length)
        try raw.withUnsafeMutableBytes { buf in
            var done = 0
            while done < length {
                let n = read(fd, buf.baseAddress! + done, length - done)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw VaultError.masterKey("cannot read \(path)") }
                done += n
            }
        }
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
        let tmp = target + ".tmp"
        unlink(tmp)
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw VaultError.masterKey("cannot create \(tmp): \(Posix.errnoText())") }
        var closed = false
        defer { if !closed { close(fd) } }
        var file = try SecretBytes(count: Self.length)
        file.withUnsafeMutableBytes { out in
            out.copyBytes(from: Self.magic)
            out[4] = Self.format
            withUnsafeBytes(of: generation.bigEndian) { g in
                UnsafeMutableRawBufferPointer(rebasing: out[5..<13]).copyMemory(from: g)
            }
            key.withUnsafeBytes { k in UnsafeMutableRawBufferPointer(rebasing: out[13..<45]).copyMemory(from: k) }
        }
        try file.withUnsafeBytes { buf in
            var done = 0
            while done < buf.count {
                let n = Glibc.write(fd, buf.baseAddress! + done, buf.count - done)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw VaultError.masterKey("cannot write \(tmp): \(Posix.errnoText())") }
                done += n
            }
        }
        try Posix.retrying("fsync \(tmp)") { fsync(fd) }
        close(fd)
        closed = true
        try Posix.rename(tmp, target)
        try Posix.fsyncDirectory(Self.directory(of: target))
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
