import Foundation
import Testing
import VaultClient

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// End-to-end tests of the `shredvault` binary: they run the executable `swift build
// --build-tests` leaves in .build/debug, as a user or a script would, and check exact
// output, exit codes, file modes and the daemon's log. Every process runs under a
// deadline, so a hung daemon fails the test instead of hanging CI.

// MARK: - Running the binary

/// What a finished run of the binary left behind.
private struct CLIResult {
    var status: Int32
    /// Whether it exited (rather than died of a signal or was killed at the deadline).
    var exited: Bool
    var stdout: String
    var stderr: String
}

private enum CLIHarness {
    /// The `shredvault` binary under test (see `shredvaultTestBinary`).
    static let binary: String = shredvaultTestBinary

    /// A fresh directory under /tmp with a short name (socket paths must stay under 108 bytes), mode 0700.
    static func shortTemporaryDirectory() throws -> String {
        var template = Array("/tmp/sv-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw CLITestError("mkdtemp failed: \(String(cString: strerror(errno)))")
        }
        return String(cString: made)
    }

    static func remove(_ path: String) {
        try? FileManager.default.removeItem(atPath: path)
    }

    /// The environment for a child: ours without any SHREDVAULT_ setting, plus `extra`.
    static func environment(_ extra: [String: String]) -> [String: String] {
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("SHREDVAULT_") }
        env.merge(extra) { _, new in new }
        return env
    }

    /// Starts the binary with stdout and stderr going to files in `directory`.
    static func start(_ arguments: [String], in directory: String, name: String, environment extra: [String: String] = [:],
                      stdin: String? = nil) throws -> (Process, stdout: String, stderr: String) {
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw CLITestError("\(binary) is missing: run `swift build --build-tests` first")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        process.environment = environment(extra)
        let out = "\(directory)/\(name).stdout", err = "\(directory)/\(name).stderr"
        try write(out, "")
        try write(err, "")
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: err))
        if let stdin {
            let path = "\(directory)/\(name).stdin"
            try write(path, stdin)
            process.standardInput = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
        } else {
            process.standardInput = FileHandle.nullDevice
        }
        try process.run()
        return (process, out, err)
    }

    /// Waits for `process` until `deadline` seconds; kills it (SIGKILL) past the deadline.
    @discardableResult
    static func wait(_ process: Process, seconds deadline: Double) -> Bool {
        let end = Date().addingTimeInterval(deadline)
        while process.isRunning && Date() < end { usleep(20_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            return false
        }
        process.waitUntilExit()
        return true
    }

    /// Runs the binary to completion (30 s at most).
    static func run(_ arguments: [String], in directory: String, environment: [String: String] = [:],
                    stdin: String? = nil, seconds: Double = 30) throws -> CLIResult {
        let name = "run-\(UUID().uuidString.prefix(8))"
        let (process, out, err) = try start(arguments, in: directory, name: name, environment: environment, stdin: stdin)
        let finished = wait(process, seconds: seconds)
        return CLIResult(status: process.terminationStatus,
                         exited: finished && process.terminationReason == .exit,
                         stdout: (try? String(contentsOfFile: out, encoding: .utf8)) ?? "",
                         stderr: (try? String(contentsOfFile: err, encoding: .utf8)) ?? "")
    }

    /// Writes a file with `mode`, failing the test if it cannot.
    static func write(_ path: String, _ contents: String, mode: Int = 0o600) throws {
        guard FileManager.default.createFile(atPath: path, contents: Data(contents.utf8),
                                             attributes: [.posixPermissions: mode]) else {
            throw CLITestError("cannot write \(path)")
        }
    }

    static func mode(_ path: String) -> mode_t? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return st.st_mode & 0o777
    }

    static func isSocket(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFSOCK
    }

    /// The token in `init`'s one line of output.
    static func operatorToken(fromInit stdout: String) -> String? {
        let line = stdout.trimmingCharacters(in: .newlines)
        let prefix = #"{"operator_token": ""#, suffix = #""}"#
        guard line.hasPrefix(prefix), line.hasSuffix(suffix) else { return nil }
        return String(line.dropFirst(prefix.count).dropLast(suffix.count))
    }
}

private struct CLITestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A vault made with `shredvault init` in a short temporary directory.
private final class CLIVault {
    let directory: String
    let operatorToken: String
    var data: String { directory + "/data" }
    var keyFile: String { directory + "/keys/master.key" }
    var socket: String { directory + "/s.sock" }
    var operatorTokenFile: String { directory + "/operator.token" }

    init(initArguments: [String] = []) throws {
        directory = try CLIHarness.shortTemporaryDirectory()
        let result = try CLIHarness.run(["init", "--data-dir", directory + "/data", "--key-file", directory + "/keys/master.key"]
                                        + initArguments, in: directory)
        guard result.exited, result.status == 0, let token = CLIHarness.operatorToken(fromInit: result.stdout) else {
            CLIHarness.remove(directory)
            throw CLITestError("init failed (\(result.status)): \(result.stderr)")
        }
        operatorToken = token
        do { try CLIHarness.write(directory + "/operator.token", token + "\n") } catch {
            CLIHarness.remove(directory)
            throw error
        }
    }

    deinit { CLIHarness.remove(directory) }

    func cli(_ arguments: [String], token tokenFile: String? = nil, stdin: String? = nil) throws -> CLIResult {
        var args = arguments + ["--socket", socket]
        if let tokenFile { args += ["--token-file", tokenFile] }
        return try CLIHarness.run(args, in: directory, stdin: stdin)
    }
}

/// `shredvault serve` on a `CLIVault`, killed when released if it is still running.
private final class CLIDaemon {
    let process: Process
    let logFile: String

    init(_ vault: CLIVault, arguments: [String] = [], data: String? = nil, keyFile: String? = nil) throws {
        (process, _, logFile) = try CLIHarness.start(
            ["serve", "--data-dir", data ?? vault.data, "--key-file", keyFile ?? vault.keyFile, "--socket", vault.socket] + arguments,
            in: vault.directory, name: "serve-\(UUID().uuidString.prefix(8))")
        let end = Date().addingTimeInterval(30)
        while !CLIHarness.isSocket(vault.socket) {
            guard process.isRunning else { throw CLITestError("serve exited early: \(log)") }
            guard Date() < end else { throw CLITestError("serve did not create its socket within 30 s: \(log)") }
            usleep(20_000)
        }
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    var log: String { (try? String(contentsOfFile: logFile, encoding: .utf8)) ?? "" }

    /// Sends SIGTERM and waits (20 s at most); true when the daemon exited 0 by itself.
    func terminate() -> Bool {
        kill(process.processIdentifier, SIGTERM)
        let finished = CLIHarness.wait(process, seconds: 20)
        return finished && process.terminationReason == .exit && process.terminationStatus == 0
    }
}

/// Everything a session through the daemon produced: what the log must not contain.
private struct CLISessionSecrets {
    var tokens: [String]
    var subjects: [String]
    var payloadMarkers: [String]
}

/// A whole working session: tenant, tokens, a record written, read, its subject erased, the
/// read refused, the audit chain verified, then SIGTERM. Checks every step as it goes.
private func runSession(_ vault: CLIVault, daemon: CLIDaemon) throws -> CLISessionSecrets {
    let op = vault.operatorTokenFile
    let created = try vault.cli(["tenant", "create", "acme"], token: op)
    #expect(created.status == 0, "tenant create: \(created.stderr)")
    #expect(created.stdout == "created tenant acme\n")

    let agentFile = vault.directory + "/agent.token", adminFile = vault.directory + "/admin.token"
    let agent = try vault.cli(["token", "issue", "--tenant", "acme", "--role", "agent", "--name", "desk 1",
                               "--output", agentFile], token: op)
    #expect(agent.status == 0, "token issue: \(agent.stderr)")
    #expect(CLIHarness.mode(agentFile) == 0o600)
    let admin = try vault.cli(["token", "issue", "--tenant", "acme", "--role", "admin"], token: op)
    #expect(admin.status == 64, "a missing --name is a usage error (EX_USAGE)")
    let adminIssued = try vault.cli(["token", "issue", "--tenant", "acme", "--role", "admin", "--name", "dpo"], token: op)
    #expect(adminIssued.status == 0, "token issue: \(adminIssued.stderr)")
    // stdout is the token alone, so `> file` stores it.
    #expect(adminIssued.stdout.hasPrefix("svt_") && adminIssued.stdout.hasSuffix("\n")
            && adminIssued.stdout.split(separator: "\n").count == 1)
    try CLIHarness.write(adminFile, adminIssued.stdout)

    let subject = "cust-\(UUID().uuidString.prefix(8))"
    let marker = "invoice-\(UUID().uuidString.prefix(8))"
    let subjectFile = vault.directory + "/subject"
    try CLIHarness.write(subjectFile, subject + "\n")
    let dataFile = vault.directory + "/data.json"
    try CLIHarness.write(dataFile, #"{"note": "called about \#(marker)"}"#)

    let put = try vault.cli(["put", "--category", "personal", "--channel", "phone", "--subject-file", subjectFile,
                             "--data-file", dataFile, "--json"], token: agentFile)
    #expect(put.status == 0, "put: \(put.stderr)")
    let id = String(try #require(put.stdout.firstMatch(of: /"id":"([0-9A-Z]{26})"/)?.1))

    let got = try vault.cli(["get", id], token: agentFile)
    #expect(got.status == 0, "get: \(got.stderr)")
    #expect(got.stdout.contains("id: \(id)"))
    #expect(got.stdout.contains("subject: \(subject)"))
    #expect(got.stdout.contains(#""note": "called about \#(marker)""#))

    let erased = try vault.cli(["erase", "--subject-file", subjectFile, "--reference", "ticket-42"], token: adminFile)
    #expect(erased.status == 0, "erase: \(erased.stderr)")
    #expect(erased.stdout.hasPrefix("erased 1 record(s), subject tag "))

    let gone = try vault.cli(["get", id], token: agentFile)
    #expect(gone.exited && gone.status == 1)
    #expect(gone.stdout.isEmpty)
    #expect(gone.stderr == "shredvault: 404 Not Found: no such record\n")

    let verified = try vault.cli(["audit", "verify"], token: op)
    #expect(verified.status == 0, "audit verify: \(verified.stderr)")
    #expect(verified.stdout.hasPrefix("audit chain intact: "))

    #expect(daemon.terminate(), "the daemon did not exit 0 on SIGTERM: \(daemon.log)")
    #expect(!CLIHarness.isSocket(vault.socket) && !FileManager.default.fileExists(atPath: vault.socket),
            "the daemon left its socket behind")

    let tokens = [vault.operatorToken, adminIssued.stdout.trimmingCharacters(in: .newlines),
                  (try? String(contentsOfFile: agentFile, encoding: .utf8))?.trimmingCharacters(in: .newlines) ?? ""]
    return CLISessionSecrets(tokens: tokens.filter { !$0.isEmpty }, subjects: [subject], payloadMarkers: [marker])
}

// MARK: - Tests

@Suite("shredvault binary, end to end")
struct CLITests {
    @Test("init prints one JSON line with an operator token and creates private files")
    func initCreatesVault() throws {
        let dir = try CLIHarness.shortTemporaryDirectory()
        defer { CLIHarness.remove(dir) }
        let args = ["init", "--data-dir", dir + "/data", "--key-file", dir + "/keys/master.key"]
        let result = try CLIHarness.run(args, in: dir)
        #expect(result.exited && result.status == 0, "init: \(result.stderr)")
        #expect(result.stdout.split(separator: "\n", omittingEmptySubsequences: false).count == 2)  // one line + final newline
        let token = try #require(CLIHarness.operatorToken(fromInit: result.stdout))
        #expect(token.wholeMatch(of: /svt_[A-Za-z0-9_-]{43}/) != nil)

        #expect(CLIHarness.mode(dir + "/keys") == 0o700, "the key file's missing parent is created 0700")
        #expect(CLIHarness.mode(dir + "/keys/master.key") == 0o600)
        #expect(CLIHarness.mode(dir + "/data") == 0o700)
        for file in ["keystore/data.mdb", "records/data.mdb"] {
            #expect(CLIHarness.mode(dir + "/data/" + file) == 0o600, "\(file)")
        }

        // A second init refuses and leaves the key alone.
        let key = try Data(contentsOf: URL(fileURLWithPath: dir + "/keys/master.key"))
        let again = try CLIHarness.run(args, in: dir)
        #expect(again.exited && again.status == 1)
        #expect(again.stdout.isEmpty)
        #expect(again.stderr.hasPrefix("shredvault: ") && again.stderr.contains("refusing to overwrite"))
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir + "/keys/master.key")) == key)
    }

    @Test("serve refuses a key file readable by others, naming chmod")
    func serveRefusesOpenKeyFile() throws {
        let vault = try CLIVault()
        #expect(chmod(vault.keyFile, 0o644) == 0)
        let result = try CLIHarness.run(["serve", "--data-dir", vault.data, "--key-file", vault.keyFile,
                                         "--socket", vault.socket], in: vault.directory, seconds: 20)
        #expect(result.exited, "serve did not exit by itself")
        #expect(result.status == 1)
        #expect(result.stderr.hasPrefix("shredvault: "))
        #expect(result.stderr.contains("chmod 600"))
        #expect(!CLIHarness.isSocket(vault.socket))
    }

    @Test("serve refuses a world-writable data directory and a directory another daemon holds")
    func serveRefusals() throws {
        let vault = try CLIVault()
        let serve = ["serve", "--data-dir", vault.data, "--key-file", vault.keyFile]

        #expect(chmod(vault.data, 0o777) == 0)
        let open = try CLIHarness.run(serve + ["--socket", vault.socket], in: vault.directory, seconds: 20)
        #expect(open.exited && open.status == 1)
        #expect(open.stderr.hasPrefix("shredvault: ") && open.stderr.contains("world-writable"))
        #expect(chmod(vault.data, 0o700) == 0)

        let daemon = try CLIDaemon(vault)
        let second = try CLIHarness.run(serve + ["--socket", vault.directory + "/t.sock"], in: vault.directory, seconds: 20)
        #expect(second.exited && second.status == 1)
        #expect(second.stderr.hasPrefix("shredvault: ") && second.stderr.contains("in use"))
        #expect(CLIHarness.isSocket(vault.socket), "the first daemon keeps serving")
        #expect(daemon.terminate())
    }

    @Test("a session through the daemon: tenant, tokens, put, get, erase, 404, audit verify, SIGTERM")
    func session() throws {
        let vault = try CLIVault()
        let daemon = try CLIDaemon(vault)
        _ = try runSession(vault, daemon: daemon)
        #expect(daemon.log.contains("listening"), "the daemon logs a line when listening")
        #expect(daemon.log.contains(vault.socket))
    }

    @Test("no token, subject or record data reaches the daemon's log")
    func logHygiene() throws {
        let vault = try CLIVault()
        let daemon = try CLIDaemon(vault)
        let secrets = try runSession(vault, daemon: daemon)
        let log = daemon.log
        #expect(!log.isEmpty)
        #expect(secrets.tokens.count == 3)
        for token in secrets.tokens {
            #expect(!log.contains(token), "a token appears in the daemon's log")
            #expect(!log.contains(String(token.dropFirst(4))), "a token's secret part appears in the daemon's log")
        }
        for subject in secrets.subjects { #expect(!log.contains(subject), "a subject appears in the daemon's log") }
        for marker in secrets.payloadMarkers { #expect(!log.contains(marker), "record data appears in the daemon's log") }
    }

    @Test("init --bucket-width records the width: serve uses it without the flag and refuses another")
    func bucketWidth() throws {
        let vault = try CLIVault(initArguments: ["--bucket-width", "PT1S"])
        let serve = ["serve", "--data-dir", vault.data, "--key-file", vault.keyFile, "--socket", vault.socket]
        for other in ["P1D", "PT2S"] {
            let refused = try CLIHarness.run(serve + ["--bucket-width", other], in: vault.directory, seconds: 20)
            #expect(refused.exited && refused.status == 1)
            #expect(refused.stderr.hasPrefix("shredvault: ") && refused.stderr.contains("expiry buckets are PT1S wide")
                    && refused.stderr.contains(other) && refused.stderr.contains("would move every expiry"),
                    "\(refused.stderr)")
            #expect(!CLIHarness.isSocket(vault.socket))
        }
        let bad = try CLIHarness.run(["init", "--data-dir", vault.directory + "/d2", "--key-file", vault.directory + "/k2/master.key",
                                      "--bucket-width", "PT0S"], in: vault.directory)
        #expect(bad.status == 64 && bad.stderr.contains("--bucket-width"), "\(bad.status) \(bad.stderr)")

        // No flag: the vault's PT1S. A record kept two seconds has its bucket key destroyed
        // by a sweep three seconds later; one kept 92 days does not.
        let daemon = try CLIDaemon(vault)
        let op = vault.operatorTokenFile
        #expect(try vault.cli(["tenant", "create", "acme"], token: op).status == 0)
        let agentFile = vault.directory + "/agent.token"
        let agent = try vault.cli(["token", "issue", "--tenant", "acme", "--role", "agent", "--name", "desk",
                                   "--output", agentFile], token: op)
        #expect(agent.status == 0, "\(agent.stderr)")
        let subjectFile = vault.directory + "/subject", dataFile = vault.directory + "/data.json"
        try CLIHarness.write(subjectFile, "cust-1\n")
        try CLIHarness.write(dataFile, #"{"note": "n"}"#)
        let record = ["put", "--category", "personal", "--channel", "phone", "--subject-file", subjectFile,
                      "--data-file", dataFile, "--json"]
        let short = try vault.cli(record + ["--retention", "PT2S"], token: agentFile)
        #expect(short.status == 0, "\(short.stderr)")
        let long = try vault.cli(record, token: agentFile)
        let longID = String(try #require(long.stdout.firstMatch(of: /"id":"([0-9A-Z]{26})"/)?.1))
        usleep(3_200_000)
        let swept = try vault.cli(["sweep", "--json"], token: op)
        #expect(swept.status == 0, "\(swept.stderr)")
        #expect(swept.stdout.contains(#""buckets_destroyed":1"#), "\(swept.stdout)")
        #expect(try vault.cli(["get", longID], token: agentFile).status == 0)
        #expect(daemon.log.contains("bucket_width=PT1S"), "\(daemon.log)")
        #expect(daemon.terminate())
    }

    @Test("client commands fail in the documented format")
    func clientFailures() throws {
        let vault = try CLIVault()
        // No daemon yet: a connect failure, exit 1.
        let unreachable = try vault.cli(["stats"], token: vault.operatorTokenFile)
        #expect(unreachable.exited && unreachable.status == 1)
        #expect(unreachable.stderr.hasPrefix("shredvault: cannot reach the daemon"))

        // No token at all.
        let noToken = try vault.cli(["stats"])
        #expect(noToken.status == 1)
        #expect(noToken.stderr == "shredvault: no token: set SHREDVAULT_TOKEN or pass --token-file FILE\n")

        let daemon = try CLIDaemon(vault)
        // The token from the environment works; a wrong one is a 401 in problem form.
        let viaEnv = try CLIHarness.run(["stats", "--socket", vault.socket], in: vault.directory,
                                        environment: ["SHREDVAULT_TOKEN": vault.operatorToken])
        #expect(viaEnv.status == 0, "stats: \(viaEnv.stderr)")
        #expect(viaEnv.stdout.contains("tenants: 0"))
        let wrong = try CLIHarness.run(["stats", "--socket", vault.socket], in: vault.directory,
                                       environment: ["SHREDVAULT_TOKEN": "svt_wrong"])
        #expect(wrong.status == 1)
        #expect(wrong.stderr == "shredvault: 401 Unauthorized: a valid bearer token is required\n")

        // --json prints the daemon's answer as received.
        let json = try vault.cli(["tenant", "list", "--json"], token: vault.operatorTokenFile)
        #expect(json.stdout == "{\"tenants\":[]}\n")
        #expect(daemon.terminate())
    }

    @Test("serve --journal, snapshot, loss of the data disk, restore: everything acknowledged back, nothing erased")
    func journalRestoreAfterMachineLoss() async throws {
        let vault = try CLIVault()
        let journal = vault.directory + "/journal"
        #expect(mkdir(journal, 0o700) == 0)
        let op = vault.operatorTokenFile
        var daemon: CLIDaemon? = try CLIDaemon(vault, arguments: ["--journal", journal])
        #expect(try vault.cli(["tenant", "create", "acme"], token: op).status == 0)
        let agentFile = vault.directory + "/agent.token", adminFile = vault.directory + "/admin.token"
        #expect(try vault.cli(["token", "issue", "--tenant", "acme", "--role", "agent", "--name", "desk",
                               "--output", agentFile], token: op).status == 0)
        #expect(try vault.cli(["token", "issue", "--tenant", "acme", "--role", "admin", "--name", "dpo",
                               "--output", adminFile], token: op).status == 0)

        func put(_ subject: String) throws -> String {
            let subjectFile = vault.directory + "/subject-\(subject)", dataFile = vault.directory + "/data-\(subject).json"
            try CLIHarness.write(subjectFile, subject + "\n")
            try CLIHarness.write(dataFile, #"{"note": "about \#(subject)"}"#)
            let r = try vault.cli(["put", "--category", "personal", "--channel", "phone", "--subject-file", subjectFile,
                                   "--data-file", dataFile, "--json"], token: agentFile)
            #expect(r.status == 0, "put: \(r.stderr)")
            return String(try #require(r.stdout.firstMatch(of: /"id":"([0-9A-Z]{26})"/)?.1))
        }
        func erase(_ subject: String) throws {
            let r = try vault.cli(["erase", "--subject-file", vault.directory + "/subject-\(subject)", "--reference", "rtbf"],
                                  token: adminFile)
            #expect(r.status == 0 && r.stdout.hasPrefix("erased 1 record(s)"), "erase: \(r.stderr)")
        }

        // Before the snapshot: one kept, one erased. After it (change sets only): one kept, one erased.
        let keptEarly = try put("kept-early"), erasedEarly = try put("erased-early")
        try erase("erased-early")
        let snap = try vault.cli(["snapshot"], token: op)
        #expect(snap.status == 0, "snapshot: \(snap.stderr)")
        let keptLate = try put("kept-late"), erasedLate = try put("erased-late")
        try erase("erased-late")

        let client = VaultHTTPClient(endpoint: .unixSocket(path: vault.socket), token: Array(vault.operatorToken.utf8), timeout: 30)
        let report = try await client.send("GET", "/v1/admin/journal")
        #expect(report.status == 200, "\(report.text)")
        let o = try report.object()
        let snapshots = try #require(o["snapshots"] as? [[String: Any]])
        #expect(snapshots.count == 1 && (snapshots[0]["epoch"] as? Int) == 1)
        #expect((o["sequence"] as? Int ?? 0) > (snapshots[0]["sequence"] as? Int ?? .max))

        // The machine is lost: the daemon dies, the data directory and keys/ with it. What is left is
        // the journal (another disk) and the copy of the master key kept off the machine.
        kill(daemon!.process.processIdentifier, SIGKILL)
        daemon!.process.waitUntilExit()
        daemon = nil
        unlink(vault.socket)  // left by the killed daemon: the next one's start is told by a new socket
        let keptKey = vault.directory + "/kept/master.key"
        #expect(mkdir(vault.directory + "/kept", 0o700) == 0)
        try FileManager.default.copyItem(atPath: vault.keyFile, toPath: keptKey)
        try FileManager.default.removeItem(atPath: vault.data)
        try FileManager.default.removeItem(atPath: vault.directory + "/keys")

        // Refusals first: a journal that is not this vault's, and nothing written.
        let stranger = vault.directory + "/stranger"
        #expect(mkdir(stranger, 0o700) == 0)
        let refused = try CLIHarness.run(["restore", "--journal", stranger, "--data-dir", vault.data, "--key-file", keptKey],
                                         in: vault.directory, seconds: 60)
        #expect(refused.exited && refused.status == 1)
        #expect(refused.stderr.contains("shredvault restore: "), "\(refused.stderr)")
        #expect(!FileManager.default.fileExists(atPath: vault.data), "a refused restore wrote the data directory")

        let restored = try CLIHarness.run(["restore", "--journal", journal, "--data-dir", vault.data, "--key-file", keptKey],
                                          in: vault.directory, seconds: 120)
        #expect(restored.exited && restored.status == 0, "restore: \(restored.stderr)")
        let summary = try #require(try JSONSerialization.jsonObject(with: Data(restored.stdout.utf8)) as? [String: Any])
        #expect((summary["snapshot_epoch"] as? Int) == 1)
        #expect((summary["change_sets_replayed"] as? Int ?? 0) >= 4, "\(summary)")
        #expect((summary["master_key_generation"] as? Int) == 2, "restore ends with a rotation")
        #expect(CLIHarness.mode(keptKey) == 0o600)

        // Restoring again over the restored vault is refused and changes nothing.
        let again = try CLIHarness.run(["restore", "--journal", journal, "--data-dir", vault.data, "--key-file", keptKey],
                                       in: vault.directory, seconds: 60)
        #expect(again.exited && again.status == 1, "a restore over an existing vault: \(again.stdout)")

        daemon = try CLIDaemon(vault, arguments: ["--journal", journal], keyFile: keptKey)
        for id in [keptEarly, keptLate] {
            let got = try vault.cli(["get", id], token: agentFile)
            #expect(got.status == 0, "an acknowledged record did not come back: \(got.stderr)")
        }
        for id in [erasedEarly, erasedLate] {
            let gone = try vault.cli(["get", id], token: agentFile)
            #expect(gone.status == 1 && gone.stderr == "shredvault: 404 Not Found: no such record\n",
                    "an erased record came back: \(gone.stdout)")
        }
        let verified = try vault.cli(["audit", "verify"], token: op)
        #expect(verified.status == 0, "audit verify: \(verified.stderr)")
        #expect(daemon!.terminate(), "the restored daemon did not exit 0: \(daemon!.log)")
    }
}
