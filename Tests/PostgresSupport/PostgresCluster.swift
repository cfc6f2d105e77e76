import CVaultSystem
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A real PostgreSQL 15 server of the tests' own: a new cluster (`initdb`) in a temporary
/// directory, run as an unprivileged user (`postgres` when the tests run as root, which
/// PostgreSQL refuses to be), listening on a Unix socket in that directory only. No mock: the
/// journal's SQL, its transactions and its advisory lock run against the server itself.
public final class PostgresCluster: @unchecked Sendable {
    // unchecked: immutable after init; start/stop are called by one test at a time.
    public static let bin = "/usr/lib/postgresql/15/bin"
    public let directory: String
    public let port = 5432
    public var data: String { directory + "/pgdata" }
    /// The journal's URL in this cluster's database `shredvault` (over the Unix socket).
    public var url: String { "postgres://shredvault@/shredvault?host=\(directory)" }

    /// A new cluster, or a streaming replica of `primary` (`pg_basebackup -R`, a standby that
    /// follows the primary's WAL and can be promoted).
    public convenience init(replicaOf primary: PostgresCluster? = nil) throws {
        try self.init(replicaOf: primary, copyOf: nil)
    }

    /// A cluster started on a file-level copy of `other`'s data directory (WAL included), as a
    /// backup of the database server's disk would be: stop `other` first for a consistent copy.
    public convenience init(copyOf other: PostgresCluster) throws {
        try self.init(replicaOf: nil, copyOf: other)
    }

    private init(replicaOf primary: PostgresCluster?, copyOf other: PostgresCluster?) throws {
        guard FileManager.default.isExecutableFile(atPath: Self.bin + "/initdb") else {
            throw ClusterError("PostgreSQL 15 is not installed (\(Self.bin)/initdb): run scripts/setup, which installs postgresql-15")
        }
        var template = Array("/tmp/svpg-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw ClusterError("mkdtemp failed")
        }
        directory = String(cString: made)
        if geteuid() == 0 {
            guard let pw = getpwnam("postgres") ?? getpwnam("nobody") else { throw ClusterError("no unprivileged user to run PostgreSQL") }
            chown(directory, pw.pointee.pw_uid, pw.pointee.pw_gid)
        }
        chmod(directory, 0o700)
        if let other {
            try run("/bin/cp", ["-a", other.data, data])
            try start()
        } else if let primary {
            try run(Self.bin + "/pg_basebackup", ["-h", primary.directory, "-p", "\(primary.port)", "-U", "shredvault",
                                                 "-D", data, "-R", "-X", "stream", "--no-sync", "-c", "fast"])
            // Its name in the primary's synchronous_standby_names.
            try run("/bin/sh", ["-c", "echo \"cluster_name = 'standby'\" >> \(data)/postgresql.auto.conf"])
            try start()
        } else {
            try run(Self.bin + "/initdb", ["-D", data, "-U", "shredvault", "-A", "trust", "--no-sync", "-E", "UTF8"])
            try start()
            try run(Self.bin + "/createdb", ["-h", directory, "-p", "\(port)", "-U", "shredvault", "shredvault"])
        }
    }

    /// Makes commits wait until the standby has them (RPO 0 across the two machines).
    public func requireSynchronousStandby() throws {
        try sql("ALTER SYSTEM SET synchronous_standby_names = 'standby'")
        try sql("SELECT pg_reload_conf()")
    }

    /// Waits until a standby streams synchronously from this primary.
    public func waitForSynchronousStandby() throws {
        for _ in 0..<300 {
            if try sql("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'") == "1" { return }
            usleep(100_000)
        }
        throw ClusterError("no synchronous standby after 30 s")
    }

    public func promote() throws {
        try run(Self.bin + "/pg_ctl", ["-D", data, "-w", "promote"])
    }

    /// Kills the server without a shutdown (the machine is lost).
    public func crash() throws {
        try run(Self.bin + "/pg_ctl", ["-D", data, "-m", "immediate", "-w", "stop"])
    }

    public func start() throws {
        try run(Self.bin + "/pg_ctl", ["-D", data, "-l", directory + "/server.log", "-w", "-t", "60", "-o",
                                       "-k \(directory) -c listen_addresses='' -p \(port) -c fsync=off -c max_connections=20", "start"])
    }

    public func stop() throws {
        try run(Self.bin + "/pg_ctl", ["-D", data, "-m", "fast", "-w", "stop"])
    }

    /// Runs SQL in the journal's database with psql (the client the Debian package ships).
    @discardableResult
    public func sql(_ statement: String) throws -> String {
        try run("/usr/bin/psql", ["-h", directory, "-p", "\(port)", "-U", "shredvault", "-d", "shredvault", "-At",
                                  "-v", "ON_ERROR_STOP=1", "-c", statement])
    }

    /// `pg_dump` of the journal's database (plain SQL) into `file`; the text is returned.
    @discardableResult
    public func dump(to file: String) throws -> String {
        let text = try run(Self.bin + "/pg_dump", ["-h", directory, "-p", "\(port)", "-U", "shredvault", "-d", "shredvault"])
        FileManager.default.createFile(atPath: file, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600])
        return text
    }

    /// Loads a plain `pg_dump` file into a new database `name` of this cluster.
    public func load(_ file: String, into name: String) throws {
        try run(Self.bin + "/createdb", ["-h", directory, "-p", "\(port)", "-U", "shredvault", name])
        chmod(file, 0o644)
        try run("/usr/bin/psql", ["-h", directory, "-p", "\(port)", "-U", "shredvault", "-d", name, "-q",
                                  "-v", "ON_ERROR_STOP=1", "-f", file])
    }

    /// A new, empty database `name`.
    public func createDatabase(_ name: String) throws {
        try run(Self.bin + "/createdb", ["-h", directory, "-p", "\(port)", "-U", "shredvault", name])
    }

    /// The journal's URL in database `name` of this cluster.
    public func url(database name: String) -> String { "postgres://shredvault@/\(name)?host=\(directory)" }

    deinit {
        _ = try? run(Self.bin + "/pg_ctl", ["-D", data, "-m", "immediate", "-w", "stop"])
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Runs a program (as the unprivileged user when we are root) and returns its output. With
    /// posix_spawn and waitpid, output to a file: the server pg_ctl starts keeps every inherited
    /// descriptor open for its whole life, and outlives pg_ctl.
    @discardableResult
    private func run(_ program: String, _ arguments: [String]) throws -> String {
        var argv = [program] + arguments
        if geteuid() == 0 {
            argv = ["/usr/sbin/runuser", "-u", getpwnam("postgres") != nil ? "postgres" : "nobody", "--"] + argv
        }
        let executable = argv[0]
        let outFile = "/tmp/svpg-run-" + UUID().uuidString
        defer { unlink(outFile) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outFile, O_WRONLY | O_CREAT | O_TRUNC, 0o666)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // The child keeps none of this process's other descriptors (posix_spawn passes on all
        // those without FD_CLOEXEC): the server pg_ctl starts would otherwise hold a test's
        // sockets open for its whole life, and a peer waiting for their EOF would wait for ever.
        guard shredvault_spawn_close_from(&actions, 3) == 0 else {
            throw ClusterError("posix_spawn cannot close inherited descriptors here (glibc 2.34 or later needed)")
        }
        let cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { for p in cArgs { free(p) } }
        var pid: pid_t = 0
        let r = posix_spawn(&pid, executable, &actions, nil, cArgs, environ)
        guard r == 0 else { throw ClusterError("cannot start \(executable): \(String(cString: strerror(r)))") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let text = ((try? String(contentsOfFile: outFile, encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
        guard status == 0 else {
            throw ClusterError("\(program) \(arguments.joined(separator: " ")) failed (status \(status)): \(text)")
        }
        return text
    }
}

public struct ClusterError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

