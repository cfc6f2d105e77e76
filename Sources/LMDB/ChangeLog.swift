import CLMDB

/// What write transactions changed, in order: every put (key and value exactly as stored),
/// delete and drop, so the same changes can be applied to another copy of the environment
/// (a journal's change set, replayed by a restore or a standby).
///
/// A transaction records into the log it is given (``Environment/write(recordingInto:_:)``);
/// a child transaction records into the same log, and what an aborted child recorded is
/// taken out again. Databases are recorded by a one-byte code chosen by the owner of the
/// layout, so the records do not depend on `MDB_dbi` numbers, which differ between copies.
///
/// Encoding, one record after another: `op` (1 put, 2 delete, 3 drop), database code, key
/// length (u16, big-endian) and key (absent for a drop), then for a put the value length
/// (u32, big-endian) and the value.
///
/// Not thread-safe: one writer thread owns it.
public final class ChangeLog {
    public enum Operation: UInt8, Sendable {
        case put = 1, delete = 2, drop = 3
    }

    /// The records so far.
    public private(set) var bytes: [UInt8] = []
    /// How many records.
    public private(set) var count = 0
    /// Database code by `MDB_dbi` (small integers); nil for databases not recorded.
    private var codes: [UInt8?] = []
    private let environmentID: UInt

    /// A log for transactions of the environment `databases` belong to; each database is recorded
    /// by its code. A change to a database not listed traps (the layout forgot it).
    public init(codes: [(Database, UInt8)], reservingCapacity capacity: Int = 1 << 16) {
        precondition(!codes.isEmpty, "a change log needs at least one database")
        environmentID = codes[0].0.environmentID
        for (db, code) in codes {
            precondition(db.environmentID == environmentID, "a change log records databases of one environment")
            let i = Int(db.dbi)
            if self.codes.count <= i { self.codes += [UInt8?](repeating: nil, count: i + 1 - self.codes.count) }
            self.codes[i] = code
        }
        bytes.reserveCapacity(capacity)
    }

    /// Empties the log, keeping its storage.
    public func removeAll() {
        bytes.removeAll(keepingCapacity: true)
        count = 0
    }

    struct Mark {
        let bytes: Int
        let count: Int
    }

    var mark: Mark { Mark(bytes: bytes.count, count: count) }

    func rollBack(to mark: Mark) {
        bytes.removeLast(bytes.count - mark.bytes)
        count = mark.count
    }

    private func code(of db: Database) -> UInt8 {
        let i = Int(db.dbi)
        guard db.environmentID == environmentID, i < codes.count, let code = codes[i] else {
            preconditionFailure("LMDB database '\(db.name)' has no change-log code")
        }
        return code
    }

    private func appendBE<T: FixedWidthInteger>(_ v: T) {
        withUnsafeBytes(of: v.bigEndian) { bytes.append(contentsOf: $0) }
    }

    func recordPut(_ db: Database, key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
        bytes.append(Operation.put.rawValue)
        bytes.append(code(of: db))
        appendBE(UInt16(key.count))
        bytes.append(contentsOf: key)
        appendBE(UInt32(value.count))
        bytes.append(contentsOf: value)
        count += 1
    }

    func recordDelete(_ db: Database, key: UnsafeRawBufferPointer) {
        bytes.append(Operation.delete.rawValue)
        bytes.append(code(of: db))
        appendBE(UInt16(key.count))
        bytes.append(contentsOf: key)
        count += 1
    }

    func recordDrop(_ db: Database) {
        bytes.append(Operation.drop.rawValue)
        bytes.append(code(of: db))
        count += 1
    }

    /// A malformed change-log encoding (damage, or bytes that are not one).
    public struct FormatError: Error, Equatable, Sendable, CustomStringConvertible {
        public let reason: String
        init(offset: Int, reason: String) { self.reason = "\(reason) at byte \(offset)" }
        init(record: Int, reason: String) { self.reason = "\(reason) in record \(record)" }
        public var description: String { "change log: \(reason)" }
    }

    /// Calls `body` with each record of `encoded`, in order. Key and value are lent for the call.
    /// - Throws: ``FormatError`` for a malformed encoding, before `body` sees the bad record;
    ///   whatever `body` throws.
    public static func forEach(
        in encoded: UnsafeRawBufferPointer,
        _ body: (_ op: Operation, _ code: UInt8, _ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) throws -> Void
    ) throws {
        var i = 0
        func take(_ n: Int, _ what: String) throws(FormatError) -> UnsafeRawBufferPointer {
            guard n >= 0, encoded.count - i >= n else { throw FormatError(offset: i, reason: "\(what) runs past the end") }
            defer { i += n }
            return UnsafeRawBufferPointer(rebasing: encoded[i..<i + n])
        }
        func be(_ n: Int, _ what: String) throws(FormatError) -> Int {
            try take(n, what).reduce(0) { $0 << 8 | Int($1) }
        }
        let empty = UnsafeRawBufferPointer(start: nil, count: 0)
        while i < encoded.count {
            let start = i
            guard let op = Operation(rawValue: encoded[i]) else {
                throw FormatError(offset: i, reason: "unknown operation \(encoded[i])")
            }
            i += 1
            let code = try take(1, "database code")[0]
            switch op {
            case .drop:
                try body(op, code, empty, empty)
            case .delete:
                let key = try take(try be(2, "key length"), "key")
                guard key.count > 0 else { throw FormatError(offset: start, reason: "empty key") }
                try body(op, code, key, empty)
            case .put:
                let key = try take(try be(2, "key length"), "key")
                guard key.count > 0 else { throw FormatError(offset: start, reason: "empty key") }
                let value = try take(try be(4, "value length"), "value")
                try body(op, code, key, value)
            }
        }
    }
}

extension Transaction {
    /// Applies the records of a change log (``ChangeLog/forEach(in:_:)``) to this write
    /// transaction: puts replace, deletes of absent keys are no-ops, drops empty a database.
    /// Applying the same log twice leaves the same state as applying it once.
    /// - Throws: ``ChangeLog/FormatError`` (also for a code `databases` does not name), LMDB
    ///   errors; the caller aborts the transaction.
    public func apply(changes encoded: UnsafeRawBufferPointer, databases: [UInt8: Database]) throws {
        var record = 0
        try ChangeLog.forEach(in: encoded) { op, code, key, value in
            guard let db = databases[code] else {
                throw ChangeLog.FormatError(record: record, reason: "unknown database code \(code)")
            }
            switch op {
            case .put: try put(value, forKey: key, in: db)
            case .delete:
                var keyVal = MDB_val(key)
                let result = mdb_del(handle, dbi(of: db), &keyVal, nil)
                if result != MDB_NOTFOUND { try check(result) }
                log?.recordDelete(db, key: key)
            case .drop: try removeAll(in: db)
            }
            record += 1
        }
    }
}
