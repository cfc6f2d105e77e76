import Foundation
import PostgresSupport
import Testing
import VaultClient
#if canImport(Glibc)
import Glibc
#endif

/// Two real daemons on one real PostgreSQL journal: a primary, and a standby that follows it
/// (`serve --standby`) and is promoted (`POST /v1/admin/promote`) once the primary's lease has
/// lapsed. The standby starts from the journal's snapshot and one copy of the primary's key file.
@Suite(.serialized) struct StandbyTests {
    /// One node: its directory, its daemon, its socket.
    final class Node: @unchecked Sendable {
        // unchecked: used by one test at a time.
        let dir: String
        var daemon: Process?
        var socket: String { dir + "/data/shredvault.sock" }
        var keyFile: String { dir + "/keys/master.key" }

        init(_ name: String) throws {
            dir = "/tmp/svsb-" + name + "-" + UUID().uuidString.prefix(6).lowercased()
            try FileManager.default.createDirectory(atPath: dir + "/keys", withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        }

        func serve(_ extra: [String]) throws {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: ShutdownTests.binary)
            p.arguments = ["serve", "--data-dir", dir + "/data", "--key-file", keyFile] + extra
            let log = dir + "/serve-\(UUID().uuidString.prefix(4)).log"
            FileManager.default.createFile(atPath: log, contents: nil)
            p.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
            p.standardOutput = FileHandle.nullDevice
            try p.run()
            daemon = p
        }

        /// Waits until the daemon answers `/healthz` with `role` (nil: the writer, which names none).
        func waitUntilServing(role: String?) async throws {
            let client = VaultHTTPClient(endpoint: .unixSocket(path: socket), token: nil, timeout: 2)
            for _ in 0..<400 {
                if let r = try? await client.send("GET", "/healthz"), r.status == 200,
                   (try? r.object()["role"] as? String) == role { return }
                guard daemon?.isRunning == true else { throw ClusterError("the daemon in \(dir) exited") }
                try await Task.sleep(for: .milliseconds(50))
            }
            throw ClusterError("the daemon in \(dir) did not serve as \(role ?? "writer") in 20 s")
        }

        func client(_ token: [UInt8]?, timeout: Double = 10) -> VaultHTTPClient {
            VaultHTTPClient(endpoint: .unixSocket(path: socket), token: token, timeout: timeout)
        }

        /// Whether any of this node's daemon logs contains `text`.
        func logsContain(_ text: String) -> Bool {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
            return names.filter { $0.hasPrefix("serve-") }.contains { name in
                ((try? String(contentsOfFile: dir + "/" + name, encoding: .utf8)) ?? "").contains(text)
            }
        }

        func kill(_ signal: Int32) { if let p = daemon, p.isRunning { Glibc.kill(p.processIdentifier, signal) } }

        func stop() {
            guard let p = daemon else { return }
            if p.isRunning {
                Glibc.kill(p.processIdentifier, SIGCONT)
                Glibc.kill(p.processIdentifier, SIGTERM)
                if !ShutdownTests.waitForExit(p, seconds: 30) { Glibc.kill(p.processIdentifier, SIGKILL) }
            }
            daemon = nil
        }

        deinit {
            stop()
            try? FileManager.default.removeItem(atPath: dir)
        }
    }

    struct Tokens {
        let op: [UInt8], agent: [UInt8], admin: [UInt8]
    }

    /// A primary on `pg` with a tenant and its tokens.
    static func primary(_ pg: PostgresCluster) async throws -> (Node, Tokens) {
        let a = try Node("a")
        let (status, output) = try ShutdownTests.run(["init", "--data-dir", a.dir + "/data", "--key-file", a.keyFile], dir: a.dir)
        try #require(status == 0)
        let op = Array(try #require((try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: String])?["operator_token"]).utf8)
        try a.serve(["--journal", pg.url, "--journal-lease", "PT2S"])
        try await a.waitUntilServing(role: nil)
        let operatorClient = a.client(op)
        #expect(try await operatorClient.send("POST", "/v1/admin/tenants", body: json(["id": "acme"])).status == 201)
        var tokens: [[UInt8]] = []
        for role in ["agent", "admin"] {
            let r = try await operatorClient.send("POST", "/v1/admin/tokens", body: json(["tenant": "acme", "role": role, "name": role]))
            tokens.append(Array((try r.object()["token"] as! String).utf8))
        }
        return (a, Tokens(op: op, agent: tokens[0], admin: tokens[1]))
    }

    /// A standby of the primary `a` on `pg`, from a copy of `a`'s key file and audit key.
    static func standby(of a: Node, _ pg: PostgresCluster) async throws -> Node {
        let b = try Node("b")
        let key = try Data(contentsOf: URL(fileURLWithPath: a.keyFile))
        #expect(FileManager.default.createFile(atPath: b.keyFile, contents: key, attributes: [.posixPermissions: 0o600]))
        // The audit signing key travels with it: a standby refuses to start without the writer's.
        try FileManager.default.copyItem(atPath: a.dir + "/keys/audit.key", toPath: b.dir + "/keys/audit.key")
        try b.serve(["--journal", pg.url, "--journal-lease", "PT2S", "--standby"])
        try await b.waitUntilServing(role: "standby")
        return b
    }

    static func write(_ client: VaultHTTPClient, _ subject: String, _ n: Int) async throws -> String? {
        let r = try await client.send("POST", "/v1/records",
                                      body: json(["subject": subject, "category": "personal", "channel": "web", "data": ["n": n]]))
        return r.status == 201 ? try r.object()["id"] as? String : nil
    }

    /// Waits until the standby has applied everything the primary committed.
    static func waitUntilLevel(_ a: Node, _ b: Node, _ tokens: Tokens) async throws {
        let primary = try await a.client(tokens.op).send("GET", "/v1/admin/journal").object()
        let target = try #require(primary["sequence"] as? Int)
        var last: [String: Any] = [:]
        for _ in 0..<200 {
            last = try await b.client(tokens.op).send("GET", "/v1/admin/journal").object()
            if let applied = last["applied"] as? Int, applied >= target { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw ClusterError("the standby did not reach change set \(target) in 10 s: \(last)")
    }

    /// Promotes `b`: refused (409, Retry-After) while the old writer's lease runs, then 200.
    static func promote(_ b: Node, _ tokens: Tokens) async throws -> Int {
        for _ in 0..<100 {
            let r = try await b.client(tokens.op, timeout: 30).send("POST", "/v1/admin/promote")
            if r.status == 200 { return try #require(try r.object()["term"] as? Int) }
            #expect(r.status == 409, "promote answered \(r.status)")
            try await Task.sleep(for: .milliseconds(200))
        }
        throw ClusterError("the standby was not promoted in 20 s")
    }

    /// `shredvault promote`: non-zero exit while the old writer's lease runs, then 0.
    static func promoteWithCLI(_ b: Node, _ tokens: Tokens) async throws {
        let tokenFile = b.dir + "/operator.token"
        FileManager.default.createFile(atPath: tokenFile, contents: Data(tokens.op), attributes: [.posixPermissions: 0o600])
        for _ in 0..<100 {
            let (status, output) = try ShutdownTests.run(["promote", "--socket", b.socket, "--token-file", tokenFile], dir: b.dir)
            if status == 0 {
                #expect(output.contains("promoted") && output.contains("term"), "promote printed: \(output)")
                return
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw ClusterError("shredvault promote did not succeed in 20 s")
    }

    @Test func aStandbyFollowsAcrossARotationAndIsPromotedAfterThePrimaryIsLost() async throws {
        let pg = try PostgresCluster()
        let (a, tokens) = try await Self.primary(pg)
        let agent = a.client(tokens.agent), admin = a.client(tokens.admin)
        var acknowledged: [(String, Int)] = []
        for n in 0..<20 { if let id = try await Self.write(agent, "s\(n % 4)", n) { acknowledged.append((id, n)) } }
        let b = try await Self.standby(of: a, pg)
        // Level: the tokens issued after the snapshot the standby started from are known there.
        try await Self.waitUntilLevel(a, b, tokens)

        // Until promoted it answers its health and its state, and nothing else.
        let bAgent = b.client(tokens.agent)
        #expect(try await bAgent.send("GET", "/v1/records/\(acknowledged[0].0)").status == 503)
        #expect(try await bAgent.send("POST", "/v1/records", body: json(["subject": "x"])).status == 503)
        #expect(try await b.client(tokens.agent).send("GET", "/v1/admin/journal").status == 403)
        #expect(try await b.client(nil).send("GET", "/v1/admin/journal").status == 401)

        // Erasures, deletions and a rotation on the primary reach the standby.
        let deleted = acknowledged.removeFirst()
        #expect(try await admin.send("DELETE", "/v1/records/\(deleted.0)").status == 204)
        #expect(try await admin.send("POST", "/v1/subjects/erase", body: json(["subject": "s1"])).status == 200)
        let erased = acknowledged.filter { $0.1 % 4 == 1 }
        acknowledged.removeAll { $0.1 % 4 == 1 }
        #expect(try await a.client(tokens.op).send("POST", "/v1/admin/rotate").status == 200)
        for n in 20..<40 { if let id = try await Self.write(agent, "s\(n % 4)", n) { acknowledged.append((id, n)) } }
        #expect(try await admin.send("POST", "/v1/subjects/erase", body: json(["subject": "s2"])).status == 200)
        let erasedLater = acknowledged.filter { $0.1 % 4 == 2 }
        acknowledged.removeAll { $0.1 % 4 == 2 }
        try await Self.waitUntilLevel(a, b, tokens)
        let level = try await b.client(tokens.op).send("GET", "/v1/admin/journal").object()
        #expect(level["role"] as? String == "standby")
        #expect(level["error"] as? String == nil, "the standby reports: \(level["error"] ?? "")")

        // The primary lists its standby (it keeps the change sets the standby has not applied).
        var listed: [[String: Any]] = []
        for _ in 0..<40 where listed.first?["applied"] as? Int != level["applied"] as? Int {
            listed = try await a.client(tokens.op).send("GET", "/v1/admin/journal").object()["standbys"] as? [[String: Any]] ?? []
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(listed.count == 1 && listed.first?["applied"] as? Int == level["applied"] as? Int, "standbys: \(listed)")

        // The primary's machine is lost: the process, its data and its keys.
        a.kill(SIGKILL)
        _ = ShutdownTests.waitForExit(a.daemon!, seconds: 10)
        try FileManager.default.removeItem(atPath: a.dir + "/data")
        try FileManager.default.removeItem(atPath: a.dir + "/keys")

        let term = try await Self.promote(b, tokens)
        #expect(term >= 2)
        try await b.waitUntilServing(role: nil)
        let reader = b.client(tokens.agent)
        for (id, n) in acknowledged {
            let r = try await reader.send("GET", "/v1/records/\(id)")
            #expect(r.status == 200, "acknowledged record \(id) lost")
            if r.status == 200 { #expect((try r.object()["data"] as? [String: Any])?["n"] as? Int == n) }
        }
        for (id, _) in [deleted] + erased + erasedLater {
            #expect(try await reader.send("GET", "/v1/records/\(id)").status == 404, "erased record \(id) came back")
        }
        #expect(try await Self.write(reader, "after", 99) != nil, "the promoted vault takes writes")
        let journal = try await b.client(tokens.op).send("GET", "/v1/admin/journal").object()
        #expect(journal["role"] as? String == "primary" && journal["term"] as? Int == term)
        let verify = try await b.client(tokens.op).send("GET", "/v1/admin/audit/verify")
        #expect(try verify.object()["intact"] as? Bool == true)
    }

    /// A paused primary (SIGSTOP) resumed after the standby's promotion cannot append: every
    /// write (and audited read) it gets is 503, and nothing it might have answered exists.
    @Test func aPausedPrimaryResumedAfterAPromotionIsFenced() async throws {
        let pg = try PostgresCluster()
        let (a, tokens) = try await Self.primary(pg)
        let agent = a.client(tokens.agent, timeout: 20)
        let kept = try #require(try await Self.write(agent, "kept", 1))
        let b = try await Self.standby(of: a, pg)
        try await Self.waitUntilLevel(a, b, tokens)

        a.kill(SIGSTOP)
        try await Self.promoteWithCLI(b, tokens)
        try await b.waitUntilServing(role: nil)
        let term = try #require(try await b.client(tokens.op).send("GET", "/v1/admin/journal").object()["term"] as? Int)
        a.kill(SIGCONT)

        var answeredAfterPromotion: [String] = []
        for n in 0..<10 {
            let r = try await agent.send("POST", "/v1/records",
                                         body: json(["subject": "late", "category": "personal", "channel": "web", "data": ["n": n]]))
            #expect(r.status == 503, "the deposed primary answered \(r.status) to a write")
            if r.status == 201, let id = try? r.object()["id"] as? String { answeredAfterPromotion.append(id) }
        }
        #expect(try await agent.send("GET", "/v1/records/\(kept)").status == 503, "the deposed primary answered a read")
        let deposed = try await a.client(tokens.op).send("GET", "/v1/admin/journal").object()
        #expect(deposed["role"] as? String == "deposed")

        let reader = b.client(tokens.agent)
        #expect(try await reader.send("GET", "/v1/records/\(kept)").status == 200)
        for id in answeredAfterPromotion { #expect(try await reader.send("GET", "/v1/records/\(id)").status == 404) }
        let listed = try await b.client(tokens.admin).send("POST", "/v1/subjects/records", body: json(["subject": "late"]))
        #expect(listed.status == 200)
        #expect((try listed.object()["records"] as? [Any])?.isEmpty == true, "a write of the deposed primary reached the journal")
        #expect(try await Self.write(reader, "new", 2) != nil)
        #expect(term >= 2)
    }

    /// SIGTERM right after the promotion is answered, while the daemon closes the standby's server
    /// and opens the vault: the signal is not lost (the daemon exits 0), and the next start on
    /// those files serves them as the writer.
    @Test func aSignalDuringThePromotionHandoverStopsTheDaemon() async throws {
        let pg = try PostgresCluster()
        let (a, tokens) = try await Self.primary(pg)
        let kept = try #require(try await Self.write(a.client(tokens.agent), "kept", 1))
        let b = try await Self.standby(of: a, pg)
        try await Self.waitUntilLevel(a, b, tokens)
        a.kill(SIGKILL)
        _ = try await Self.promote(b, tokens)
        b.kill(SIGTERM)
        let daemon = try #require(b.daemon)
        #expect(ShutdownTests.waitForExit(daemon, seconds: 15), "the promoted daemon did not stop on SIGTERM")
        #expect(daemon.terminationStatus == 0)

        try b.serve(["--journal", pg.url, "--journal-lease", "PT2S"])
        try await b.waitUntilServing(role: nil)
        #expect(try await b.client(tokens.agent).send("GET", "/v1/records/\(kept)").status == 200)
    }

    /// PostgreSQL goes down under both: the writer answers 503 (nothing acknowledged), the
    /// standby reports the error and keeps its data; once PostgreSQL is back the writer (still
    /// the lease's holder, as no one else took it) takes writes again and the standby catches up.
    @Test func aStandbyRidesOutPostgreSQLGoingDown() async throws {
        let pg = try PostgresCluster()
        let (a, tokens) = try await Self.primary(pg)
        let agent = a.client(tokens.agent)
        let before = try #require(try await Self.write(agent, "before", 1))
        let b = try await Self.standby(of: a, pg)
        try await Self.waitUntilLevel(a, b, tokens)

        try pg.stop()
        let refused = try await agent.send("POST", "/v1/records",
                                           body: json(["subject": "down", "category": "personal", "channel": "web", "data": ["n": 2]]))
        #expect(refused.status == 503)
        var reported: String?
        for _ in 0..<100 where reported == nil {
            reported = try await b.client(tokens.op).send("GET", "/v1/admin/journal").object()["error"] as? String
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(reported != nil, "the standby did not report the unreachable journal")

        try pg.start()
        var after: String?
        for _ in 0..<50 where after == nil {
            after = try await Self.write(agent, "after", 3)
            if after == nil { try await Task.sleep(for: .milliseconds(100)) }
        }
        let written = try #require(after, "the writer did not take writes again")
        try await Self.waitUntilLevel(a, b, tokens)
        let level = try await b.client(tokens.op).send("GET", "/v1/admin/journal").object()
        #expect(level["error"] as? String == nil)

        // Promoted now, it has both acknowledged writes and not the refused one.
        a.kill(SIGKILL)
        _ = try await Self.promote(b, tokens)
        try await b.waitUntilServing(role: nil)
        let reader = b.client(tokens.agent)
        #expect(try await reader.send("GET", "/v1/records/\(before)").status == 200)
        #expect(try await reader.send("GET", "/v1/records/\(written)").status == 200)
        let down = try await b.client(tokens.admin).send("POST", "/v1/subjects/records", body: json(["subject": "down"]))
        #expect((try down.object()["records"] as? [Any])?.isEmpty == true, "the refused write exists")
    }

    /// A standby away while a snapshot truncates what it lacks (the writer keeps change sets only
    /// for standbys seen within the hour) starts again from that snapshot when it restarts, and
    /// follows and promotes as before.
    @Test func aStandbyBehindATruncationStartsAgainFromTheSnapshot() async throws {
        let pg = try PostgresCluster()
        let (a, tokens) = try await Self.primary(pg)
        let agent = a.client(tokens.agent)
        let first = try #require(try await Self.write(agent, "first", 1))
        let b = try await Self.standby(of: a, pg)
        try await Self.waitUntilLevel(a, b, tokens)
        b.stop()

        // As if it had been away for more than an hour: the writer no longer keeps anything for it.
        try pg.sql("DELETE FROM shredvault_standbys")
        var later: [(String, Int)] = []
        for n in 0..<10 { if let id = try await Self.write(agent, "later", n) { later.append((id, n)) } }
        #expect(try await a.client(tokens.op).send("POST", "/v1/admin/snapshot").status == 200)
        #expect(try pg.sql("SELECT min(seq) FROM shredvault_change_sets") != "1", "the snapshot truncated nothing")

        try b.serve(["--journal", pg.url, "--journal-lease", "PT2S", "--standby"])
        try await b.waitUntilServing(role: "standby")
        #expect(b.logsContain("starting again from snapshot"), "the standby did not start again from the snapshot")
        try await Self.waitUntilLevel(a, b, tokens)
        a.kill(SIGKILL)
        _ = try await Self.promote(b, tokens)
        try await b.waitUntilServing(role: nil)
        let reader = b.client(tokens.agent)
        #expect(try await reader.send("GET", "/v1/records/\(first)").status == 200)
        for (id, n) in later {
            let r = try await reader.send("GET", "/v1/records/\(id)")
            #expect(r.status == 200)
            if r.status == 200 { #expect((try r.object()["data"] as? [String: Any])?["n"] as? Int == n) }
        }
    }
}
