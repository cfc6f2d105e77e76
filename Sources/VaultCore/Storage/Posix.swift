import Locking
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Thin helpers over the system calls the vault makes itself (key files, the data
/// directory lock, fsync of directories). Each retries EINTR and maps errno to
/// `VaultError.io` naming the operation and path, never file content.
enum Posix {
    static func errnoText(_ e: Int32 = errno) -> String { String(cString: strerror(e)) }

    @discardableResult
    static func retrying(_ what: @autoclosure () -> String, _ call: () -> Int32) throws -> Int32 {
        while true {
            let r = call()
            if r >= 0 { return r }
            if errno == EINTR { continue }
            throw VaultError.io("\(what()): \(errnoText())")
        }
    }

    static func fsyncDirectory(_ path: String) throws {
        let fd = try retrying("open \(path)") { open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        defer { close(fd) }
        try retrying("fsync \(path)") { fsync(fd) }
    }

    static func exists(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    static func mode(_ path: String) -> UInt32? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return UInt32(st.st_mode & 0o7777)
    }

    static func makeDirectory(_ path: String, mode: mode_t = 0o700) throws {
        if mkdir(path, mode) != 0 && errno != EEXIST {
            throw VaultError.io("mkdir \(path): \(errnoText())")
        }
    }

    static func rename(_ from: String, _ to: String) throws {
        try retrying("rename \(from) to \(to)") { Glibc.rename(from, to) }
    }

    /// Overwrites a regular file's bytes with zeros, syncs, then unlinks it: so a replaced
    /// key file or keystore leaves no readable copy in the file system's live blocks.
    static func shred(_ path: String) throws {
        let fd = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW)
        if fd < 0 {
            if errno == ENOENT { return }
            throw VaultError.io("open \(path): \(errnoText())")
        }
        defer { close(fd) }
        try zeroFill(fd: fd, path: path)
        try retrying("unlink \(path)") { unlink(path) }
    }

    static func zeroFill(fd: Int32, path: String) throws {
        var st = stat()
        try retrying("fstat \(path)") { fstat(fd, &st) }
        let zeros = [UInt8](repeating: 0, count: 1 << 16)
        var left = Int(st.st_size)
        var offset: off_t = 0
        while left > 0 {
            let n = min(left, zeros.count)
            let w = zeros.withUnsafeBytes { pwrite(fd, $0.baseAddress, n, offset) }
            if w < 0 {
                if errno == EINTR { continue }
                throw VaultError.io("overwrite \(path): \(errnoText())")
            }
            left -= w
            offset += off_t(w)
        }
        try retrying("fsync \(path)") { fsync(fd) }
    }

    /// Removes a directory tree, shredding every regular file in it first.
    static func shredTree(_ path: String) throws {
        guard let dir = opendir(path) else {
            if errno == ENOENT { return }
            throw VaultError.io("opendir \(path): \(errnoText())")
        }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        closedir(dir)
        for name in names {
            let child = path + "/" + name
            if isDirectory(child) { try shredTree(child) } else { try shred(child) }
        }
        try retrying("rmdir \(path)") { rmdir(path) }
    }
}

/// An exclusive advisory lock on `<data-dir>/LOCK` (flock), held while the vault is open,
/// so two processes never open the same data directory.
///
/// A lock held elsewhere is tried again for up to `wait` before the directory is declared in use:
/// a lock just released can outlive its holder for a moment (a process still exiting, or a child
/// being spawned that holds a copy of every descriptor until its exec closes them), and a vault
/// reopened at that moment would otherwise be refused.
final class DirectoryLock: Sendable {
    private let fd: Locked<Int32>

    init(directory: String, wait: Duration = .seconds(2)) throws {
        let path = directory + "/LOCK"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw VaultError.dataDirectory("cannot open \(path): \(Posix.errnoText())") }
        let deadline = ContinuousClock.now + wait
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let e = errno
            if e == EINTR { continue }
            if e == EWOULDBLOCK, ContinuousClock.now < deadline {
                usleep(20_000)
                continue
            }
            close(fd)
            if e == EWOULDBLOCK {
                throw VaultError.dataDirectory("\(directory) is in use by another process")
            }
            throw VaultError.dataDirectory("cannot lock \(path): \(Posix.errnoText(e))")
        }
        self.fd = Locked(fd)
    }

    /// Releases the lock (closing the descriptor drops the flock); idempotent.
    func release() {
        fd.withLock { fd in
            if fd >= 0 { close(fd) }
            fd = -1
        }
    }

    deinit { release() }
}
