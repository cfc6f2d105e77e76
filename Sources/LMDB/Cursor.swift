import CLMDB

/// An `MDB_cursor*`, closed when it goes out of scope. Never public: iteration is lent through
/// ``Transaction/forEach(in:from:prefix:_:)``, so a cursor cannot outlive its transaction.
struct Cursor: ~Copyable {
    private let handle: OpaquePointer

    init(transaction: OpaquePointer, dbi: MDB_dbi) throws(LMDBError) {
        var cursor: OpaquePointer?
        try check(mdb_cursor_open(transaction, dbi, &cursor))
        handle = cursor!
    }

    deinit {
        mdb_cursor_close(handle)
    }

    /// `mdb_cursor_get(op)`; nil on `MDB_NOTFOUND`. `key` is read by positioning operations
    /// (`MDB_SET_RANGE`) during the call only.
    /// - Warning: the returned buffers point into the map; valid until the next write or the end
    ///   of the transaction.
    func get(_ op: MDB_cursor_op, key: UnsafeRawBufferPointer? = nil) throws(LMDBError) -> (key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer)? {
        var keyVal = key.map { MDB_val($0) } ?? MDB_val()
        var value = MDB_val()
        let result = mdb_cursor_get(handle, &keyVal, &value, op)
        if result == MDB_NOTFOUND { return nil }
        try check(result)
        return (keyVal.bytes, value.bytes)
    }

    /// `MDB_SET_RANGE` with `key` (the first entry whose key is >= `key`).
    func seek(_ key: [UInt8]) throws(LMDBError) -> (key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer)? {
        var result: Result<(key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer)?, LMDBError> = .success(nil)
        key.withUnsafeBytes { key in
            result = Result { () throws(LMDBError) in try get(MDB_SET_RANGE, key: key) }
        }
        return try result.get()
    }
}

extension Transaction {
    /// Iterates entries in ascending key order, starting at the first key >= `start` (the first key
    /// when nil), stopping at the first key that does not begin with `prefix` (when given), or when
    /// `body` answers `.stop`.
    ///
    /// With a `prefix`, iteration starts at the first key >= max(`start`, `prefix`): no key below
    /// `prefix` begins with it, so `forEach(in: db, prefix: p)` visits exactly the keys beginning
    /// with `p`.
    /// - Warning: keys and values are lent only for the call of `body` (they point into the map).
    public func forEach(
        in db: Database, from start: [UInt8]? = nil, prefix: [UInt8]? = nil,
        _ body: (_ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) throws -> IterationControl
    ) throws {
        let cursor = try Cursor(transaction: handle, dbi: dbi(of: db))
        var lowerBound = start ?? []
        if let prefix, lowerBound.lexicographicallyPrecedes(prefix) {
            lowerBound = prefix
        }
        // LMDB rejects an empty key (MDB_BAD_VALSIZE); every key is >= the empty one anyway.
        var entry = lowerBound.isEmpty ? try cursor.get(MDB_FIRST) : try cursor.seek(lowerBound)
        while let (key, value) = entry {
            if let prefix, !key.starts(with: prefix) { return }
            if try body(key, value) == .stop { return }
            entry = try cursor.get(MDB_NEXT)
        }
    }

    /// Iterates entries in descending key order, starting at the last key <= `start` (the last key
    /// when nil), stopping at the first key that does not begin with `prefix` (when given), or when
    /// `body` answers `.stop`. `forEachReversed(in: db, prefix: p)` visits the keys beginning with
    /// `p`, the greatest first: "the last entry with a prefix".
    ///
    /// With a `prefix`, iteration starts at the last key <= `start` that is also below every key
    /// greater than all those beginning with `prefix`, so a `start` past the prefix's range starts
    /// at its last key instead of stopping at once.
    /// - Warning: keys and values are lent only for the call of `body` (they point into the map).
    public func forEachReversed(
        in db: Database, from start: [UInt8]? = nil, prefix: [UInt8]? = nil,
        _ body: (_ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) throws -> IterationControl
    ) throws {
        let cursor = try Cursor(transaction: handle, dbi: dbi(of: db))

        // Upper bound of the first key to visit: inclusive (`start`) or exclusive (the smallest key
        // greater than every key beginning with `prefix`), whichever is tighter.
        var bound: (key: [UInt8], inclusive: Bool)? = start.map { ($0, true) }
        if let prefix, let successor = Self.successor(ofPrefix: prefix) {
            if bound == nil || !bound!.key.lexicographicallyPrecedes(successor) {
                bound = (successor, false)
            }
        }

        var entry: (key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer)?
        if let bound {
            if bound.key.isEmpty { return }  // only start can be empty, and no key is <= []
            if let found = try cursor.seek(bound.key) {
                // found.key >= bound.key: keep it only if it is the inclusive bound itself.
                let isBound = bound.inclusive && found.key.elementsEqual(bound.key)
                entry = isBound ? found : try cursor.get(MDB_PREV)
            } else {
                entry = try cursor.get(MDB_LAST)  // every key is below the bound
            }
        } else {
            entry = try cursor.get(MDB_LAST)
        }

        while let (key, value) = entry {
            if let prefix, !key.starts(with: prefix) { return }
            if try body(key, value) == .stop { return }
            entry = try cursor.get(MDB_PREV)
        }
    }

    /// The smallest key greater than every key beginning with `prefix`: drop trailing 0xFF bytes,
    /// then add one to the last byte. nil when there is none (empty or all-0xFF prefix).
    static func successor(ofPrefix prefix: [UInt8]) -> [UInt8]? {
        var key = prefix
        while let last = key.last {
            if last == 0xFF {
                key.removeLast()
            } else {
                key[key.count - 1] = last + 1
                return key
            }
        }
        return nil
    }
}

extension Transaction {
    /// Pages on LMDB's free list, counted as `mdb_stat -f` does: each value of the free
    /// database (dbi 0) is a list of page numbers whose first word is its length. They are
    /// pages inside the data file that later write transactions reuse once no reader can see
    /// them, so this slightly overstates what the next write can take while readers are open.
    public func freeListPages() throws -> Int {
        let cursor = try Cursor(transaction: handle, dbi: 0)  // FREE_DBI
        var pages = 0
        var entry = try cursor.get(MDB_FIRST)
        while let e = entry {
            guard e.value.count >= MemoryLayout<UInt>.size else { throw LMDBError(code: MDB_CORRUPTED) }
            pages += Int(e.value.loadUnaligned(as: UInt.self))
            entry = try cursor.get(MDB_NEXT)
        }
        return pages
    }
}
