import CLMDB
import Locking

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Real paths of the environments open in this process.
///
/// lmdb.h: "Do not have open an LMDB database twice in the same process at the same time. Not even
/// from a plain open() call - close()ing it breaks flock() advisory locking." (heed's `envs/mod.rs`
/// keeps the same one-per-path registry.)
private let openPaths = Locked<Set<String>>([])

/// Settings applied before `mdb_env_open`.
public struct EnvironmentOptions: Sendable {
    /// Map size in bytes (`mdb_env_set_mapsize`): the most the data file may grow to.
    public var mapSize: Int = 1 << 30
    /// Most named databases (`mdb_env_set_maxdbs`).
    public var maxDatabases: UInt32 = 32
    /// Most concurrent read transactions (`mdb_env_set_maxreaders`).
    public var maxReaders: UInt32 = 126
    /// Permissions of `data.mdb` and `lock.mdb` when created (and of the `data.mdb` written by
    /// ``Environment/copy(to:compact:)``).
    public var fileMode: UInt32 = 0o600
    /// The kernel's read-ahead on the map. false sets `MDB_NORDAHEAD` (`madvise(MADV_RANDOM)`):
    /// lmdb.h, "Turning it off may help random read performance when the DB is larger than RAM
    /// and system RAM is full." Each page fault then reads one page instead of a window around it.
    public var readAhead: Bool = true

    public init(mapSize: Int = 1 << 30, maxDatabases: UInt32 = 32, maxReaders: UInt32 = 126, readAhead: Bool = true) {
        self.mapSize = mapSize
        self.maxDatabases = maxDatabases
        self.maxReaders = maxReaders
        self.readAhead = readAhead
    }
}

/// An LMDB environment (a directory holding `data.mdb` and `lock.mdb`).
///
/// Opened with `MDB_NOTLS` (a read transaction is not tied to a thread, so it may run on any thread
/// of the cooperative pool — heed `txn.rs`) and otherwise default, durable flags: a commit
/// fdatasyncs the data, then writes the meta page through `O_DSYNC`.
///
/// One per path per process: a process-wide registry keyed by the real path makes a second open
/// throw ``LMDBError/alreadyOpen`` until the first is closed.
///
/// Transactions are closure-scoped (GRDB `inTransaction`, QuickLMDB's `~Copyable` handle): the
/// ``Transaction`` cannot escape the closure, a throw aborts, and the environment counts the
/// transactions in flight so it is never closed under one.
///
/// `@unchecked Sendable`: `MDB_env` is thread-safe for everything used here; the open/closed state,
/// the in-flight count and the writer thread are guarded by `state` (a `Locked`), and `handle` is
/// only ever freed once that count is zero.
public final class Environment: @unchecked Sendable {
    /// The path as given to `init`.
    public let path: String
    /// `realpath(path)`: the registry key.
    private let realPath: String
    private let handle: OpaquePointer
    private let databases: [String: Database]
    private let fileMode: UInt32
    private let state = Locked(State())

    private struct State {
        /// Transactions and environment operations in flight.
        var users = 0
        /// `close()` was called: start no new work; the last user closes the handle.
        var closeRequested = false
        /// `mdb_env_close` has run (or is about to, on the thread that set this).
        var closed = false
        /// The thread holding the write transaction: a second `write` from it would deadlock on
        /// LMDB's writer mutex.
        var writer: pthread_t?
    }

    /// Opens (creating if needed) the environment at `path`, and the named `databases` in it.
    ///
    /// Creates the directory (mode 0700, with any missing parents) if it is missing, then opens the
    /// databases with `MDB_CREATE` in one write transaction.
    /// - Throws: ``LMDBError/alreadyOpen`` when this process already has it open; any LMDB or errno
    ///   code from creating the directory or opening the files.
    public init(path: String, options: EnvironmentOptions = .init(), databases names: [String]) throws {
        try Self.makeDirectory(path)
        let realPath = try Self.realPath(path)
        try openPaths.withLock { (paths: inout Set<String>) throws(LMDBError) in
            guard paths.insert(realPath).inserted else { throw .alreadyOpen }
        }

        var env: OpaquePointer?
        do {
            try check(mdb_env_create(&env))
            guard let env else { throw LMDBError(code: ENOMEM) }
            guard options.mapSize >= 0 else { throw LMDBError(code: EINVAL) }  // size_t in C
            try check(mdb_env_set_mapsize(env, options.mapSize))
            try check(mdb_env_set_maxdbs(env, options.maxDatabases))
            try check(mdb_env_set_maxreaders(env, options.maxReaders))
            // lmdb.h, mdb_env_open: "If this function fails, mdb_env_close() must be called to
            // discard the MDB_env handle." The catch below does it.
            let flags = UInt32(MDB_NOTLS) | (options.readAhead ? 0 : UInt32(MDB_NORDAHEAD))
            try check(mdb_env_open(env, realPath, flags, mdb_mode_t(options.fileMode)))
            // Free the reader slots of dead processes, which would pin old pages and grow the file.
            var staleReaders: Int32 = 0
            try check(mdb_reader_check(env, &staleReaders))
            self.databases = try Self.openDatabases(names, in: env)
        } catch {
            if let env { mdb_env_close(env) }
            _ = openPaths.withLock { $0.remove(realPath) }
            throw error
        }

        self.path = path
        self.realPath = realPath
        self.handle = env!
        self.fileMode = options.fileMode
    }

    deinit {
        close()
    }

    /// The handle of a database listed at `init`.
    /// - Precondition: `name` was in the `databases` passed to `init`.
    public func database(_ name: String) -> Database {
        guard let database = databases[name] else {
            preconditionFailure("LMDB database '\(name)' was not listed when the environment was opened")
        }
        return database
    }

    /// Closes the environment (`mdb_env_close`) and releases the path registry entry; idempotent.
    /// `deinit` calls it.
    ///
    /// New transactions and operations throw ``LMDBError/closed`` from here on. If some are still in
    /// flight (e.g. `close()` called from inside a `read` closure, or from another thread), the handle
    /// is closed — and the path released — when the last of them ends, never under them.
    /// - Warning: no transaction may be open; one that is delays the actual close until it ends.
    public func close() {
        let closeNow = state.withLock { state -> Bool in
            guard !state.closeRequested else { return false }
            state.closeRequested = true
            guard state.users == 0 else { return false }
            state.closed = true
            return true
        }
        if closeNow { closeHandle() }
    }

    /// Runs `body` in a read-only transaction (aborted at the end).
    ///
    /// The transaction sees the last snapshot committed when it began, and nothing committed later.
    public func read<R>(_ body: (borrowing Transaction) throws -> R) throws -> R {
        try acquire()
        defer { release() }
        var txn: OpaquePointer?
        try check(mdb_txn_begin(handle, nil, UInt32(MDB_RDONLY), &txn))
        let transaction = Transaction(handle: txn!, environment: handle, isReadOnly: true)
        let result: R
        do {
            result = try body(transaction)
        } catch {
            transaction.abort()
            throw error
        }
        transaction.abort()
        return result
    }

    /// Runs `body` in a write transaction: committed when `body` returns, aborted when it throws
    /// (the error is rethrown).
    ///
    /// A commit failure (e.g. ``LMDBError/mapFull``, EIO) throws the ``LMDBError``; LMDB has then
    /// already freed the transaction, nothing of it is stored. Blocks while another write
    /// transaction (of this or another process) is open: call it from the environment's own writer
    /// thread, not from the cooperative pool.
    /// - Precondition: not called from inside another `write` on the same thread (LMDB's writer
    ///   mutex would deadlock); use ``Transaction/withChild(_:)`` for a nested transaction.
    public func write<R>(_ body: (borrowing Transaction) throws -> R) throws -> R {
        try write(recordingInto: nil, body)
    }

    /// ``write(_:)``, recording every put, delete and drop of the transaction (and of its committed
    /// children) into `log`, in order. The log is left as it is when the transaction fails: the
    /// caller discards it.
    public func write<R>(recordingInto log: ChangeLog?, _ body: (borrowing Transaction) throws -> R) throws -> R {
        try acquire()
        defer { release() }
        let me = pthread_self()
        let nested = state.withLock { state -> Bool in
            if let writer = state.writer, pthread_equal(writer, me) != 0 { return true }
            return false
        }
        precondition(!nested, "Environment.write called inside a write transaction on the same thread")

        var txn: OpaquePointer?
        try check(mdb_txn_begin(handle, nil, 0, &txn))
        state.withLock { $0.writer = me }
        defer { state.withLock { $0.writer = nil } }

        return try withExtendedLifetime(log) {
            try Transaction(handle: txn!, environment: handle, isReadOnly: false, log: log).complete(body)
        }
    }

    /// Writes a consistent copy of the environment to `data.mdb` in the directory at `path`
    /// (`mdb_env_copyfd2`, with `MDB_CP_COMPACT` when `compact` is true: free pages are left out and
    /// pages renumbered).
    ///
    /// The directory is created (0700) if missing and must not already hold a `data.mdb`. This is
    /// `mdb_env_copy2` done by hand so that the new file is created with ``EnvironmentOptions/fileMode``
    /// (`mdb_env_copy2` uses 0666 & umask) and is fsynced with its directory before returning
    /// (`mdb_env_copy2` does not sync), so a copy that is then swapped in survives a crash.
    /// A failed copy removes the partial file.
    ///
    /// Erasure: LMDB never wipes a deleted value's bytes — they stay in free pages and in the unused
    /// gap of live pages, and a plain copy carries them along. A compacted copy leaves out free
    /// pages and copies only the used part of each live page (`mdb_page_copy` in `mdb_env_cwalk`),
    /// so deleted values do not reach it (`LMDBTests` checks this).
    public func copy(to path: String, compact: Bool) throws {
        try acquire()
        defer { release() }
        try Self.makeDirectory(path)
        let file = path.hasSuffix("/") ? path + "data.mdb" : path + "/data.mdb"
        let fd = try retryingEINTR { open(file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode_t(fileMode)) }
        do {
            try check(mdb_env_copyfd2(handle, fd, compact ? UInt32(MDB_CP_COMPACT) : 0))
            _ = try retryingEINTR { fsync(fd) }
        } catch {
            _ = closeDescriptor(fd)
            unlink(file)
            throw error
        }
        if closeDescriptor(fd) != 0 {
            let code = errno
            unlink(file)
            throw LMDBError(code: code)
        }
        try Self.syncDirectory(path)
        try Self.syncDirectory(Self.parent(of: path))
    }

    /// Writes a consistent copy of the environment (compacted when `compact` is true) to an
    /// open descriptor — a pipe, for a copy streamed elsewhere. The copy reads under one read
    /// transaction, begun before the first byte is written: it is the state of the last commit
    /// before the call, whatever is written meanwhile. Blocks until the copy is written or the
    /// descriptor fails (a closed pipe: EPIPE). The descriptor stays open.
    public func copy(toDescriptor fd: Int32, compact: Bool) throws {
        try acquire()
        defer { release() }
        try check(mdb_env_copyfd2(handle, fd, compact ? UInt32(MDB_CP_COMPACT) : 0))
    }

    /// Flushes the data to disk (`mdb_env_sync` with force). With default flags every commit is
    /// already durable; this matters only after a commit failed half-way.
    public func sync() throws {
        try acquire()
        defer { release() }
        try check(mdb_env_sync(handle, 1))
    }

    /// Sizes and counters of the environment (`mdb_env_info`, plus the page size from `mdb_env_stat`).
    public struct Info: Sendable {
        /// Current map size in bytes.
        public let mapSize: Int
        /// Number of the last page used in the data file.
        public let lastPageNumber: Int
        /// Database page size in bytes.
        public let pageSize: Int
        /// ID of the last committed transaction.
        public let lastTransactionID: Int
        /// Reader slots used so far: a high-water mark of the reader table (`me_numreaders`), not
        /// the transactions open now (with `MDB_NOTLS` a read transaction frees its slot at its end).
        public let numReaders: Int
    }

    /// Whether the kernel reads ahead on the map: false when opened with `readAhead: false`
    /// (`mdb_env_get_flags` shows `MDB_NORDAHEAD`).
    public func readsAhead() throws -> Bool {
        try acquire()
        defer { release() }
        var flags: UInt32 = 0
        try check(mdb_env_get_flags(handle, &flags))
        return flags & UInt32(MDB_NORDAHEAD) == 0
    }

    public func info() throws -> Info {
        try acquire()
        defer { release() }
        var info = MDB_envinfo()
        try check(mdb_env_info(handle, &info))
        var stat = MDB_stat()
        try check(mdb_env_stat(handle, &stat))
        return Info(
            mapSize: info.me_mapsize,
            lastPageNumber: info.me_last_pgno,
            pageSize: Int(stat.ms_psize),
            lastTransactionID: info.me_last_txnid,
            numReaders: Int(info.me_numreaders)
        )
    }

    /// Sets the map size (`mdb_env_set_mapsize`), e.g. to grow it after ``LMDBError/mapFull``.
    ///
    /// lmdb.h allows it only "if no transactions are active in this process"; the environment
    /// checks that and holds its lock so none starts meanwhile. A size below the data in use is
    /// raised by LMDB to the current size; 0 adopts the size set by another process.
    /// - Throws: EINVAL (`LMDBError(code: EINVAL)`) when a transaction or operation of this
    ///   environment is in flight, or `bytes` is negative; ``LMDBError/closed`` after ``close()``.
    public func setMapSize(_ bytes: Int) throws {
        try state.withLock { (state: inout State) throws(LMDBError) in
            guard !state.closeRequested else { throw .closed }
            guard state.users == 0, bytes >= 0 else { throw LMDBError(code: EINVAL) }
            try check(mdb_env_set_mapsize(handle, bytes))
        }
    }

    // MARK: - Lifetime

    /// Registers one user (transaction or operation) of `handle`; throws once `close()` was called.
    private func acquire() throws(LMDBError) {
        try state.withLock { (state: inout State) throws(LMDBError) in
            guard !state.closeRequested else { throw .closed }
            state.users += 1
        }
    }

    /// Ends one use; the last one after a `close()` closes the handle.
    private func release() {
        let closeNow = state.withLock { state -> Bool in
            state.users -= 1
            guard state.users == 0, state.closeRequested, !state.closed else { return false }
            state.closed = true
            return true
        }
        if closeNow { closeHandle() }
    }

    /// Runs once, on the thread that set `closed`.
    private func closeHandle() {
        mdb_env_close(handle)
        _ = openPaths.withLock { $0.remove(realPath) }
    }

    // MARK: - Opening

    /// Opens (creating) every named database in one write transaction, so the handles are shared
    /// by all later transactions (lmdb.h: a handle opened in a write transaction is private to it
    /// until it commits).
    private static func openDatabases(_ names: [String], in env: OpaquePointer) throws(LMDBError) -> [String: Database] {
        var txn: OpaquePointer?
        try check(mdb_txn_begin(env, nil, 0, &txn))
        var databases: [String: Database] = [:]
        do {
            for name in names where databases[name] == nil {
                var dbi: MDB_dbi = 0
                try check(mdb_dbi_open(txn, name, UInt32(MDB_CREATE), &dbi))
                databases[name] = Database(dbi: dbi, environmentID: UInt(bitPattern: env), name: name)
            }
        } catch {
            mdb_txn_abort(txn)
            throw error
        }
        try check(mdb_txn_commit(txn))
        return databases
    }

    /// `mkdir -p` with mode 0700 for every directory it creates.
    static func makeDirectory(_ path: String) throws(LMDBError) {
        if mkdir(path, 0o700) == 0 { return }
        let code = errno
        switch code {
        case EEXIST:
            return  // a non-directory there makes mdb_env_open fail with ENOTDIR
        case ENOENT:
            let parent = parent(of: path)
            guard parent != path else { throw LMDBError(code: code) }
            try makeDirectory(parent)
            if mkdir(path, 0o700) == 0 || errno == EEXIST { return }
            throw LMDBError(code: errno)
        default:
            throw LMDBError(code: code)
        }
    }

    private static func realPath(_ path: String) throws(LMDBError) -> String {
        guard let resolved = realpath(path, nil) else { throw LMDBError(code: errno) }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    /// The parent directory of `path` ("." for a bare name, "/" for a top-level one).
    static func parent(of path: String) -> String {
        var trimmed = Substring(path)
        while trimmed.count > 1, trimmed.hasSuffix("/") { trimmed = trimmed.dropLast() }
        guard let slash = trimmed.lastIndex(of: "/") else { return "." }
        if slash == trimmed.startIndex { return "/" }
        return String(trimmed[..<slash])
    }

    private static func syncDirectory(_ path: String) throws(LMDBError) {
        let fd = try retryingEINTR { open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        defer { _ = closeDescriptor(fd) }
        _ = try retryingEINTR { fsync(fd) }
    }
}

/// Runs a syscall, retrying on EINTR (NIO `System.swift`); -1 becomes the errno as an ``LMDBError``.
private func retryingEINTR(_ call: () -> Int32) throws(LMDBError) -> Int32 {
    while true {
        let result = call()
        if result != -1 { return result }
        let code = errno
        if code != EINTR { throw LMDBError(code: code) }
    }
}

/// `close(2)`; named apart from ``Environment/close()``, which shadows it inside the class.
private func closeDescriptor(_ fd: Int32) -> Int32 {
    close(fd)
}
