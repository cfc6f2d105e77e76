import CLMDB

/// A named database inside an ``Environment`` (an `MDB_dbi`), obtained from ``Environment/database(_:)``.
///
/// A handle belongs to the environment that opened it; using it with a transaction of another
/// environment (or of a reopened one) is a programming error and traps, because the same `MDB_dbi`
/// number would silently name another database there.
public struct Database: Sendable, Hashable {
    /// The `MDB_dbi` handle, valid for the lifetime of the environment.
    internal let dbi: UInt32
    /// The owning `MDB_env*` as an address, to catch a handle used with the wrong environment.
    internal let environmentID: UInt
    public let name: String

    internal init(dbi: MDB_dbi, environmentID: UInt, name: String) {
        self.dbi = dbi
        self.environmentID = environmentID
        self.name = name
    }
}

/// What the body of `Transaction.forEach` / `forEachReversed` answers after each entry.
public enum IterationControl: Sendable {
    case `continue`
    case stop
}

/// Flags for the `Transaction.put` family (`mdb_put`).
public struct PutFlags: OptionSet, Sendable {
    public let rawValue: UInt32

    public init(rawValue: UInt32) {
        self.rawValue = rawValue
    }

    /// `MDB_NOOVERWRITE`: fail with ``LMDBError/keyExists`` when the key is already present.
    public static let noOverwrite = PutFlags(rawValue: UInt32(MDB_NOOVERWRITE))
    /// `MDB_APPEND`: the key sorts after every key in the database (fast bulk load);
    /// a key out of order fails with ``LMDBError/keyExists``.
    public static let append = PutFlags(rawValue: UInt32(MDB_APPEND))
}
