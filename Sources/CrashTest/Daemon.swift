import CVaultSystem
import Foundation
import VaultClient
#if canImport(Glibc)
import Glibc
#endif

struct DaemonError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// One vault directory (`data/`, `keys/master.key`) and the real `shredvault` binary serving it:
/// `init` once, then `serve` started, killed with SIGKILL and started again on the same files.
///
/// Processes are started with posix_spawn (no shell; nothing secret on any command line): the
/// daemon's stdout and stderr go to a log file in the vault directory (`serve-N.log`, one per
/// start), the operator token of `init` to a 0600 file that is read and removed.
final class Daemon: @unchecked Sendable {
    // unchecked: used from the driver thread only; workers only read the immutable paths.
    let binary: String
    /// The vault's own directory (its first machine's files, and its logs).
    let home: String
    /// The machine serving it now: `home` until a standby is promoted, then that standby's.
    private(set) var directory: String
    let bucketWidth: String
    /// Serve with a journal in `journal/` (another disk, in production): what a lost machine is
    /// restored from.
    let journaled: Bool
    /// Or with a PostgreSQL journal, followed by a standby on another "machine" (directory) that
    /// is promoted when the writer's machine is lost.
    let journalURL: String?
    var journalDirectory: String { home + "/journal" }
    var dataDirectory: String { directory + "/data" }
    var keyFile: String { directory + "/keys/master.key" }
    /// One socket path for whichever machine writes (the workers and checks keep their clients).
    var socket: String { journalURL == nil ? dataDirectory + "/shredvault.sock" : home + "/s.sock" }
    /// The standby's machine and process, when one runs.
    private(set) var standbyDirectory: String?
    private(set) var standbyPID: pid_t = 0
    private var machines = 0
    var standbySocket: String? { standbyDirectory.map { $0 + "/standby.sock" } }

    private(set) var pid: pid_t = 0
    private(set) var starts = 0
    /// Logs of this vault's daemon starts, oldest first.
    private(set) var logs: [String] = []

    init(binary: String, directory: String, bucketWidth: String, journaled: Bool = false, journalURL: String? = nil) {
        self.binary = binary
        self.home = directory
        self.directory = directory
        self.bucketWidth = bucketWidth
        self.journaled = journaled
        self.journalURL = journalURL
    }

    /// The journal options of `serve`.
    private var journalArguments: [String] {
        if let journalURL { return ["--journal", journalURL, "--journal-lease", "PT2S", "--socket", socket] }
        return journaled ? ["--journal", journalDirectory] : []
    }

    var isRunning: Bool { pid > 0 }

    /// `shredvault init`: creates the vault and returns the operator token it printed once.
    ///
    /// The bucket width is recorded by `init --bucket-width` (and `serve --bucket-width` only checks
    /// it); a binary whose `init` does not know the option takes it at `serve`, so init runs again
    /// without it.
    func initialise() throws -> [UInt8] {
        let tokenFile = directory + "/operator.json"
        let log = directory + "/init.log"
        let arguments = ["init", "--data-dir", dataDirectory, "--key-file", keyFile]
        var status = wait(try spawn(arguments + ["--bucket-width", bucketWidth], stdout: tokenFile, stderr: log))
        if status != 0 && tail(of: log, lines: 5).contains("Unknown option '--bucket-width'") {
            unlink(tokenFile)
            status = wait(try spawn(arguments, stdout: tokenFile, stderr: log))
        }
        defer { unlink(tokenFile) }
        guard status == 0 else {
            throw DaemonError("shredvault init exited with status \(status): \(tail(of: log, lines: 10))")
        }
        guard let data = FileManager.default.contents(atPath: tokenFile),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let token = object["operator_token"] as? String else {
            throw DaemonError("shredvault init printed no operator token")
        }
        return Array(token.utf8)
    }

    /// Starts `shredvault serve` and waits until it answers `GET /healthz`.
    func start(timeout: Double = 60) throws {
        try launch()
        try waitReady(timeout: timeout)
    }

    /// Starts `shredvault serve` without waiting for it.
    func launch() throws {
        precondition(pid == 0, "the daemon is already running")
        starts += 1
        let log = directory + "/serve-\(starts).log"
        logs.append(log)
        // Small rotation chunks: a kill during a rotation lands between or inside its many
        // bounded transactions, not in one big one.
        if journaled, mkdir(journalDirectory, 0o700) != 0, errno != EEXIST {
            throw DaemonError("mkdir \(journalDirectory): \(String(cString: strerror(errno)))")
        }
        pid = try spawn(["serve", "--data-dir", dataDirectory, "--key-file", keyFile, "--bucket-width", bucketWidth,
                         "--rotation-chunk", "300"] + journalArguments,
                        stdout: log, stderr: log)
    }

    /// Starts a standby on a new machine (directory) unless one runs: an empty data directory
    /// and copies of the writer's current key file and audit key, following the PostgreSQL journal.
    func startStandby() throws {
        guard let journalURL, standbyPID == 0 else { return }
        machines += 1
        let machine = home + "/m\(machines)"
        try? FileManager.default.removeItem(atPath: machine)
        guard mkdir(machine, 0o700) == 0, mkdir(machine + "/keys", 0o700) == 0 else { throw DaemonError("mkdir \(machine)") }
        guard let key = FileManager.default.contents(atPath: keyFile),
              FileManager.default.createFile(atPath: machine + "/keys/master.key", contents: key, attributes: [.posixPermissions: 0o600]) else {
            throw DaemonError("cannot copy the key file to the standby")
        }
        guard let auditKey = FileManager.default.contents(atPath: directory + "/keys/audit.key"),
              FileManager.default.createFile(atPath: machine + "/keys/audit.key", contents: auditKey,
                                             attributes: [.posixPermissions: 0o600]) else {
            throw DaemonError("cannot copy the audit key to the standby")
        }
        let log = machine + "/standby.log"
        logs.append(log)
        standbyDirectory = machine
        standbyPID = try spawn(["serve", "--standby", "--data-dir", machine + "/data", "--key-file", machine + "/keys/master.key",
                                "--bucket-width", bucketWidth, "--rotation-chunk", "300", "--journal", journalURL,
                                "--journal-lease", "PT2S", "--socket", machine + "/standby.sock"],
                               stdout: log, stderr: log)
        let client = VaultHTTPClient(endpoint: .unixSocket(path: machine + "/standby.sock"), token: nil, timeout: 2)
        let deadline = monotonicSeconds() + 60
        while monotonicSeconds() < deadline {
            var status: Int32 = 0
            if waitpid(standbyPID, &status, WNOHANG) == standbyPID {
                standbyPID = 0
                throw DaemonError("the standby exited during start-up (\(describe(status))): " + tail(of: log, lines: 3))
            }
            if client.call("GET", "/healthz").status == 200 { return }
            usleep(20_000)
        }
        throw DaemonError("the standby did not answer within 60 s: " + tail(of: log, lines: 3))
    }

    /// The writer's machine is lost while its daemon is down (data directory and keys gone): the
    /// standby is promoted (refused while the dead writer's lease runs, then the lease's next
    /// term), stopped, and becomes the machine this vault is served from; the next `start` serves
    /// its files as the writer. Returns what happened, for the round's line.
    func loseMachineAndPromote(operatorToken: [UInt8]) throws -> String {
        precondition(pid == 0, "the machine is lost only with the daemon down")
        guard let machine = standbyDirectory, let standbySocket, standbyPID > 0 else {
            throw DaemonError("no standby runs to promote")
        }
        try FileManager.default.removeItem(atPath: dataDirectory)
        try FileManager.default.removeItem(atPath: directory + "/keys")
        let op = VaultHTTPClient(endpoint: .unixSocket(path: standbySocket), token: operatorToken, timeout: 120)
        let started = monotonicSeconds()
        var refused = 0
        while true {
            let r = op.call("POST", "/v1/admin/promote")
            if r.status == 200 { break }
            guard r.status == 409, monotonicSeconds() - started < 60 else {
                throw DaemonError("promoting the standby: \(r.summary)")
            }
            refused += 1
            usleep(200_000)
        }
        let took = monotonicSeconds() - started
        // The promoted process serves on the standby's socket: stop it, and serve its files
        // from now on as the writer, on the vault's socket.
        kill(standbyPID, SIGTERM)
        let deadline = monotonicSeconds() + 30
        while monotonicSeconds() < deadline, waitpid(standbyPID, nil, WNOHANG) != standbyPID { usleep(20_000) }
        if waitpid(standbyPID, nil, WNOHANG) == 0 { kill(standbyPID, SIGKILL); _ = wait(standbyPID) }
        standbyPID = 0
        standbyDirectory = nil
        directory = machine
        return "promoted the standby after \(String(format: "%.1f", took)) s (\(refused) refusals while the lease ran)"
    }

    /// Stops the standby, if one runs.
    func stopStandby() {
        guard standbyPID > 0 else { return }
        kill(standbyPID, SIGKILL)
        _ = wait(standbyPID)
        standbyPID = 0
    }

    /// The machine is lost while the daemon is down: the data directory and the key file go; the
    /// journal and `kept` (the copy of the master key kept elsewhere, taken at the round's start)
    /// remain. `shredvault restore` rebuilds the data directory from the journal with the current
    /// key file's copy, or, if the kill fell between a rotation's new key and its snapshot (the
    /// restore then names the generation it needs), with `kept` and the current copy as the next
    /// generation's key (`--next-key-file`). Returns restore's summary line.
    func loseMachineAndRestore() throws -> String {
        let kept = keptKeyFile
        precondition(pid == 0, "the machine is lost only with the daemon down")
        let current = directory + "/current.key"
        unlink(current)
        if let key = FileManager.default.contents(atPath: keyFile) {
            guard FileManager.default.createFile(atPath: current, contents: key, attributes: [.posixPermissions: 0o600]) else {
                throw DaemonError("cannot copy the key file")
            }
        }
        try FileManager.default.removeItem(atPath: dataDirectory)
        try FileManager.default.removeItem(atPath: directory + "/keys")
        guard mkdir(directory + "/keys", 0o700) == 0 else { throw DaemonError("mkdir keys") }
        var tried: [String] = []
        // The kept copy is of the round's start; a rotation since may have switched the journal to
        // the generation the current copy holds, whose key the journal carries to standbys only.
        for (candidate, next) in [(current, nil), (kept, current)] where access(candidate, R_OK) == 0 {
            unlink(keyFile)
            guard link(candidate, keyFile) == 0 || (try? FileManager.default.copyItem(atPath: candidate, toPath: keyFile)) != nil else {
                throw DaemonError("cannot put back the key file")
            }
            chmod(keyFile, 0o600)
            let log = directory + "/restore-\(starts).log", out = directory + "/restore-\(starts).out"
            unlink(out)
            let nextArguments = next.flatMap { access($0, R_OK) == 0 ? ["--next-key-file", $0] : nil } ?? []
            let status = wait(try spawn(["restore", "--journal", journalDirectory, "--data-dir", dataDirectory, "--key-file", keyFile]
                                            + nextArguments, stdout: out, stderr: log))
            if status == 0 {
                unlink(current)
                return tail(of: out, lines: 2).trimmingCharacters(in: .whitespacesAndNewlines)
            }
            tried.append(tail(of: log, lines: 2).trimmingCharacters(in: .whitespacesAndNewlines))
            // Only a refusal of the key's generation may be retried with the other copy; anything
            // else is a failure of the restore.
            guard tried.last!.contains("generation") else { break }
            try? FileManager.default.removeItem(atPath: dataDirectory)
        }
        throw DaemonError("shredvault restore failed: " + tried.joined(separator: " | "))
    }

    /// Waits until the launched daemon answers `GET /healthz`.
    func waitReady(timeout: Double = 60) throws {
        let client = VaultHTTPClient(endpoint: .unixSocket(path: socket), token: nil, timeout: 2)
        let deadline = monotonicSeconds() + timeout
        while monotonicSeconds() < deadline {
            var status: Int32 = 0
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid {
                pid = 0
                throw DaemonError("the daemon exited during start-up (\(describe(status))): "
                    + tail(of: logs.last ?? "", lines: 3).trimmingCharacters(in: .whitespacesAndNewlines))
            }
            if client.call("GET", "/healthz").status == 200 { return }
            usleep(20_000)
        }
        kill9()
        throw DaemonError("the daemon did not answer on \(socket) within \(Int(timeout)) s")
    }

    /// SIGKILL, then reap: the process is gone when this returns.
    func kill9() {
        guard pid > 0 else { return }
        kill(pid, SIGKILL)
        _ = wait(pid)
        pid = 0
    }

    /// SIGTERM and wait (at the end of a vault's life); SIGKILL after `timeout`.
    func stop(timeout: Double = 30) {
        guard pid > 0 else { return }
        kill(pid, SIGTERM)
        let deadline = monotonicSeconds() + timeout
        while monotonicSeconds() < deadline {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                pid = 0
                return
            }
            usleep(20_000)
        }
        kill9()
    }

    /// Files an interrupted rotation or compaction leaves (start-up finishes or undoes them).
    static let interruptedFiles = ["keys/master.key.next", "keys/master.key.next.tmp", "data/keystore.new", "data/keystore.old"]

    /// Which of ``interruptedFiles`` exist now.
    func leftovers() -> [String] {
        Self.interruptedFiles.filter { name in
            var st = stat()
            return lstat(directory + "/" + name, &st) == 0
        }
    }

    /// The last lines of each daemon log named, for a failed round's report.
    func logTails(lines: Int, last: Int = 2) -> String {
        logs.suffix(last).map { log in
            "--- \(log) (last \(lines) lines) ---\n" + tail(of: log, lines: lines)
        }.joined(separator: "\n")
    }

    /// Entries per named database of an LMDB environment (`data/keystore`, `data/records`), read
    /// with `mdb_stat -a` (lmdb-utils) beside the running daemon; nil when mdb_stat is missing.
    func entryCounts(_ environment: String) -> [String: Int]? {
        guard let tool = Self.mdbStat else { return nil }
        let out = directory + "/mdb_stat.out"
        unlink(out)
        defer { unlink(out) }
        guard let child = try? spawn(["-a", dataDirectory + "/" + environment], stdout: out, stderr: "/dev/null", executable: tool),
              wait(child) == 0, let data = FileManager.default.contents(atPath: out) else { return nil }
        var counts: [String: Int] = [:]
        var current: String?
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            if line.hasPrefix("Status of ") {
                current = String(line.dropFirst("Status of ".count))
            } else if let name = current, let r = line.range(of: "Entries: ") {
                counts[name] = Int(line[r.upperBound...].trimmingCharacters(in: .whitespaces))
            }
        }
        return counts
    }

    var keptKeyFile: String { directory + "/kept.key" }

    /// The copy of the master key an operator keeps off the machine, taken at a round's start.
    func keepKey() throws {
        unlink(keptKeyFile)
        guard let key = FileManager.default.contents(atPath: keyFile),
              FileManager.default.createFile(atPath: keptKeyFile, contents: key, attributes: [.posixPermissions: 0o600]) else {
            throw DaemonError("cannot keep a copy of the key file")
        }
    }

    /// Self-test of the checks: a consistent copy of both environments now (`mdb_copy`, beside
    /// the running daemon)…
    func snapshot() throws {
        guard let tool = Self.tool("mdb_copy") else { throw DaemonError("mdb_copy (lmdb-utils) is not installed") }
        for env in ["keystore", "records"] {
            let target = directory + "/snapshot-" + env
            try? FileManager.default.removeItem(atPath: target)
            guard mkdir(target, 0o700) == 0 else { throw DaemonError("mkdir \(target)") }
            let child = try spawn([dataDirectory + "/" + env, target], stdout: "/dev/null", stderr: "/dev/null", executable: tool)
            guard wait(child) == 0 else { throw DaemonError("mdb_copy of \(env) failed") }
        }
    }

    /// …put back over the live files while the daemon is down: every acknowledged change since
    /// is lost, which the checks must report.
    func rollBack() throws {
        precondition(pid == 0, "roll back only a stopped vault")
        for env in ["keystore", "records"] {
            let live = dataDirectory + "/" + env
            unlink(live + "/lock.mdb")
            guard rename(directory + "/snapshot-" + env + "/data.mdb", live + "/data.mdb") == 0 else {
                throw DaemonError("cannot roll back \(env)")
            }
            try? FileManager.default.removeItem(atPath: directory + "/snapshot-" + env)
        }
    }

    static func tool(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        return path.split(separator: ":").map { $0 + "/" + name }.first { access($0, X_OK) == 0 }
    }

    static let mdbStat: String? = tool("mdb_stat")

    // MARK: Processes

    private func spawn(_ arguments: [String], stdout: String, stderr: String, executable: String? = nil) throws -> pid_t {
        let program = executable ?? binary
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        if stderr == stdout {
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
        } else {
            posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        }
        // The daemon inherits none of the driver's other descriptors (its clients' sockets).
        _ = shredvault_spawn_close_from(&actions, 3)
        let argv: [UnsafeMutablePointer<CChar>?] = ([program] + arguments).map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        var child: pid_t = 0
        let r = posix_spawn(&child, program, &actions, nil, argv, environ)
        guard r == 0 else { throw DaemonError("cannot start \(program): \(String(cString: strerror(r)))") }
        return child
    }

    private func wait(_ child: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(child, &status, 0) < 0 && errno == EINTR {}
        return status
    }

    private func describe(_ status: Int32) -> String {
        let signal = status & 0x7F
        return signal == 0 ? "exit status \((status >> 8) & 0xFF)" : "signal \(signal)"
    }
}

/// The last `lines` lines of a text file ("" when unreadable).
func tail(of path: String, lines: Int) -> String {
    guard let data = FileManager.default.contents(atPath: path) else { return "(no log at \(path))" }
    let text = String(decoding: data.suffix(64 * 1024), as: UTF8.self)
    return text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
}
