/// Where a vault's journal lives (docs/operations.md, "Journal, snapshots and restore").
public enum JournalLocation: Sendable, Equatable, CustomStringConvertible {
    /// Append-only segment files and sealed snapshots in a directory, meant for another disk.
    case directory(String)
    /// One PostgreSQL database: a row per change set, whose replication and backups carry the
    /// journal to other machines. The URL names no password (`postgres://USER@HOST:PORT/DB`, or
    /// `postgres://USER@/DB?host=/socket/dir` for a Unix socket).
    case postgres(PostgresAddress)

    /// Parses `--journal`: a `postgres://` URL, else a directory path.
    public static func parse(_ text: String) throws -> JournalLocation {
        if text.hasPrefix("postgres://") || text.hasPrefix("postgresql://") {
            return .postgres(try PostgresAddress(url: text))
        }
        guard !text.isEmpty else { throw VaultError.invalidArgument("--journal needs a directory or a postgres:// URL") }
        return .directory(text)
    }

    public var description: String {
        switch self {
        case .directory(let path): "directory \(path)"
        case .postgres(let address): "postgres \(address)"
        }
    }

    /// The form recorded in the vault (no password is ever part of it).
    var recorded: String {
        switch self {
        case .directory(let path): path
        case .postgres(let address): address.url
        }
    }
}

/// A PostgreSQL server and database, without credentials (a password comes from a file).
public struct PostgresAddress: Sendable, Equatable, CustomStringConvertible {
    public var user: String
    public var host: String?
    public var port: Int
    public var database: String
    /// A directory holding the server's Unix socket (`?host=/dir`), instead of a TCP host.
    public var socketDirectory: String?

    public init(url text: String) throws {
        var rest = Substring(text)
        for scheme in ["postgresql://", "postgres://"] where rest.hasPrefix(scheme) { rest = rest.dropFirst(scheme.count) }
        var query: Substring = ""
        if let q = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: q)...]
            rest = rest[..<q]
        }
        guard let slash = rest.firstIndex(of: "/") else {
            throw VaultError.invalidArgument("a postgres journal URL names a database: postgres://USER@HOST:PORT/DB")
        }
        database = String(rest[rest.index(after: slash)...])
        var authority = rest[..<slash]
        guard let at = authority.lastIndex(of: "@") else {
            throw VaultError.invalidArgument("a postgres journal URL names a user: postgres://USER@HOST:PORT/DB")
        }
        let userPart = authority[..<at]
        guard !userPart.contains(":") else {
            throw VaultError.invalidArgument("a postgres journal URL must not carry a password (use --journal-password-file)")
        }
        user = String(userPart)
        authority = authority[authority.index(after: at)...]
        port = 5432
        if let colon = authority.lastIndex(of: ":") {
            guard let p = Int(authority[authority.index(after: colon)...]), (1...65535).contains(p) else {
                throw VaultError.invalidArgument("a postgres journal URL has a bad port")
            }
            port = p
            authority = authority[..<colon]
        }
        host = authority.isEmpty ? nil : String(authority)
        for pair in query.split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            guard kv.count == 2, kv[0] == "host" else {
                throw VaultError.invalidArgument("a postgres journal URL takes only ?host=/socket/directory")
            }
            socketDirectory = String(kv[1])
        }
        guard !user.isEmpty, !database.isEmpty, host != nil || socketDirectory != nil else {
            throw VaultError.invalidArgument("a postgres journal URL is postgres://USER@HOST:PORT/DB or postgres://USER@/DB?host=/socket/dir")
        }
    }

    public var url: String {
        var s = "postgres://\(user)@\(host ?? ""):\(port)/\(database)"
        if let socketDirectory { s += "?host=\(socketDirectory)" }
        return s
    }

    public var description: String { url }
}

/// A snapshot a journal holds: the record store and keystore as of change set `sequence`
/// (its high-water mark), sealed under the snapshot key of `epoch`.
public struct SnapshotInfo: Sendable, Equatable, Comparable {
    public let epoch: UInt64
    public let sequence: UInt64
    /// Bytes as stored (0 while unknown).
    public var bytes: Int

    public static func < (a: SnapshotInfo, b: SnapshotInfo) -> Bool { (a.sequence, a.epoch) < (b.sequence, b.epoch) }
}

/// What a journal holds, as far as can be told without opening anything.
public struct JournalStatus: Sendable {
    /// The last whole change set (0: none).
    public var head: UInt64
    /// The last change set the journal recorded as appended, when it keeps such a record (a
    /// directory's `head` file): above `head` means acknowledged change sets are missing.
    public var recordedHead: UInt64?
    /// Bytes after the last whole change set: an append a crash cut short.
    public var tornTail: Bool
    /// The first change set held (after truncation), 0 when there is none.
    public var first: UInt64
}

/// A journal backend: an ordered, append-only list of sealed change sets, and sealed
/// snapshots. Backends store bytes they cannot read; `JournalWriter`, `Snapshot` and
/// `Restore` seal and open them.
protocol JournalBackend: AnyObject, Sendable {
    var description: String { get }
    /// The vault id the journal belongs to; nil for an empty (new) journal.
    func identity() throws -> [UInt8]?
    /// Makes an empty journal the journal of `vaultID`.
    func create(vaultID: [UInt8]) throws
    /// Takes the journal for this process alone (one writer per journal); throws when another holds it.
    func lockForWriting() throws
    func status() throws -> JournalStatus
    /// Removes a torn tail (an append a crash cut short, never acknowledged) before appending.
    func prepareForAppend() throws
    /// Appends one entry, durably, after the last; returns when it is on stable storage.
    func append(_ entry: JournalEntry) throws
    /// Removes `entry`, the last one appended, whose write then failed locally (nothing of it
    /// was acknowledged).
    func retract(_ entry: JournalEntry) throws
    /// Calls `body` with each entry after `sequence`, in order, until it returns false.
    /// Throws, naming the place, on a gap or damage in the middle.
    func entries(after sequence: UInt64, _ body: (JournalEntry) throws -> Bool) throws
    func snapshots() throws -> [SnapshotInfo]
    /// Stores a snapshot from the chunks `produce` writes; published (visible to `snapshots()`)
    /// only when complete and durable. Returns its size.
    func writeSnapshot(_ info: SnapshotInfo, _ produce: (_ write: ([UInt8]) throws -> Void) throws -> Void) throws -> Int
    /// Reads a snapshot: `consume` calls `read(n)` for up to `n` more bytes, empty at the end.
    func readSnapshot(_ info: SnapshotInfo, _ consume: (_ read: (Int) throws -> [UInt8]) throws -> Void) throws
    /// Removes every change set up to `sequence` (covered by a newer snapshot).
    func removeEntries(through sequence: UInt64) throws
    func removeSnapshot(_ info: SnapshotInfo) throws
    /// The exchange keys standbys published for master key generation `generation` (seen within
    /// the hour): a rotation to `generation + 1` seals the new key to each (`KeyExchange`).
    func exchangeKeys(generation: UInt64) throws -> [PublishedExchangeKey]
    func close()
}

extension JournalLocation {
    /// The backend for this location (not yet opened or locked).
    func backend(passwordFile: String? = nil, leaseSeconds: Int = JournalSettings.defaultLeaseSeconds,
                 leaseHolder: String? = nil) throws -> any JournalBackend {
        switch self {
        case .directory(let path): return try DirectoryJournal(path: path)
        case .postgres(let address):
            return try PostgresJournal(address: address, passwordFile: passwordFile, leaseSeconds: leaseSeconds,
                                       holder: leaseHolder)
        }
    }
}
