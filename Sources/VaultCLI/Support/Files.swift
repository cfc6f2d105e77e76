import Sodium
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Overwrites an array's bytes with zeros (tokens, subjects, record data we read or built).
func wipe(_ bytes: inout [UInt8]) {
    bytes.withUnsafeMutableBytes { secureZero($0) }
}

/// Reading whole files and standard input into byte arrays without a `String` or `Data`
/// copy of what may be personal data or a credential.
enum Files {
    /// The whole content of `path`. `what` names the file in errors ("token file").
    static func read(_ path: String, what: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw CLIError("cannot open \(what) \(path): \(errnoText())") }
        defer { close(fd) }
        return try read(fd: fd, name: "\(what) \(path)")
    }

    /// Everything on standard input.
    static func readStandardInput(what: String) throws -> [UInt8] {
        try read(fd: 0, name: what)
    }

    /// Reads to end of file in fixed chunks, then joins them into one exact-size array and
    /// wipes the chunks: no grown-and-abandoned array keeps a stray copy of the content.
    private static func read(fd: Int32, name: String) throws -> [UInt8] {
        var chunks: [[UInt8]] = []
        defer { for i in chunks.indices { wipe(&chunks[i]) } }
        var total = 0
        while true {
            var chunk = [UInt8](repeating: 0, count: 1 << 16)
            var filled = 0
            while filled < chunk.count {
                let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + filled, $0.count - filled) }
                if n < 0 {
                    if errno == EINTR { continue }
                    let text = errnoText()
                    wipe(&chunk)
                    throw CLIError("cannot read \(name): \(text)")
                }
                if n == 0 { break }
                filled += n
            }
            total += filled
            chunks.append(chunk)
            if filled < chunk.count { break }
            guard total <= 64 << 20 else { throw CLIError("\(name) is larger than 64 MiB") }
        }
        var result = [UInt8](repeating: 0, count: total)
        var offset = 0
        result.withUnsafeMutableBytes { out in
            for chunk in chunks where offset < total {
                let n = min(chunk.count, total - offset)
                chunk.withUnsafeBytes { out.baseAddress!.advanced(by: offset).copyMemory(from: $0.baseAddress!, byteCount: n) }
                offset += n
            }
        }
        return result
    }

    /// Drops trailing CR, LF, spaces and tabs (a file written by `echo` or an editor).
    static func trimTrailingWhitespace(_ bytes: inout [UInt8]) {
        var end = bytes.count
        while end > 0, [0x0A, 0x0D, 0x20, 0x09].contains(bytes[end - 1]) { end -= 1 }
        if end < bytes.count {
            bytes.withUnsafeMutableBytes { secureZero(UnsafeMutableRawBufferPointer(rebasing: $0[end...])) }
            bytes.removeLast(bytes.count - end)
        }
    }

    /// Drops trailing CR and LF only (a subject may legitimately end in a space).
    static func trimTrailingNewlines(_ bytes: inout [UInt8]) {
        var end = bytes.count
        while end > 0, bytes[end - 1] == 0x0A || bytes[end - 1] == 0x0D { end -= 1 }
        if end < bytes.count {
            bytes.withUnsafeMutableBytes { secureZero(UnsafeMutableRawBufferPointer(rebasing: $0[end...])) }
            bytes.removeLast(bytes.count - end)
        }
    }

    /// Creates a new file with `mode` (refusing an existing one) and writes `contents`.
    static func create(_ path: String, mode: mode_t, contents: [UInt8]) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode)
        guard fd >= 0 else { throw CLIError("cannot create \(path): \(errnoText())") }
        defer { close(fd) }
        // Exactly `mode`, whatever the umask.
        fchmod(fd, mode)
        var done = 0
        while done < contents.count {
            let n = contents.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 {
                if errno == EINTR { continue }
                throw CLIError("cannot write \(path): \(errnoText())")
            }
            done += n
        }
        guard fsync(fd) == 0 else { throw CLIError("cannot sync \(path): \(errnoText())") }
    }

    /// Writes `contents` with `mode` to a new file beside `path`, then renames it over `path`:
    /// an existing file is replaced whole, never left half written.
    static func replace(_ path: String, mode: mode_t, contents: [UInt8]) throws {
        let temporary = "\(path).tmp-\(getpid())"
        try create(temporary, mode: mode, contents: contents)
        guard rename(temporary, path) == 0 else {
            let text = errnoText()
            unlink(temporary)
            throw CLIError("cannot replace \(path): \(text)")
        }
    }

    /// Permission bits of `path`, or nil when it cannot be stat'ed.
    static func mode(_ path: String) -> mode_t? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return st.st_mode & 0o7777
    }

    static func exists(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    /// `mkdir -p` with `mode` for every directory it creates (existing ones are left alone).
    static func makeDirectories(_ path: String, mode: mode_t) throws {
        guard !path.isEmpty, !exists(path) else { return }
        let parent = directory(of: path)
        if parent != path { try makeDirectories(parent, mode: mode) }
        if mkdir(path, mode) != 0 && errno != EEXIST {
            throw CLIError("cannot create directory \(path): \(errnoText())")
        }
    }

    /// The directory part of a path (`.` for a bare name).
    static func directory(of path: String) -> String {
        var trimmed = Substring(path)
        while trimmed.count > 1, trimmed.hasSuffix("/") { trimmed = trimmed.dropLast() }
        guard let slash = trimmed.lastIndex(of: "/") else { return "." }
        if slash == trimmed.startIndex { return "/" }
        return String(trimmed[..<slash])
    }

    static func errnoText(_ e: Int32 = errno) -> String { String(cString: strerror(e)) }
}

/// An environment variable's bytes, never through `String` (it may be a token).
func environmentBytes(_ name: String) -> [UInt8]? {
    guard let p = getenv(name) else { return nil }
    return Array(UnsafeRawBufferPointer(start: p, count: strlen(p)))
}

func environmentString(_ name: String) -> String? {
    guard let p = getenv(name) else { return nil }
    let s = String(cString: p)
    return s.isEmpty ? nil : s
}
