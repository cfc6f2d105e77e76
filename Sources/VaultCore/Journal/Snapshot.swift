import Foundation
import LMDB
import Sodium
#if canImport(Glibc)
import Glibc
#endif

/// A sealed snapshot: the compacted keystore and the record store as of change set `sequence`
/// (its high-water mark), streamed through `crypto_secretstream` under the snapshot key of
/// the master key generation `epoch`, so that no copy of the vault ever needs to fit in memory.
///
/// Stored layout: `"SVS1"`, epoch (u64), sequence (u64), the stream header (24 bytes), then
/// messages, each `[u32 length][box]`. The first message is the binding — vault id, epoch,
/// sequence — with AD `"shredvault snapshot"`; then `[part][bytes]` messages (part 1: the
/// keystore's `data.mdb`, part 2: the record store's; an empty chunk ends a part); the final
/// message (tagged final) is `[0]`. A cut, reordered or altered stream fails to open.
enum Snapshot {
    static let magic: [UInt8] = Array("SVS1".utf8)
    static let prefixCount = 4 + 8 + 8
    static let chunk = 1 << 20
    static let bindingAD: [UInt8] = Array("shredvault snapshot".utf8)

    /// A snapshot being taken: two copies reading under read transactions begun between two
    /// writes, into pipes; `stream` seals and stores them.
    final class Taking: @unchecked Sendable {
        // unchecked: used by one thread at a time (begun on the writer, streamed on the caller's).
        let info: SnapshotInfo
        let vaultID: [UInt8]
        private let key: Key
        private let sources: [(part: UInt8, fd: Int32, copier: Copier)]

        fileprivate init(info: SnapshotInfo, vaultID: [UInt8], key: Key, sources: [(UInt8, Int32, Copier)]) {
            self.info = info
            self.vaultID = vaultID
            self.key = key
            self.sources = sources.map { (part: $0.0, fd: $0.1, copier: $0.2) }
        }

        /// Seals both copies into the backend; `progress` gets the bytes stored so far.
        func stream(to backend: any JournalBackend, progress: ((Int) -> Void)? = nil) throws -> SnapshotInfo {
            var info = self.info
            do {
                info.bytes = try backend.writeSnapshot(info) { write in
                    var sealer = try SecretStream.Sealer(key: key.bytes)
                    var stored = 0
                    func emit(_ box: [UInt8]) throws {
                        try write(.be(UInt32(box.count)) + box)
                        stored += 4 + box.count
                        progress?(stored)
                    }
                    let prefix = Snapshot.magic + .be(info.epoch) + .be(info.sequence)
                    try write(prefix + sealer.header)
                    stored += prefix.count + sealer.header.count
                    let binding = vaultID + .be(info.epoch) + .be(info.sequence)
                    try emit(try binding.withUnsafeBytes { try sealer.seal($0, associatedData: Snapshot.bindingAD) })
                    var buffer = [UInt8](repeating: 0, count: 1 + Snapshot.chunk)
                    for s in sources {
                        buffer[0] = s.part
                        while true {
                            let n = try readFull(s.fd, into: &buffer, from: 1)
                            try emit(try buffer.withUnsafeBytes { try sealer.seal(UnsafeRawBufferPointer(rebasing: $0[0..<1 + n])) })
                            if n == 0 { break }
                        }
                        try s.copier.wait()
                    }
                    try emit(try [UInt8(0)].withUnsafeBytes { try sealer.seal($0, final: true) })
                }
                for s in sources { close(s.fd) }
            } catch {
                // Unblock a copier still writing into its pipe, then let it finish.
                for s in sources { close(s.fd) }
                for s in sources { try? s.copier.wait() }
                throw error
            }
            return info
        }
    }

    /// Begins a snapshot of `stores` as of now. Call between writes (on the writer thread, or
    /// before it starts): returns once both copies hold their read transactions.
    static func begin(_ stores: Stores, journal: JournalWriter, master: Key) throws -> Taking {
        // A copy writes into a pipe whose reader may stop: EPIPE, not a signal.
        signal(SIGPIPE, SIG_IGN)
        var sources: [(UInt8, Int32, Copier)] = []
        do {
            for (part, env) in [(UInt8(1), stores.keystore), (UInt8(2), stores.records)] {
                var fds: [Int32] = [0, 0]
                guard pipe(&fds) == 0 else { throw VaultError.io("pipe: \(Posix.errnoText())") }
                _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
                _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
                let copier = Copier(env: env, fd: fds[1], compact: true)
                sources.append((part, fds[0], copier))
            }
            // Both copies have begun their read transactions once each has written a byte (or
            // finished): LMDB begins the transaction before it writes the first page.
            for (_, fd, _) in sources {
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                while poll(&p, 1, -1) < 0 && errno == EINTR {}
            }
        } catch {
            for (_, fd, copier) in sources {
                close(fd)
                try? copier.wait()
            }
            throw error
        }
        let info = SnapshotInfo(epoch: journal.epoch, sequence: journal.sequence, bytes: 0)
        return Taking(info: info, vaultID: journal.vaultID, key: try JournalKeys.snapshotKey(master: master), sources: sources)
    }

    /// Copies one environment into a pipe on a thread of its own.
    final class Copier: @unchecked Sendable {
        // unchecked: `error` and `done` are guarded by `condition`.
        private let condition = NSCondition()
        private var done = false
        private var error: (any Error)?

        init(env: Environment, fd: Int32, compact: Bool) {
            let t = Thread { [self] in
                var failure: (any Error)?
                do { try env.copy(toDescriptor: fd, compact: compact) } catch { failure = error }
                close(fd)
                condition.lock()
                self.error = failure
                done = true
                condition.broadcast()
                condition.unlock()
            }
            t.name = "shredvault-snapshot-copy"
            t.start()
        }

        func wait() throws {
            condition.lock()
            while !done { condition.wait() }
            let e = error
            condition.unlock()
            if let e { throw VaultError.io("snapshot copy: \(e)") }
        }
    }

    // MARK: Reading

    /// Opens a stored snapshot and writes its two files (`keystore/data.mdb`,
    /// `records/data.mdb` under `directory`, 0600). Throws, naming the snapshot, when it is
    /// damaged, cut short, of another vault or under another key; nothing is kept then.
    static func restore(_ info: SnapshotInfo, from backend: any JournalBackend, vaultID: [UInt8], master: Key,
                        into directory: String, progress: ((Int) -> Void)? = nil) throws {
        let what = "snapshot \(hex16(info.epoch))-\(hex16(info.sequence))"
        let key = try JournalKeys.snapshotKey(master: master)
        var fds: [UInt8: Int32] = [:]
        defer { for fd in fds.values { close(fd) } }
        for (part, name) in [(UInt8(1), "keystore"), (UInt8(2), "records")] {
            try Posix.makeDirectory(directory + "/" + name)
            let file = directory + "/" + name + "/data.mdb"
            let fd = open(file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw VaultError.io("cannot create \(file): \(Posix.errnoText())") }
            fds[part] = fd
        }
        try backend.readSnapshot(info) { read in
            let prefix = try read(Snapshot.prefixCount + SecretStream.headerCount)
            guard prefix.count == Snapshot.prefixCount + SecretStream.headerCount, Array(prefix[0..<4]) == Snapshot.magic,
                  prefix.withUnsafeBytes({ readBE($0, at: 4) as UInt64 }) == info.epoch,
                  prefix.withUnsafeBytes({ readBE($0, at: 12) as UInt64 }) == info.sequence
            else { throw VaultError.integrity("\(what) is not a ShredVault snapshot of its name (damaged)") }
            var opener: SecretStream.Opener
            do {
                opener = try SecretStream.Opener(key: key.bytes, header: Array(prefix[Snapshot.prefixCount...]))
            } catch {
                throw VaultError.integrity("\(what) failed authentication (damaged, of another vault, or another key)")
            }
            var index = 0
            var stored = prefix.count
            var ended: Set<UInt8> = []
            while true {
                let length = try read(4)
                guard length.count == 4 else { throw VaultError.integrity("\(what) is cut short (no final message)") }
                let n = Int(length.withUnsafeBytes { readBE($0, at: 0) as UInt32 })
                guard n >= SecretStream.overhead, n <= Snapshot.chunk + 1 + SecretStream.overhead else {
                    throw VaultError.integrity("\(what): message \(index) has an impossible length (damaged)")
                }
                let box = try read(n)
                guard box.count == n else { throw VaultError.integrity("\(what) is cut short in message \(index)") }
                stored += 4 + n
                progress?(stored)
                var message = [UInt8](repeating: 0, count: n - SecretStream.overhead)
                let final: Bool
                do {
                    final = try box.withUnsafeBytes { b in
                        try message.withUnsafeMutableBytes { m in
                            try opener.open(b, associatedData: index == 0 ? Snapshot.bindingAD : [], into: m)
                        }
                    }
                } catch {
                    throw VaultError.integrity("\(what): message \(index) failed authentication (damaged, of another vault, or another key)")
                }
                defer { index += 1 }
                if index == 0 {
                    guard message == vaultID + .be(info.epoch) + .be(info.sequence), !final else {
                        throw VaultError.integrity("\(what) belongs to another vault or another place in the journal")
                    }
                    continue
                }
                if final {
                    guard message == [0], ended == [1, 2] else { throw VaultError.integrity("\(what) ends early (damaged)") }
                    break
                }
                guard let part = message.first, let fd = fds[part], !ended.contains(part) else {
                    throw VaultError.integrity("\(what): message \(index) is out of place (damaged)")
                }
                if message.count == 1 {
                    ended.insert(part)
                    continue
                }
                try message.withUnsafeBytes { try writeFull(fd, UnsafeRawBufferPointer(rebasing: $0[1...]), what: what) }
            }
            guard try read(1).isEmpty else { throw VaultError.integrity("\(what) has bytes after its final message") }
        }
        for (part, fd) in fds {
            guard fsync(fd) == 0 else { throw VaultError.io("fsync of the restored \(part == 1 ? "keystore" : "record store"): \(Posix.errnoText())") }
        }
        try Posix.fsyncDirectory(directory + "/keystore")
        try Posix.fsyncDirectory(directory + "/records")
        try Posix.fsyncDirectory(directory)
    }
}

/// Reads until `buffer` is full from `offset` or the descriptor ends; returns the bytes read.
private func readFull(_ fd: Int32, into buffer: inout [UInt8], from offset: Int) throws -> Int {
    var got = 0
    let want = buffer.count - offset
    while got < want {
        let r = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress! + offset + got, want - got) }
        if r < 0 {
            if errno == EINTR { continue }
            throw VaultError.io("snapshot copy: read: \(Posix.errnoText())")
        }
        if r == 0 { break }
        got += r
    }
    return got
}

private func writeFull(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, what: String) throws {
    var done = 0
    while done < bytes.count {
        let w = write(fd, bytes.baseAddress! + done, bytes.count - done)
        if w < 0 {
            if errno == EINTR { continue }
            let e = errno
            throw e == ENOSPC || e == EDQUOT ? VaultError.storageFull : VaultError.io("writing \(what) out: \(Posix.errnoText(e))")
        }
        done += w
    }
}
