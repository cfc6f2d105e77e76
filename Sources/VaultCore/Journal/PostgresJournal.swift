import Foundation
import Locking
import Logging
import NIOCore
import NIOPosix
import PostgresNIO
import Sodium
#if canImport(Glibc)
import Glibc
#endif

/// The journal in a PostgreSQL database (`--journal postgres://USER@HOST:PORT/DB`): the server's
/// own durability (a commit returns once its WAL is flushed, and once a synchronous standby has it
/// when `synchronous_standby_names` is set) and its replication and backups (streaming standbys,
/// `pg_basebackup`, WAL archiving) carry the journal to other machines. Four tables:
///
///     shredvault_journal         one row: format, vault id, head (the last change set appended)
///     shredvault_change_sets     seq (primary key), epoch, entry (the sealed change set, bytea)
///     shredvault_snapshots       epoch, seq, parts, bytes, complete (published when true)
///     shredvault_snapshot_parts  epoch, seq, part, data (1 MiB pieces of a sealed snapshot)
///
/// and the lease's and the standbys' (`shredvault_standbys`: each standby's position, and the
/// public half of its single-use exchange key for its generation, with a tag made by MK(g)).
///
/// PostgreSQL stores bytes it cannot read: change sets and snapshots are sealed before they
/// leave the vault. An append is one statement that inserts the change set and moves `head` in
/// the same transaction, so a head above the last row means rows were removed from the end
/// (refused, like a directory journal's head hint).
///
/// One writer per database, elected by a **lease** (`shredvault_lease`: a term, the holder, an
/// expiry). The writer renews it every third of its length; another node takes it only once it
/// has expired, with the next term. Every statement that changes the journal runs only while
/// the lease row still names this node and its term (the row is locked `FOR SHARE` in the same
/// statement, so a promotion waits for an append in flight and then sees it): a deposed writer
/// (paused, cut off, then resumed) changes nothing and stops taking writes (503), instead of
/// forking the journal.
///
/// The calls block the calling thread on NIO futures: they come from the vault's own threads
/// (the opening thread, the writer, the journal appender), never from an event loop.
final class PostgresJournal: JournalBackend, @unchecked Sendable {
    // unchecked: the mutable state is behind `state`'s lock; calls are serialized by it.
    let address: PostgresAddress
    private let password: [UInt8]?
    private let logger: Logger
    private struct State {
        var connection: PostgresConnection?
        var lockWanted = false
        var closed = false
        /// The last change set appended, and the one an append is writing (its outcome unknown
        /// while the connection is lost).
        var last: UInt64?
        var inFlight: UInt64?
        /// The term this node writes under, once it holds the lease.
        var term: Int64?
        /// Set once another node took the lease: nothing is written any more.
        var deposed: String?
        var standbyTableReady = false
    }
    private let state = Locked(State())

    static let format: Int32 = 1
    static let partSize = 1 << 20
    /// This journal handle, as the lease names it: host, pid and a random tag. Every handle is
    /// its own holder (a second vault in the same process is refused like one in another); a
    /// promoted standby hands its holder to the vault it opens, which keeps the term.
    let holder: String

    static func newHolder() -> String {
        var name = [CChar](repeating: 0, count: 256)
        gethostname(&name, 255)
        let host = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return "\(host):\(getpid()):" + Random.bytes(count: 6).map { String(format: "%02x", $0) }.joined()
    }
    /// How long a lease lasts without renewal.
    let leaseSeconds: Int
    private let renewal = Locked<Thread?>(nil)

    init(address: PostgresAddress, passwordFile: String?, leaseSeconds: Int = 10, holder: String? = nil) throws {
        self.address = address
        self.holder = holder ?? Self.newHolder()
        self.leaseSeconds = max(1, leaseSeconds)
        if let passwordFile {
            guard let mode = Posix.mode(passwordFile) else {
                throw VaultError.journal("cannot read the journal password file \(passwordFile): no such file")
            }
            guard mode & 0o077 == 0 else {
                throw VaultError.journal("\(passwordFile) is readable or writable by group or others; run chmod 600 \(passwordFile)")
            }
            var bytes = try Files.read(passwordFile)
            while let last = bytes.last, last == 0x0A || last == 0x0D { bytes.removeLast() }
            guard !bytes.isEmpty else { throw VaultError.journal("the journal password file \(passwordFile) is empty") }
            password = bytes
        } else {
            password = nil
        }
        var logger = Logger(label: "shredvault.journal.postgres")
        logger.logLevel = .critical
        self.logger = logger
    }

    var description: String { "journal \(address.url)" }

    // MARK: Connection

    private func configuration() -> PostgresConnection.Configuration {
        // postgres-nio takes the password as a String: it exists as one only while connecting
        // (a database credential, not a vault key; it never reaches a log or an error).
        let secret = password.map { String(decoding: $0, as: UTF8.self) }
        var c: PostgresConnection.Configuration
        if let dir = address.socketDirectory {
            c = .init(unixSocketPath: dir + "/.s.PGSQL.\(address.port)", username: address.user, password: secret,
                      database: address.database)
        } else {
            c = .init(host: address.host ?? "localhost", port: address.port, username: address.user, password: secret,
                      database: address.database, tls: .disable)
        }
        c.options.connectTimeout = .seconds(10)
        return c
    }

    /// The connection, made (again) when there is none or it was lost; with the writer's lock
    /// taken again and the journal's end checked against what this process appended.
    private func connection(_ s: inout State) throws -> PostgresConnection {
        if s.closed { throw VaultError.journal("\(address.url): the journal is closed") }
        if let c = s.connection, !c.isClosed { return c }
        s.connection = nil
        let c: PostgresConnection
        do {
            c = try PostgresConnection.connect(on: MultiThreadedEventLoopGroup.singleton.next(), configuration: configuration(),
                                               id: 1, logger: logger).wait()
        } catch {
            throw VaultError.journal("cannot reach \(address.url): \(Self.describe(error))")
        }
        do {
            if s.lockWanted, let term = s.term {
                // Still the writer? Another node may have taken the lease while the link was down.
                let rows = try c.query("SELECT term, holder FROM shredvault_lease", logger: logger).wait().rows
                let held = try rows.first?.decode((Int64, String).self)
                guard let held, held.0 == term, held.1 == holder else {
                    s.deposed = "another node took the journal's lease (term \(held?.0 ?? 0)) from this vault's term \(term)"
                    throw VaultError.journal("\(address.url): \(s.deposed!); this vault no longer writes")
                }
                if let last = s.last {
                    // This process is the only writer: the journal ends where it left it, or one
                    // further when an append's commit was lost with the connection.
                    let end = try Self.maxSequence(c, logger)
                    guard end == last || (s.inFlight != nil && end == s.inFlight) else {
                        throw VaultError.journal("\(address.url) ends at change set \(end) where this vault appended "
                                                 + "\(last): the journal was changed by someone else")
                    }
                }
            }
        } catch {
            _ = try? c.close().wait()
            throw error is VaultError ? error : VaultError.journal("\(address.url): \(Self.describe(error))")
        }
        s.connection = c
        return c
    }

    /// Runs `body` on the connection; a failure of PostgreSQL or of the link is a journal error
    /// (the link is dropped and made again on the next call).
    private func run<T>(_ what: String, _ body: (PostgresConnection, inout State) throws -> T) throws -> T {
        try state.withLock { s in
            let c = try connection(&s)
            do {
                return try body(c, &s)
            } catch let e as VaultError {
                throw e
            } catch {
                if c.isClosed { s.connection = nil }
                throw VaultError.journal("\(address.url): \(what): \(Self.describe(error))")
            }
        }
    }

    static func describe(_ error: any Error) -> String {
        if let e = error as? PSQLError {
            if let message = e.serverInfo?[.message] {
                return "\(message)" + (e.serverInfo?[.sqlState].map { " (SQLSTATE \($0))" } ?? "")
            }
            return "\(e.code)"
        }
        return "\(error)"
    }

    private static func maxSequence(_ c: PostgresConnection, _ logger: Logger) throws -> UInt64 {
        let rows = try c.query("SELECT coalesce(max(seq), 0)::int8 FROM shredvault_change_sets", logger: logger).wait().rows
        return UInt64(try rows.first?.decode(Int64.self) ?? 0)
    }

    private func exists(_ c: PostgresConnection) throws -> Bool {
        let rows = try c.query("SELECT to_regclass('shredvault_journal') IS NOT NULL", logger: logger).wait().rows
        return try rows.first?.decode(Bool.self) ?? false
    }

    // MARK: JournalBackend

    func identity() throws -> [UInt8]? {
        try run("reading the journal's identity") { c, _ in
            guard try exists(c) else { return nil }
            let rows = try c.query("SELECT format, vault_id FROM shredvault_journal", logger: logger).wait().rows
            guard let row = rows.first else { return nil }
            let (format, id) = try row.decode((Int32, ByteBuffer).self)
            guard format == Self.format else {
                throw VaultError.journal("\(address.url): journal format \(format) is not supported")
            }
            return Array(id.readableBytesView)
        }
    }

    func create(vaultID: [UInt8]) throws {
        try run("creating the journal's tables") { c, _ in
            _ = try c.query("BEGIN", logger: logger).wait()
            do {
                for statement: PostgresQuery in [
                    """
                    CREATE TABLE IF NOT EXISTS shredvault_journal (
                        one boolean PRIMARY KEY DEFAULT true CHECK (one), format int4 NOT NULL,
                        vault_id bytea NOT NULL, head int8 NOT NULL DEFAULT 0)
                    """,
                    "CREATE TABLE IF NOT EXISTS shredvault_change_sets (seq int8 PRIMARY KEY, epoch int8 NOT NULL, entry bytea NOT NULL)",
                    """
                    CREATE TABLE IF NOT EXISTS shredvault_snapshots (
                        epoch int8 NOT NULL, seq int8 NOT NULL, parts int4 NOT NULL DEFAULT 0, bytes int8 NOT NULL DEFAULT 0,
                        complete boolean NOT NULL DEFAULT false, PRIMARY KEY (epoch, seq))
                    """,
                    """
                    CREATE TABLE IF NOT EXISTS shredvault_snapshot_parts (
                        epoch int8 NOT NULL, seq int8 NOT NULL, part int4 NOT NULL, data bytea NOT NULL,
                        PRIMARY KEY (epoch, seq, part))
                    """,
                    // Sealed bytes do not compress: store them as they are.
                    "ALTER TABLE shredvault_change_sets ALTER COLUMN entry SET STORAGE EXTERNAL",
                    "ALTER TABLE shredvault_snapshot_parts ALTER COLUMN data SET STORAGE EXTERNAL",
                ] {
                    _ = try c.query(statement, logger: logger).wait()
                }
                let inserted = try c.query("""
                    INSERT INTO shredvault_journal (format, vault_id) VALUES (\(Self.format), \(ByteBuffer(bytes: vaultID)))
                    ON CONFLICT DO NOTHING
                    """, logger: logger).wait()
                guard inserted.metadata.rows == 1 else {
                    throw VaultError.journal("\(address.url) already holds a journal")
                }
                _ = try c.query("COMMIT", logger: logger).wait()
            } catch {
                _ = try? c.query("ROLLBACK", logger: logger).wait()
                throw error
            }
        }
    }

    func lockForWriting() throws {
        try takeLease(wait: true)
    }

    /// The lease, or why not: held by another node until it expires. With `wait`, waits for a
    /// lease that lapses within its length (a writer that stopped without releasing it).
    /// A node that holds it already keeps its term; otherwise the term moves on by one.
    func takeLease(wait: Bool) throws {
        let deadline = ContinuousClock.now + .seconds(leaseSeconds + 2)
        while true {
            let outcome: (term: Int64?, holder: String, seconds: Double) = try run("taking the journal's lease") { c, s in
                if s.term != nil, s.lockWanted { return (s.term, holder, 0) }
                _ = try c.query("""
                    CREATE TABLE IF NOT EXISTS shredvault_lease (
                        one boolean PRIMARY KEY DEFAULT true CHECK (one), term int8 NOT NULL,
                        holder text NOT NULL, expires_at timestamptz NOT NULL)
                    """, logger: logger).wait()
                _ = try c.query("""
                    INSERT INTO shredvault_lease (term, holder, expires_at) VALUES (0, '', now()) ON CONFLICT DO NOTHING
                    """, logger: logger).wait()
                let lease = "\(leaseSeconds) seconds"
                let rows = try c.query("""
                    UPDATE shredvault_lease
                    SET term = CASE WHEN holder = \(holder) THEN term ELSE term + 1 END,
                        holder = \(holder), expires_at = now() + \(lease)::interval
                    WHERE holder = \(holder) OR expires_at < now()
                    RETURNING term
                    """, logger: logger).wait().rows
                if let term = try rows.first?.decode(Int64.self) {
                    s.term = term
                    s.lockWanted = true
                    s.deposed = nil
                    return (term, holder, 0)
                }
                let held = try c.query("""
                    SELECT holder, greatest(extract(epoch FROM expires_at - now()), 0)::float8 FROM shredvault_lease
                    """, logger: logger).wait().rows
                let (holder, seconds) = try held.first?.decode((String, Double).self) ?? ("?", 0)
                return (nil, holder, seconds)
            }
            if outcome.term != nil {
                startRenewing()
                return
            }
            if !wait { throw Standby.LeaseHeld(holder: outcome.holder, seconds: Int(outcome.seconds.rounded(.up))) }
            guard ContinuousClock.now + .milliseconds(Int(outcome.seconds * 1000)) < deadline else {
                throw VaultError.journal("\(address.url) is in use by another vault process (\(outcome.holder) holds its "
                                         + "lease for \(Int(outcome.seconds.rounded(.up))) s more)")
            }
            Thread.sleep(forTimeInterval: min(max(outcome.seconds, 0.05), 0.25))
        }
    }

    /// Hands the lease back (a promotion that could not finish): another node may take it at
    /// once, and this handle writes nothing until it takes it again.
    func releaseLease() throws {
        // This handle stops being the writer first, even if PostgreSQL cannot be told (the lease
        // then lapses by itself), so nothing renews it or writes under it meanwhile.
        let held = state.withLock { s -> Int64? in
            defer { s.term = nil; s.lockWanted = false }
            return s.deposed == nil ? s.term : nil
        }
        guard let term = held else { return }
        try run("handing back the journal's lease") { c, _ in
            _ = try c.query("""
                UPDATE shredvault_lease SET expires_at = now() WHERE term = \(term) AND holder = \(holder)
                """, logger: logger).wait()
        }
    }

    /// The term this node writes under; nil before it holds the lease.
    var term: UInt64? { state.withLock { $0.term.map { UInt64($0) } } }

    /// Why this node no longer writes (another took the lease), or nil.
    var deposed: String? { state.withLock { $0.deposed } }

    /// Renews the lease every third of its length until the journal closes; a renewal that
    /// finds another term deposes this node.
    private func startRenewing() {
        renewal.withLock { t in
            guard t == nil else { return }
            let thread = Thread { [weak self] in
                while let self {
                    let stop = self.state.withLock { $0.closed }
                    if stop { return }
                    Thread.sleep(forTimeInterval: Double(self.leaseSeconds) / 3)
                    try? self.renew()
                }
            }
            thread.name = "sv-journal-lease"
            t = thread
            thread.start()
        }
    }

    private func renew() throws {
        try run("renewing the journal's lease") { c, s in
            guard let term = s.term, s.deposed == nil, !s.closed else { return }
            let lease = "\(leaseSeconds) seconds"
            let result = try c.query("""
                UPDATE shredvault_lease SET expires_at = now() + \(lease)::interval
                WHERE term = \(term) AND holder = \(holder)
                """, logger: logger).wait()
            if result.metadata.rows != 1 {
                s.deposed = "another node took the journal's lease from this vault's term \(term)"
            }
        }
    }

    /// Refuses once deposed; otherwise the term every changing statement is bound to.
    private static func writerTerm(_ s: State, _ url: String) throws -> Int64 {
        if let deposed = s.deposed { throw VaultError.journal("\(url): \(deposed); this vault no longer writes") }
        guard let term = s.term else { throw VaultError.journal("\(url): this vault does not hold the journal's lease") }
        return term
    }

    /// After a changing statement changed nothing: the lease is another node's now.
    private static func depose(_ s: inout State, _ url: String) -> VaultError {
        s.deposed = "another node took the journal's lease from this vault's term \(s.term ?? 0)"
        return VaultError.journal("\(url): \(s.deposed!); this vault no longer writes")
    }

    func status() throws -> JournalStatus {
        try run("reading the journal's state") { c, _ in
            guard try exists(c) else { return JournalStatus(head: 0, recordedHead: nil, tornTail: false, first: 0) }
            let rows = try c.query("""
                SELECT coalesce(max(seq), 0)::int8, coalesce(min(seq), 0)::int8, (SELECT head FROM shredvault_journal)
                FROM shredvault_change_sets
                """, logger: logger).wait().rows
            guard let row = rows.first else { return JournalStatus(head: 0, recordedHead: nil, tornTail: false, first: 0) }
            let (head, first, recorded) = try row.decode((Int64, Int64, Int64?).self)
            return JournalStatus(head: UInt64(head), recordedHead: recorded.map { UInt64($0) }, tornTail: false, first: UInt64(first))
        }
    }

    func prepareForAppend() throws {
        try run("preparing to append") { c, s in
            let end = try Self.maxSequence(c, logger)
            let rows = try c.query("SELECT head FROM shredvault_journal", logger: logger).wait().rows
            if let recorded = try rows.first?.decode(Int64.self), UInt64(recorded) > end {
                throw VaultError.journal("\(address.url) ends at change set \(end) but recorded \(recorded) as appended: "
                                         + "acknowledged change sets were removed from its end")
            }
            s.last = end
            s.inFlight = nil
        }
    }

    func append(_ entry: JournalEntry) throws {
        try run("appending change set \(entry.sequence)") { c, s in
            if let last = s.last, entry.sequence != last + 1 {
                throw VaultError.journal("change set \(entry.sequence) does not follow \(last)")
            }
            let term = try Self.writerTerm(s, address.url)
            s.inFlight = entry.sequence
            let seq = Int64(entry.sequence), epoch = Int64(entry.epoch)
            // One statement, one transaction: the row and the head move together, and only
            // while this node holds the lease under its term.
            let result = try c.query("""
                WITH lease AS (
                    SELECT term FROM shredvault_lease WHERE term = \(term) AND holder = \(holder) FOR SHARE),
                appended AS (
                    INSERT INTO shredvault_change_sets (seq, epoch, entry)
                    SELECT \(seq), \(epoch), \(ByteBuffer(bytes: entry.bytes)) FROM lease
                    RETURNING seq)
                UPDATE shredvault_journal SET head = (SELECT seq FROM appended) WHERE EXISTS (SELECT 1 FROM appended)
                """, logger: logger).wait()
            guard result.metadata.rows == 1 else {
                s.inFlight = nil
                throw Self.depose(&s, address.url)
            }
            s.last = entry.sequence
            s.inFlight = nil
        }
    }

    func retract(_ entry: JournalEntry) throws {
        try run("taking back change set \(entry.sequence)") { c, s in
            let term = try Self.writerTerm(s, address.url)
            let seq = Int64(entry.sequence)
            let result = try c.query("""
                WITH lease AS (
                    SELECT term FROM shredvault_lease WHERE term = \(term) AND holder = \(holder) FOR SHARE),
                removed AS (
                    DELETE FROM shredvault_change_sets WHERE seq = \(seq) AND EXISTS (SELECT 1 FROM lease) RETURNING seq)
                UPDATE shredvault_journal SET head = \(seq - 1) WHERE EXISTS (SELECT 1 FROM lease)
                """, logger: logger).wait()
            guard result.metadata.rows == 1 else { throw Self.depose(&s, address.url) }
            s.last = entry.sequence - 1
            s.inFlight = nil
        }
    }

    func entries(after sequence: UInt64, _ body: (JournalEntry) throws -> Bool) throws {
        var expected = sequence + 1
        while true {
            // A page at a time: a long journal is never held in memory whole.
            let page: [(UInt64, JournalEntry)] = try run("reading change sets after \(expected - 1)") { c, _ in
                let rows = try c.query("""
                    SELECT seq, entry FROM shredvault_change_sets WHERE seq >= \(Int64(expected)) ORDER BY seq LIMIT 512
                    """, logger: logger).wait().rows
                return try rows.map { row in
                    let (seq, bytes) = try row.decode((Int64, ByteBuffer).self)
                    do {
                        return (UInt64(seq), try JournalEntry(bytes: Array(bytes.readableBytesView)))
                    } catch {
                        throw VaultError.integrity("\(address.url): change set \(seq) is not a ShredVault change set (damaged)")
                    }
                }
            }
            if page.isEmpty { return }
            for (seq, entry) in page {
                guard seq == expected else {
                    throw VaultError.integrity("\(address.url): change sets \(expected) to \(seq - 1) are missing")
                }
                guard entry.sequence == seq else {
                    throw VaultError.integrity("\(address.url): the row of change set \(seq) holds change set \(entry.sequence)")
                }
                expected += 1
                if try !body(entry) { return }
            }
        }
    }

    func snapshots() throws -> [SnapshotInfo] {
        try run("listing snapshots") { c, _ in
            guard try exists(c) else { return [] }
            let rows = try c.query("SELECT epoch, seq, bytes FROM shredvault_snapshots WHERE complete", logger: logger).wait().rows
            return try rows.map { row in
                let (epoch, seq, bytes) = try row.decode((Int64, Int64, Int64).self)
                return SnapshotInfo(epoch: UInt64(epoch), sequence: UInt64(seq), bytes: Int(bytes))
            }.sorted()
        }
    }

    func writeSnapshot(_ info: SnapshotInfo, _ produce: (([UInt8]) throws -> Void) throws -> Void) throws -> Int {
        let epoch = Int64(info.epoch), seq = Int64(info.sequence)
        try run("starting snapshot \(info.epoch)-\(info.sequence)") { c, s in
            let term = try Self.writerTerm(s, address.url)
            _ = try c.query("""
                WITH gone AS (DELETE FROM shredvault_snapshot_parts WHERE epoch = \(epoch) AND seq = \(seq) AND EXISTS (SELECT 1 FROM shredvault_lease WHERE term = \(term) AND holder = \(holder)))
                DELETE FROM shredvault_snapshots WHERE epoch = \(epoch) AND seq = \(seq) AND EXISTS (SELECT 1 FROM shredvault_lease WHERE term = \(term) AND holder = \(holder))
                """, logger: logger).wait()
            let started = try c.query("""
                INSERT INTO shredvault_snapshots (epoch, seq) SELECT \(epoch), \(seq) WHERE EXISTS (SELECT 1 FROM shredvault_lease WHERE term = \(term) AND holder = \(holder))
                """, logger: logger).wait()
            guard started.metadata.rows == 1 else { throw Self.depose(&s, address.url) }
        }
        var buffer = ByteBuffer()
        buffer.reserveCapacity(Self.partSize)
        var part: Int32 = 0
        var total = 0
        func flush() throws {
            guard buffer.readableBytes > 0 else { return }
            let data = buffer
            let n = part
            try run("writing snapshot \(info.epoch)-\(info.sequence)") { c, s in
                let term = try Self.writerTerm(s, address.url)
                let written = try c.query("""
                    INSERT INTO shredvault_snapshot_parts (epoch, seq, part, data)
                    SELECT \(epoch), \(seq), \(n), \(data) WHERE EXISTS (SELECT 1 FROM shredvault_lease WHERE term = \(term) AND holder = \(holder))
                    """, logger: logger).wait()
                guard written.metadata.rows == 1 else { throw Self.depose(&s, address.url) }
            }
            part += 1
            buffer.clear()
        }
        do {
            try produce { chunk in
                var rest = chunk[...]
                while !rest.isEmpty {
                    let take = min(rest.count, Self.partSize - buffer.readableBytes)
                    buffer.writeBytes(rest.prefix(take))
                    rest = rest.dropFirst(take)
                    if buffer.readableBytes >= Self.partSize { try flush() }
                }
                total += chunk.count
            }
            try flush()
            let parts = part, bytes = Int64(total)
            try run("publishing snapshot \(info.epoch)-\(info.sequence)") { c, s in
                let term = try Self.writerTerm(s, address.url)
                let published = try c.query("""
                    UPDATE shredvault_snapshots SET parts = \(parts), bytes = \(bytes), complete = true
                    WHERE epoch = \(epoch) AND seq = \(seq) AND EXISTS (SELECT 1 FROM shredvault_lease WHERE term = \(term) AND holder = \(holder))
                    """, logger: logger).wait()
                guard published.metadata.rows == 1 else { throw Self.depose(&s, address.url) }
            }
        } catch {
            try? removeSnapshot(info)
            throw error
        }
        return total
    }

    func readSnapshot(_ info: SnapshotInfo, _ consume: ((Int) throws -> [UInt8]) throws -> Void) throws {
        let epoch = Int64(info.epoch), seq = Int64(info.sequence)
        let parts: Int32 = try run("opening snapshot \(info.epoch)-\(info.sequence)") { c, _ in
            let rows = try c.query("""
                SELECT parts FROM shredvault_snapshots WHERE epoch = \(epoch) AND seq = \(seq) AND complete
                """, logger: logger).wait().rows
            guard let n = try rows.first?.decode(Int32.self) else {
                throw VaultError.journal("\(address.url) holds no snapshot \(info.epoch)-\(info.sequence)")
            }
            return n
        }
        var next: Int32 = 0
        var buffer: [UInt8] = []
        var offset = 0
        try consume { n in
            var out: [UInt8] = []
            out.reserveCapacity(n)
            while out.count < n {
                if offset == buffer.count {
                    guard next < parts else { break }
                    let part = next
                    buffer = try run("reading snapshot \(info.epoch)-\(info.sequence)") { c, _ in
                        let rows = try c.query("""
                            SELECT data FROM shredvault_snapshot_parts WHERE epoch = \(epoch) AND seq = \(seq) AND part = \(part)
                            """, logger: logger).wait().rows
                        guard let data = try rows.first?.decode(ByteBuffer.self) else {
                            throw VaultError.integrity("\(address.url): part \(part) of snapshot \(info.epoch)-\(info.sequence) is missing")
                        }
                        return Array(data.readableBytesView)
                    }
                    offset = 0
                    next += 1
                }
                let take = min(n - out.count, buffer.count - offset)
                out += buffer[offset..<(offset + take)]
                offset += take
            }
            return out
        }
    }

    func removeEntries(through sequence: UInt64) throws {
        try run("removing change sets through \(sequence)") { c, s in
            // The last change set stays (as a directory journal's last segment does): the head
            // must remain provable after a snapshot covers everything.
            let term = try Self.writerTerm(s, address.url)
            var keep = min(Int64(sequence), Int64(s.last ?? sequence) - 1)
            // Nor what a standby seen within the hour has not applied yet: it needs every change
            // set (a rotation's carries the next generation, which a snapshot cannot give it).
            try ensureStandbyTable(c, &s)
            let rows = try c.query("""
                SELECT min(applied)::int8 FROM shredvault_standbys WHERE seen_at > now() - interval '1 hour'
                """, logger: logger).wait().rows
            if let behind = try rows.first?.decode(Int64?.self) { keep = min(keep, behind) }
            guard keep > 0 else { return }
            _ = try c.query("DELETE FROM shredvault_change_sets WHERE seq <= \(keep) AND EXISTS (SELECT 1 FROM shredvault_lease WHERE term = \(term) AND holder = \(holder))", logger: logger).wait()
        }
    }

    /// Creates the standbys' table once per handle (journals made before standbys lack it).
    private func ensureStandbyTable(_ c: PostgresConnection, _ s: inout State) throws {
        guard !s.standbyTableReady else { return }
        _ = try c.query("""
            CREATE TABLE IF NOT EXISTS shredvault_standbys (
                name text PRIMARY KEY, applied int8 NOT NULL, epoch int8 NOT NULL, lag_ms int8 NOT NULL,
                seen_at timestamptz NOT NULL)
            """, logger: logger).wait()
        // Journals made before the key exchange lack its columns.
        _ = try c.query("""
            ALTER TABLE shredvault_standbys ADD COLUMN IF NOT EXISTS exchange_epoch int8,
                ADD COLUMN IF NOT EXISTS exchange_key bytea, ADD COLUMN IF NOT EXISTS exchange_tag bytea
            """, logger: logger).wait()
        s.standbyTableReady = true
    }

    /// A standby says how far it has applied (the writer keeps what it has not, for an hour).
    func reportStandby(name: String, applied: UInt64, epoch: UInt64, lagMilliseconds: Int) throws {
        try run("reporting the standby's position") { c, s in
            try ensureStandbyTable(c, &s)
            _ = try c.query("""
                INSERT INTO shredvault_standbys (name, applied, epoch, lag_ms, seen_at)
                VALUES (\(name), \(Int64(applied)), \(Int64(epoch)), \(Int64(lagMilliseconds)), now())
                ON CONFLICT (name) DO UPDATE SET applied = excluded.applied, epoch = excluded.epoch,
                    lag_ms = excluded.lag_ms, seen_at = excluded.seen_at
                """, logger: logger).wait()
        }
    }

    /// A standby publishes the public half of its exchange key for `generation`, with its tag
    /// (`KeyExchange.tag`): the rotation to the next generation seals the new key to it.
    func publishExchangeKey(name: String, generation: UInt64, publicKey: [UInt8], tag: [UInt8]) throws {
        try run("publishing the standby's exchange key") { c, s in
            try ensureStandbyTable(c, &s)
            let result = try c.query("""
                UPDATE shredvault_standbys SET exchange_epoch = \(Int64(generation)), exchange_key = \(ByteBuffer(bytes: publicKey)),
                    exchange_tag = \(ByteBuffer(bytes: tag)), seen_at = now()
                WHERE name = \(name)
                """, logger: logger).wait()
            guard result.metadata.rows == 1 else {
                throw VaultError.journal("the standby \(name) is not registered in the journal")
            }
        }
    }

    func exchangeKeys(generation: UInt64) throws -> [PublishedExchangeKey] {
        try run("listing the standbys' exchange keys") { c, s in
            try ensureStandbyTable(c, &s)
            let rows = try c.query("""
                SELECT name, exchange_key, exchange_tag FROM shredvault_standbys
                WHERE exchange_epoch = \(Int64(generation)) AND exchange_key IS NOT NULL AND exchange_tag IS NOT NULL
                    AND seen_at > now() - interval '1 hour' ORDER BY name
                """, logger: logger).wait().rows
            return try rows.map { row in
                let (name, key, tag) = try row.decode((String, ByteBuffer, ByteBuffer).self)
                return PublishedExchangeKey(name: name, generation: generation, publicKey: Array(key.readableBytesView),
                                            tag: Array(tag.readableBytesView))
            }
        }
    }

    /// A standby stops following (promoted): the writer no longer keeps change sets for it.
    func forgetStandby(name: String) throws {
        try run("removing the standby's position") { c, s in
            try ensureStandbyTable(c, &s)
            _ = try c.query("DELETE FROM shredvault_standbys WHERE name = \(name)", logger: logger).wait()
        }
    }

    /// The standbys that reported within the hour: name, change set applied, lag, seconds since.
    func standbys() throws -> [StandbyReport] {
        try run("listing standbys") { c, s in
            try ensureStandbyTable(c, &s)
            let rows = try c.query("""
                SELECT name, applied, lag_ms, extract(epoch FROM now() - seen_at)::float8 FROM shredvault_standbys
                WHERE seen_at > now() - interval '1 hour' ORDER BY name
                """, logger: logger).wait().rows
            return try rows.map { row in
                let (name, applied, lag, ago) = try row.decode((String, Int64, Int64, Double).self)
                return StandbyReport(name: name, applied: UInt64(applied), lagMilliseconds: Int(lag), secondsSinceSeen: ago)
            }
        }
    }

    func removeSnapshot(_ info: SnapshotInfo) throws {
        let epoch = Int64(info.epoch), seq = Int64(info.sequence)
        try run("removing snapshot \(info.epoch)-\(info.sequence)") { c, s in
            let term = try Self.writerTerm(s, address.url)
            _ = try c.query("""
                WITH gone AS (DELETE FROM shredvault_snapshot_parts WHERE epoch = \(epoch) AND seq = \(seq) AND EXISTS (SELECT 1 FROM shredvault_lease WHERE term = \(term) AND holder = \(holder)))
                DELETE FROM shredvault_snapshots WHERE epoch = \(epoch) AND seq = \(seq) AND EXISTS (SELECT 1 FROM shredvault_lease WHERE term = \(term) AND holder = \(holder))
                """, logger: logger).wait()
        }
    }

    func close() { close(releasingLease: true) }

    /// Closes the link; a clean stop hands the lease back at once (the next writer need not wait
    /// it out), unless the holder passes to another handle of this process (a promotion).
    func close(releasingLease: Bool) {
        let c: PostgresConnection? = state.withLock { s in
            defer { s.connection = nil; s.closed = true }
            guard let c = s.connection, !c.isClosed else { return nil }
            if releasingLease, let term = s.term, s.deposed == nil {
                _ = try? c.query("""
                    UPDATE shredvault_lease SET expires_at = now() WHERE term = \(term) AND holder = \(holder)
                    """, logger: logger).wait()
            }
            return c
        }
        if let c { _ = try? c.close().wait() }
    }

    deinit { close() }
}
