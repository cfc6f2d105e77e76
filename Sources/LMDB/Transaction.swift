import CLMDB

/// A transaction handle (`MDB_txn*`); read-only or read-write.
///
/// Lent to the closure of ``Environment/read(_:)``, ``Environment/write(_:)`` or
/// ``withChild(_:)`` and never escapes it: the type is `~Copyable` and the closure only borrows it
/// (QuickLMDB `Transaction.swift`). The lender ends it — `commit()`/`abort()` consume the handle, so
/// it cannot be ended twice — and `deinit` aborts one that was somehow neither.
///
/// Bytes lent by `withValue(forKey:in:_:)`, `forEach` and `forEachReversed` point into the map: they die at the next write in this
/// transaction or at its end, whichever comes first. Copy (or decrypt) inside the closure.
public struct Transaction: ~Copyable {
    internal let handle: OpaquePointer
    internal let environment: OpaquePointer
    private let readOnly: Bool
    /// Where every change is recorded (a journal's change set), or nil. Unmanaged because
    /// `discard self` (in `commit`/`abort`) needs trivially destroyed stored properties; the log
    /// outlives the transaction: `Environment.write(recordingInto:_:)` holds it for the whole call.
    private let recorder: Unmanaged<ChangeLog>?

    internal init(handle: OpaquePointer, environment: OpaquePointer, isReadOnly: Bool, log: ChangeLog? = nil) {
        self.handle = handle
        self.environment = environment
        self.readOnly = isReadOnly
        self.recorder = log.map { Unmanaged.passUnretained($0) }
    }

    internal var log: ChangeLog? { recorder?.takeUnretainedValue() }

    deinit {
        mdb_txn_abort(handle)
    }

    /// `mdb_txn_commit`. LMDB frees the transaction on success and on failure alike, so `self` is
    /// discarded first: `deinit` must not abort it again.
    internal consuming func commit() throws(LMDBError) {
        let handle = self.handle
        discard self
        try check(mdb_txn_commit(handle))
    }

    /// `mdb_txn_abort`.
    internal consuming func abort() {
        let handle = self.handle
        discard self
        mdb_txn_abort(handle)
    }

    public var isReadOnly: Bool { readOnly }

    // MARK: - Reading

    /// A copy of the value stored under `key` (safe to use after the transaction ends), or nil when
    /// the key is absent.
    public func value(forKey key: [UInt8], in db: Database) throws -> [UInt8]? {
        try withValue(forKey: key, in: db) { bytes in bytes.map { [UInt8]($0) } }
    }

    /// Lends the bytes of the value stored under `key` in the map, without copying, or nil when the
    /// key is absent.
    /// - Warning: the buffer is valid only inside `body`: it dies at the next write or at the end
    ///   of the transaction.
    public func withValue<R>(forKey key: [UInt8], in db: Database, _ body: (UnsafeRawBufferPointer?) throws -> R) throws -> R {
        try key.withUnsafeBytes { key in
            try withValue(forKey: key, in: db, body)
        }
    }

    /// Lends the bytes of the value stored under `key` in the map, without copying, or nil when the
    /// key is absent.
    /// - Warning: the buffer is valid only inside `body`: it dies at the next write or at the end
    ///   of the transaction.
    public func withValue<R>(forKey key: UnsafeRawBufferPointer, in db: Database, _ body: (UnsafeRawBufferPointer?) throws -> R) throws -> R {
        let dbi = dbi(of: db)
        var keyVal = MDB_val(key)
        var value = MDB_val()
        let result = mdb_get(handle, dbi, &keyVal, &value)
        if result == MDB_NOTFOUND {
            return try body(nil)
        }
        try check(result)
        return try body(value.bytes)
    }

    /// Whether `key` is present.
    public func contains(key: [UInt8], in db: Database) throws -> Bool {
        try withValue(forKey: key, in: db) { $0 != nil }
    }

    // MARK: - Writing

    /// Stores `value` under `key` (`mdb_put`), replacing any value unless `flags` has `.noOverwrite`.
    /// - Throws: ``LMDBError/keyExists`` (`.noOverwrite` and the key exists, or `.append` out of
    ///   order), ``LMDBError/mapFull``, ``LMDBError/badValueSize`` (empty key or key over 511 bytes),
    ///   EACCES in a read-only transaction. After ``LMDBError/mapFull`` or ``LMDBError/txnFull``
    ///   the transaction can only be aborted (LMDB answers ``LMDBError/badTxn`` to anything else).
    public func put(_ value: [UInt8], forKey key: [UInt8], in db: Database, flags: PutFlags = []) throws {
        try value.withUnsafeBytes { value in
            try key.withUnsafeBytes { key in
                try put(value, forKey: key, in: db, flags: flags)
            }
        }
    }

    /// Stores `value` under `key` (`mdb_put`); see the `[UInt8]` overload for flags and errors.
    public func put(_ value: UnsafeRawBufferPointer, forKey key: UnsafeRawBufferPointer, in db: Database, flags: PutFlags = []) throws {
        let dbi = dbi(of: db)
        var keyVal = MDB_val(key)
        var valueVal = MDB_val(value)
        try check(mdb_put(handle, dbi, &keyVal, &valueVal, flags.rawValue))
        log?.recordPut(db, key: key, value: value)
    }

    /// Reserves `count` bytes for the value of `key` in the map (`MDB_RESERVE`) and lets `fill`
    /// write them in place — e.g. seal straight into the map, with no plaintext or ciphertext copy.
    ///
    /// lmdb.h: "the caller is expected to modify all of the space requested", before the next
    /// update or the end of the transaction: `fill` must write all `count` bytes.
    /// - Warning: if `fill` throws, the reserved bytes are zeroed and the error rethrown, but the key
    ///   stays in the transaction holding those zeros: let the error abort the transaction.
    public func put(reserving count: Int, forKey key: [UInt8], in db: Database, flags: PutFlags = [], fill: (UnsafeMutableRawBufferPointer) throws -> Void) throws {
        precondition(count >= 0, "negative reservation")
        let dbi = dbi(of: db)
        try key.withUnsafeBytes { key in
            var keyVal = MDB_val(key)
            var valueVal = MDB_val(mv_size: count, mv_data: nil)
            try check(mdb_put(handle, dbi, &keyVal, &valueVal, flags.rawValue | UInt32(MDB_RESERVE)))
            let reserved = UnsafeMutableRawBufferPointer(start: valueVal.mv_data, count: count)
            do {
                try fill(reserved)
            } catch {
                // The reserved space holds whatever was on the page (an old value, stale bytes).
                reserved.initializeMemory(as: UInt8.self, repeating: 0)
                throw error
            }
            log?.recordPut(db, key: key, value: UnsafeRawBufferPointer(reserved))
        }
    }

    /// Deletes `key`; returns false when it was absent (`MDB_NOTFOUND` is not an error here).
    /// - Note: LMDB does not wipe the bytes of a deleted value; see ``Environment/copy(to:compact:)``.
    @discardableResult
    public func delete(key: [UInt8], in db: Database) throws -> Bool {
        let dbi = dbi(of: db)
        return try key.withUnsafeBytes { key in
            var keyVal = MDB_val(key)
            let result = mdb_del(handle, dbi, &keyVal, nil)
            // Recorded found or not: a journal replayed on another copy deletes it there too.
            if result == MDB_NOTFOUND {
                log?.recordDelete(db, key: key)
                return false
            }
            try check(result)
            log?.recordDelete(db, key: key)
            return true
        }
    }

    /// Empties the database, keeping it open (`mdb_drop` with `del` = 0).
    public func removeAll(in db: Database) throws {
        try check(mdb_drop(handle, dbi(of: db), 0))
        log?.recordDrop(db)
    }

    // MARK: - Whole database

    /// Number of entries (`mdb_stat` `ms_entries`).
    public func count(in db: Database) throws -> Int {
        var stat = MDB_stat()
        try check(mdb_stat(handle, dbi(of: db), &stat))
        return stat.ms_entries
    }

    /// Copies of the last (greatest) key and its value, or nil when the database is empty.
    public func last(in db: Database) throws -> (key: [UInt8], value: [UInt8])? {
        let cursor = try Cursor(transaction: handle, dbi: dbi(of: db))
        guard let entry = try cursor.get(MDB_LAST) else { return nil }
        return ([UInt8](entry.key), [UInt8](entry.value))
    }

    // MARK: - Nesting

    /// Runs `body` in a nested write transaction (`mdb_txn_begin` with this transaction as parent):
    /// committed into this one when `body` returns, aborted when it throws (the error is rethrown).
    /// This transaction stays usable either way; its own commit decides whether the child's changes
    /// reach the disk.
    ///
    /// While `body` runs, this (parent) transaction is blocked: LMDB answers ``LMDBError/badTxn`` to
    /// any use of it.
    /// - Throws: EINVAL on a read-only transaction.
    ///
    /// With a change log, the child records into it too, and an aborted child's records are
    /// taken out again.
    public func withChild<R>(_ body: (borrowing Transaction) throws -> R) throws -> R {
        var child: OpaquePointer?
        try check(mdb_txn_begin(environment, handle, 0, &child))
        let mark = log?.mark
        do {
            return try Transaction(handle: child!, environment: environment, isReadOnly: false, log: log).complete(body)
        } catch {
            if let mark { log?.rollBack(to: mark) }
            throw error
        }
    }

    /// Runs `body`, then commits; aborts (and rethrows) when `body` throws. `mdb_txn_commit`
    /// frees the transaction whether it succeeds or fails, so there is no abort after it.
    internal consuming func complete<R>(_ body: (borrowing Transaction) throws -> R) throws -> R {
        let result: R
        do {
            result = try body(self)
        } catch {
            abort()
            throw error
        }
        try commit()
        return result
    }

    // MARK: - Internals

    /// The `MDB_dbi` of `db`, after checking it belongs to this transaction's environment.
    internal func dbi(of db: Database) -> MDB_dbi {
        precondition(
            db.environmentID == UInt(bitPattern: environment),
            "LMDB database '\(db.name)' belongs to another (or a closed) Environment"
        )
        return db.dbi
    }
}

extension MDB_val {
    /// A value that lends `bytes` to LMDB for the duration of one call (LMDB does not write
    /// through a key or a plain put's data).
    init(_ bytes: UnsafeRawBufferPointer) {
        self.init(mv_size: bytes.count, mv_data: UnsafeMutableRawPointer(mutating: bytes.baseAddress))
    }

    /// The bytes LMDB pointed this value at (in the map, or our own buffer).
    var bytes: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: mv_data, count: mv_size)
    }
}
