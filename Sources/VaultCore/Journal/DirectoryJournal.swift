import Locking
#if canImport(Glibc)
import Glibc
#endif

/// The journal in a directory (meant for another disk than the data directory):
///
///     DIR/journal.id                "SVJD", format, vault id (16 bytes)
///     DIR/LOCK                      flock of the one writer
///     DIR/head                      the last sequence appended (u64), a hint written after each append
///     DIR/segments/<first>.seg      frames [u32 length][entry], fdatasynced per append;
///                                   a new segment per epoch, or past 64 MiB
///     DIR/snapshots/<epoch>-<seq>.snap   sealed snapshots, published by rename when durable
///
/// Numbers in names are 16 hex digits, so names sort as numbers. An append that a crash cut
/// short leaves a torn frame at the end of the last segment; it was never acknowledged and is cut
/// off before the next append. The `head` file is written after the entry is durable, never
/// synced: it can lag the segments after a power loss, never lead them, so a head above the last
/// whole entry means change sets were removed from the end (refused: they were acknowledged).
final class DirectoryJournal: JournalBackend, @unchecked Sendable {
    // unchecked: the mutable state (`segment`, `lock`) is touched by one thread at a time: the
    // writer's journal thread once the vault is open, the opening thread before.
    let path: String
    private var lockFD: Int32 = -1
    /// The segment being appended to: descriptor, first sequence, epoch of its entries, size.
    private var segment: (fd: Int32, first: UInt64, epoch: UInt64, size: Int)?
    private var last: (sequence: UInt64, epoch: UInt64)?

    static let identityMagic: [UInt8] = Array("SVJD".utf8)
    static let identityFormat: UInt8 = 1
    static let segmentLimit = 64 << 20

    init(path: String) throws {
        self.path = path
    }

    var description: String { "journal directory \(path)" }
    private var segmentsPath: String { path + "/segments" }
    private var snapshotsPath: String { path + "/snapshots" }

    func identity() throws -> [UInt8]? {
        guard Posix.isDirectory(path) else {
            throw VaultError.journal("\(path) does not exist (create the directory, on another disk than the data)")
        }
        guard let bytes = try Files.readIfExists(path + "/journal.id") else {
            if try !Files.names(in: path).filter({ $0 != "LOCK" }).isEmpty {
                throw VaultError.journal("\(path) is not empty and holds no journal.id: not a ShredVault journal")
            }
            return nil
        }
        guard bytes.count == 4 + 1 + 16, Array(bytes[0..<4]) == Self.identityMagic else {
            throw VaultError.journal("\(path)/journal.id is not a ShredVault journal identity")
        }
        guard bytes[4] == Self.identityFormat else {
            throw VaultError.journal("\(path)/journal.id: format \(bytes[4]) is not supported")
        }
        return Array(bytes[5...])
    }

    func create(vaultID: [UInt8]) throws {
        if let mode = Posix.mode(path), mode & 0o022 != 0 {
            throw VaultError.journal("\(path) is writable by others; run chmod go-w \(path)")
        }
        try Posix.makeDirectory(segmentsPath)
        try Posix.makeDirectory(snapshotsPath)
        try Files.writeDurably(Self.identityMagic + [Self.identityFormat] + vaultID, to: path + "/journal.id")
    }

    func lockForWriting() throws {
        guard lockFD < 0 else { return }
        let lockPath = path + "/LOCK"
        let fd = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw VaultError.journal("cannot open \(lockPath): \(Posix.errnoText())") }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let e = errno
            Glibc.close(fd)
            throw VaultError.journal(e == EWOULDBLOCK ? "\(path) is in use by another vault process"
                                                      : "cannot lock \(lockPath): \(Posix.errnoText(e))")
        }
        lockFD = fd
    }

    // MARK: Segments

    private func segmentNames() throws -> [(first: UInt64, name: String)] {
        guard Posix.isDirectory(segmentsPath) else { return [] }
        return try Files.names(in: segmentsPath).compactMap { name in
            guard name.hasSuffix(".seg"), name.count == 20, let first = UInt64(name.prefix(16), radix: 16) else {
                return nil
            }
            return (first, name)
        }.sorted { $0.first < $1.first }
    }

    private static func segmentName(_ first: UInt64) -> String { hex16(first) + ".seg" }

    /// The whole frames of a segment file, and where the last whole frame ends.
    private func scan(_ name: String, _ body: (JournalEntry) throws -> Bool) throws -> (end: Int, size: Int, stopped: Bool) {
        let file = segmentsPath + "/" + name
        let bytes = try Files.read(file)
        var i = 0
        while bytes.count - i >= 4 {
            let n = bytes.withUnsafeBytes { Int(readBE($0, at: i) as UInt32) }
            guard n >= JournalEntry.headerCount, bytes.count - i - 4 >= n else { break }
            let entry: JournalEntry
            do {
                entry = try JournalEntry(bytes: Array(bytes[(i + 4)..<(i + 4 + n)]))
            } catch {
                throw VaultError.integrity("\(file): the frame at byte \(i) is not a change set (damaged)")
            }
            i += 4 + n
            if try !body(entry) { return (i, bytes.count, true) }
        }
        return (i, bytes.count, false)
    }

    func status() throws -> JournalStatus {
        let names = try segmentNames()
        var status = JournalStatus(head: 0, recordedHead: try recordedHead(), tornTail: false, first: 0)
        var firstSeen: UInt64?
        for (index, (_, name)) in names.enumerated() {
            let isLast = index == names.count - 1
            // Only the last segment is scanned in full; the others need their first entry only.
            let scanned = try scan(name) { entry in
                if firstSeen == nil { firstSeen = entry.sequence }
                status.head = entry.sequence
                return isLast
            }
            if isLast, scanned.end < scanned.size { status.tornTail = true }
        }
        // A segment was cut to nothing (or a new one's first append was torn): its name still says
        // where it starts.
        status.first = firstSeen ?? 0
        return status
    }

    private func recordedHead() throws -> UInt64? {
        guard let bytes = try Files.readIfExists(path + "/head"), bytes.count == 16 else { return nil }
        return bytes.withUnsafeBytes { readBE($0, at: 0) }
    }

    func prepareForAppend() throws {
        let names = try segmentNames()
        guard let lastSegment = names.last else {
            segment = nil
            last = nil
            return
        }
        var lastEntry: JournalEntry?
        let scanned = try scan(lastSegment.name) { lastEntry = $0; return true }
        if lastEntry == nil, names.count > 1 {
            // The last segment holds nothing whole: the entries before it end in the previous one.
            _ = try scan(names[names.count - 2].name) { lastEntry = $0; return true }
        }
        let whole = lastEntry?.sequence ?? (lastSegment.first == 0 ? 0 : lastSegment.first - 1)
        if let recorded = try recordedHead(), recorded > whole {
            throw VaultError.journal("\(path) ends at change set \(whole) but recorded \(recorded) as appended: "
                                     + "acknowledged change sets were removed from its end")
        }
        let file = segmentsPath + "/" + lastSegment.name
        let fd = open(file, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw VaultError.journal("cannot open \(file): \(Posix.errnoText())") }
        if scanned.end < scanned.size {
            // An append a crash cut short: never acknowledged.
            guard ftruncate(fd, off_t(scanned.end)) == 0, fdatasync(fd) == 0 else {
                let e = Posix.errnoText()
                Glibc.close(fd)
                throw VaultError.journal("cannot cut the torn end of \(file): \(e)")
            }
        }
        segment = (fd, lastSegment.first, lastEntry?.epoch ?? 0, scanned.end)
        last = lastEntry.map { ($0.sequence, $0.epoch) }
    }

    func append(_ entry: JournalEntry) throws {
        if let last, entry.sequence != last.sequence + 1 {
            throw VaultError.journal("change set \(entry.sequence) does not follow \(last.sequence)")
        }
        if segment == nil || segment!.epoch != entry.epoch && segment!.size > 0 || segment!.size >= Self.segmentLimit {
            try startSegment(first: entry.sequence, epoch: entry.epoch)
        }
        guard var s = segment else { throw VaultError.journal("no segment open") }
        var frame = [UInt8](); frame.reserveCapacity(4 + entry.bytes.count)
        frame += .be(UInt32(entry.bytes.count))
        frame += entry.bytes
        let file = segmentsPath + "/" + Self.segmentName(s.first)
        var written = 0
        while written < frame.count {
            let w = frame.withUnsafeBytes { pwrite(s.fd, $0.baseAddress! + written, frame.count - written, off_t(s.size + written)) }
            if w < 0 {
                if errno == EINTR { continue }
                let e = errno
                _ = ftruncate(s.fd, off_t(s.size))
                throw VaultError.journal(e == ENOSPC || e == EDQUOT ? "\(path) is full" : "write \(file): \(Posix.errnoText(e))")
            }
            written += w
        }
        if fdatasync(s.fd) != 0 {
            let e = errno
            _ = ftruncate(s.fd, off_t(s.size))
            throw VaultError.journal(e == ENOSPC || e == EDQUOT ? "\(path) is full" : "fdatasync \(file): \(Posix.errnoText(e))")
        }
        s.size += frame.count
        s.epoch = entry.epoch
        segment = s
        last = (entry.sequence, entry.epoch)
        writeHeadHint(entry.sequence, entry.epoch)
    }

    private func writeHeadHint(_ sequence: UInt64, _ epoch: UInt64) {
        // Best effort (a hint): a failure here loses nothing.
        let fd = open(path + "/head", O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        let bytes: [UInt8] = .be(sequence) + .be(epoch)
        _ = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, 16, 0) }
        Glibc.close(fd)
    }

    private func startSegment(first: UInt64, epoch: UInt64) throws {
        let file = segmentsPath + "/" + Self.segmentName(first)
        let fd = open(file, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            let e = errno
            throw VaultError.journal(e == ENOSPC || e == EDQUOT ? "\(path) is full" : "cannot create \(file): \(Posix.errnoText(e))")
        }
        do {
            try Posix.fsyncDirectory(segmentsPath)
        } catch {
            Glibc.close(fd)
            unlink(file)
            throw VaultError.journal("fsync \(segmentsPath): \(error)")
        }
        if let old = segment { Glibc.close(old.fd) }
        segment = (fd, first, epoch, 0)
    }

    /// A directory journal has no standbys (they follow PostgreSQL): nobody to seal a key to.
    func exchangeKeys(generation: UInt64) throws -> [PublishedExchangeKey] { [] }

    func retract(_ entry: JournalEntry) throws {
        guard let s = segment, let last, last.sequence == entry.sequence else {
            throw VaultError.journal("change set \(entry.sequence) is not the last one appended")
        }
        let size = s.size - 4 - entry.bytes.count
        guard size >= 0, ftruncate(s.fd, off_t(size)) == 0, fdatasync(s.fd) == 0 else {
            throw VaultError.journal("cannot take back change set \(entry.sequence): \(Posix.errnoText())")
        }
        segment = (s.fd, s.first, s.epoch, size)
        self.last = entry.sequence > 1 ? (entry.sequence - 1, entry.epoch) : nil
        writeHeadHint(entry.sequence - 1, entry.epoch)
    }

    func entries(after sequence: UInt64, _ body: (JournalEntry) throws -> Bool) throws {
        let names = try segmentNames()
        var expected = sequence + 1
        // Skip segments that end before `sequence`.
        var start = 0
        for (i, s) in names.enumerated() where s.first <= expected { start = i }
        for (i, s) in names.enumerated() where i >= start {
            if s.first > expected {
                throw VaultError.integrity("\(path): change sets \(expected) to \(s.first - 1) are missing")
            }
            let scanned = try scan(s.name) { entry in
                if entry.sequence < expected { return true }
                guard entry.sequence == expected else {
                    throw VaultError.integrity("\(path): change set \(expected) is missing (found \(entry.sequence) in its place)")
                }
                expected += 1
                return try body(entry)
            }
            if scanned.stopped { return }
            if scanned.end < scanned.size && i < names.count - 1 {
                throw VaultError.integrity("\(segmentsPath)/\(s.name) is damaged at byte \(scanned.end)")
            }
        }
    }

    // MARK: Snapshots

    func snapshots() throws -> [SnapshotInfo] {
        guard Posix.isDirectory(snapshotsPath) else { return [] }
        return try Files.names(in: snapshotsPath).compactMap { name -> SnapshotInfo? in
            guard name.hasSuffix(".snap"), name.count == 38,
                  let epoch = UInt64(name.prefix(16), radix: 16),
                  let seq = UInt64(name.dropFirst(17).prefix(16), radix: 16) else { return nil }
            return SnapshotInfo(epoch: epoch, sequence: seq, bytes: Files.size(snapshotsPath + "/" + name) ?? 0)
        }.sorted()
    }

    private func snapshotFile(_ info: SnapshotInfo) -> String {
        snapshotsPath + "/" + hex16(info.epoch) + "-" + hex16(info.sequence) + ".snap"
    }

    func writeSnapshot(_ info: SnapshotInfo, _ produce: (([UInt8]) throws -> Void) throws -> Void) throws -> Int {
        let file = snapshotFile(info)
        let tmp = file + ".tmp"
        unlink(tmp)
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw VaultError.journal("cannot create \(tmp): \(Posix.errnoText())") }
        var total = 0
        do {
            defer { Glibc.close(fd) }
            try produce { chunk in
                var done = 0
                while done < chunk.count {
                    let w = chunk.withUnsafeBytes { write(fd, $0.baseAddress! + done, chunk.count - done) }
                    if w < 0 {
                        if errno == EINTR { continue }
                        let e = errno
                        throw VaultError.journal(e == ENOSPC || e == EDQUOT ? "\(self.path) is full" : "write \(tmp): \(Posix.errnoText(e))")
                    }
                    done += w
                }
                total += chunk.count
            }
            guard fsync(fd) == 0 else { throw VaultError.journal("fsync \(tmp): \(Posix.errnoText())") }
        } catch {
            unlink(tmp)
            throw error
        }
        try Posix.rename(tmp, file)
        try Posix.fsyncDirectory(snapshotsPath)
        return total
    }

    func readSnapshot(_ info: SnapshotInfo, _ consume: ((Int) throws -> [UInt8]) throws -> Void) throws {
        let file = snapshotFile(info)
        let fd = open(file, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw VaultError.journal("cannot open \(file): \(Posix.errnoText())") }
        defer { Glibc.close(fd) }
        try consume { n in
            var out = [UInt8](repeating: 0, count: n)
            var got = 0
            while got < n {
                let r = out.withUnsafeMutableBytes { read(fd, $0.baseAddress! + got, n - got) }
                if r < 0 {
                    if errno == EINTR { continue }
                    throw VaultError.journal("read \(file): \(Posix.errnoText())")
                }
                if r == 0 { break }
                got += r
            }
            out.removeLast(n - got)
            return out
        }
    }

    func removeEntries(through sequence: UInt64) throws {
        let names = try segmentNames()
        // A segment goes when the next one starts at or below sequence + 1; the last one stays.
        for (i, s) in names.enumerated() where i + 1 < names.count && names[i + 1].first <= sequence + 1 {
            if segment?.first == s.first { continue }
            try Posix.retrying("unlink \(segmentsPath)/\(s.name)") { unlink(segmentsPath + "/" + s.name) }
        }
        try Posix.fsyncDirectory(segmentsPath)
    }

    func removeSnapshot(_ info: SnapshotInfo) throws {
        let file = snapshotFile(info)
        try Posix.retrying("unlink \(file)") { unlink(file) }
        try Posix.fsyncDirectory(snapshotsPath)
    }

    func close() {
        if let s = segment { Glibc.close(s.fd) }
        segment = nil
        if lockFD >= 0 { Glibc.close(lockFD) }
        lockFD = -1
    }

    deinit { close() }
}

func hex16(_ v: UInt64) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: 16 - s.count) + s
}

/// Whole-file helpers for the journal's small files and segments.
enum Files {
    static func read(_ path: String) throws -> [UInt8] {
        guard let bytes = try readIfExists(path) else { throw VaultError.journal("\(path) does not exist") }
        return bytes
    }

    static func readIfExists(_ path: String) throws -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { return nil }
            throw VaultError.journal("cannot open \(path): \(Posix.errnoText())")
        }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let r = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if r < 0 {
                if errno == EINTR { continue }
                throw VaultError.journal("read \(path): \(Posix.errnoText())")
            }
            if r == 0 { break }
            out += chunk[0..<r]
        }
        return out
    }

    static func size(_ path: String) -> Int? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return Int(st.st_size)
    }

    static func names(in directory: String) throws -> [String] {
        guard let dir = opendir(directory) else { throw VaultError.journal("cannot list \(directory): \(Posix.errnoText())") }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// Writes a small file through a temporary name, fsynced, renamed, directory fsynced.
    static func writeDurably(_ bytes: [UInt8], to path: String) throws {
        let tmp = path + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw VaultError.journal("cannot create \(tmp): \(Posix.errnoText())") }
        let w = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd) == 0
        close(fd)
        guard w == bytes.count, synced else {
            unlink(tmp)
            throw VaultError.journal("cannot write \(path): \(Posix.errnoText())")
        }
        try Posix.rename(tmp, path)
        try Posix.fsyncDirectory(parentDirectory(path))
    }
}

private func parentDirectory(_ path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "." }
    return slash == path.startIndex ? "/" : String(path[..<slash])
}
