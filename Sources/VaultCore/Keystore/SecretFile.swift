#if canImport(Glibc)
import Glibc
#endif
import Sodium

/// A file that holds a key (the master key file, the audit signing key): read straight into
/// guarded memory after checking it is safe to trust, written through a temporary file,
/// fsync and rename. `failure` makes the error of the caller's kind (it is given a message
/// that names the path, never a byte of the content).
enum SecretFile {
    /// The file's bytes, which must number exactly `length`: a regular file, not a symbolic
    /// link, owned by this user, with no group or other permission bits.
    static func read(_ path: String, length: Int, kind: String,
                     failure: (String) -> VaultError) throws -> SecretBytes {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { throw failure("cannot open \(path): \(Posix.errnoText())") }
        defer { close(fd) }
        var st = stat()
        try Posix.retrying("fstat \(path)") { fstat(fd, &st) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw failure("\(path) is not a regular file") }
        guard st.st_mode & 0o077 == 0 else {
            throw failure("\(path) is readable or writable by group or others (mode "
                          + "\(String(st.st_mode & 0o777, radix: 8))); run chmod 600 \(path)")
        }
        guard st.st_uid == geteuid() else { throw failure("\(path) is not owned by the user running the vault") }
        guard Int(st.st_size) == length else { throw failure("\(path) is not a \(kind) (wrong size)") }
        var raw = try SecretBytes(count: length)
        try raw.withUnsafeMutableBytes { buf in
            var done = 0
            while done < length {
                let n = Glibc.read(fd, buf.baseAddress! + done, length - done)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw failure("cannot read \(path)") }
                done += n
            }
        }
        return raw
    }

    /// Writes `bytes` into `target` (mode 0600) via `target.tmp`, fsync, rename and an fsync of
    /// the directory.
    static func write(_ bytes: borrowing SecretBytes, to target: String, failure: (String) -> VaultError) throws {
        let tmp = target + ".tmp"
        unlink(tmp)
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw failure("cannot create \(tmp): \(Posix.errnoText())") }
        var closed = false
        defer { if !closed { close(fd) } }
        try bytes.withUnsafeBytes { buf in
            var done = 0
            while done < buf.count {
                let n = Glibc.write(fd, buf.baseAddress! + done, buf.count - done)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw failure("cannot write \(tmp): \(Posix.errnoText())") }
                done += n
            }
        }
        try Posix.retrying("fsync \(tmp)") { fsync(fd) }
        close(fd)
        closed = true
        try Posix.rename(tmp, target)
        try Posix.fsyncDirectory(MasterKeyFile.directory(of: target))
    }
}
