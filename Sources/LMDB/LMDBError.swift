import CLMDB

/// An LMDB result code: every `MDB_*` code (and the errno values LMDB passes through) in one type.
///
/// Named constants let callers compare and `catch` by value, GRDB-style:
/// `catch let error as LMDBError where error == .notFound`. Two codes are ours and never come from
/// LMDB: ``alreadyOpen`` and ``closed``; they sit outside both LMDB's range (-30799...-30780) and
/// errno's (positive).
public struct LMDBError: Error, Equatable, Hashable, Sendable, CustomStringConvertible {
    /// The raw result: an `MDB_*` code (negative), an errno value (positive), or one of ours (-1, -2).
    public let code: Int32

    public init(code: Int32) {
        self.code = code
    }

    /// `MDB_KEYEXIST`: key/data pair already exists (`PutFlags.noOverwrite`, `.append` out of order).
    public static let keyExists = LMDBError(code: MDB_KEYEXIST)
    /// `MDB_NOTFOUND`: no matching key/data pair found.
    public static let notFound = LMDBError(code: MDB_NOTFOUND)
    /// `MDB_PAGE_NOTFOUND`: requested page not found — usually a corrupted file.
    public static let pageNotFound = LMDBError(code: MDB_PAGE_NOTFOUND)
    /// `MDB_CORRUPTED`: located page was wrong type.
    public static let corrupted = LMDBError(code: MDB_CORRUPTED)
    /// `MDB_PANIC`: update of meta page failed or environment had a fatal error.
    public static let panic = LMDBError(code: MDB_PANIC)
    /// `MDB_VERSION_MISMATCH`: the file was written by an incompatible LMDB version.
    public static let versionMismatch = LMDBError(code: MDB_VERSION_MISMATCH)
    /// `MDB_INVALID`: the file is not a valid LMDB file.
    public static let invalid = LMDBError(code: MDB_INVALID)
    /// `MDB_MAP_FULL`: environment map size reached; see ``Environment/setMapSize(_:)``.
    public static let mapFull = LMDBError(code: MDB_MAP_FULL)
    /// `MDB_DBS_FULL`: more named databases than ``EnvironmentOptions/maxDatabases``.
    public static let dbsFull = LMDBError(code: MDB_DBS_FULL)
    /// `MDB_READERS_FULL`: every reader slot is taken (``EnvironmentOptions/maxReaders``).
    public static let readersFull = LMDBError(code: MDB_READERS_FULL)
    /// `MDB_TLS_FULL`: too many TLS keys in use (not expected with `MDB_NOTLS`).
    public static let tlsFull = LMDBError(code: MDB_TLS_FULL)
    /// `MDB_TXN_FULL`: the transaction has too many dirty pages.
    public static let txnFull = LMDBError(code: MDB_TXN_FULL)
    /// `MDB_CURSOR_FULL`: cursor stack too deep (internal error).
    public static let cursorFull = LMDBError(code: MDB_CURSOR_FULL)
    /// `MDB_PAGE_FULL`: page has not enough space (internal error).
    public static let pageFull = LMDBError(code: MDB_PAGE_FULL)
    /// `MDB_MAP_RESIZED`: another process grew the map beyond this one's map size.
    public static let mapResized = LMDBError(code: MDB_MAP_RESIZED)
    /// `MDB_INCOMPATIBLE`: operation and database incompatible, or database flags changed.
    public static let incompatible = LMDBError(code: MDB_INCOMPATIBLE)
    /// `MDB_BAD_RSLOT`: invalid reuse of a reader lock table slot.
    public static let badReaderSlot = LMDBError(code: MDB_BAD_RSLOT)
    /// `MDB_BAD_TXN`: the transaction must abort, has a child, or is invalid
    /// (e.g. an earlier operation in it failed with ``mapFull``).
    public static let badTxn = LMDBError(code: MDB_BAD_TXN)
    /// `MDB_BAD_VALSIZE`: unsupported size of key/data (e.g. an empty key, or a key over 511 bytes).
    public static let badValueSize = LMDBError(code: MDB_BAD_VALSIZE)
    /// `MDB_BAD_DBI`: the database handle was changed unexpectedly.
    public static let badDBI = LMDBError(code: MDB_BAD_DBI)

    /// Not an LMDB code: this process already has an environment open at that path (one per path per
    /// process — lmdb.h: "Do not have open an LMDB database twice in the same process at the same time").
    public static let alreadyOpen = LMDBError(code: -1)
    /// Not an LMDB code: the ``Environment`` was closed (or is closing) and starts no new work.
    public static let closed = LMDBError(code: -2)

    /// True for `MDB_MAP_FULL`: the map is full; grow it with ``Environment/setMapSize(_:)``.
    public var isMapFull: Bool { code == MDB_MAP_FULL }

    /// The `mdb_strerror` text (or ours for ``alreadyOpen`` / ``closed``) followed by the code.
    public var description: String {
        "\(message) (code \(code))"
    }

    private var message: String {
        switch self {
        case .alreadyOpen:
            return "an LMDB environment is already open at this path in this process"
        case .closed:
            return "the LMDB environment is closed"
        default:
            // mdb_strerror returns static strings for MDB_* codes and strerror() text for errno values.
            return String(cString: mdb_strerror(code))
        }
    }
}

/// The one gate every C result passes through: `MDB_SUCCESS` (0) returns, anything else throws.
@inline(__always)
func check(_ result: Int32) throws(LMDBError) {
    if result != MDB_SUCCESS {
        throw LMDBError(code: result)
    }
}
