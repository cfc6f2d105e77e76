import Foundation
import Testing
import VaultClient
#if canImport(Glibc)
import Glibc
#endif

/// The SOC feed, `GET /v1/audit/stream`, through the real socket: the backlog then live
/// entries, resuming, isolation, refusals, the cap; the real daemon stopping under an open
/// stream; and `shredvault audit follow` across a daemon restart.
@Suite struct AuditStreamTests {
    /// A stream handed to the thread that blocks on it.
    final class Reader: @unchecked Sendable {
        // unchecked: the stream is read by one thread at a time; `close` only shuts the socket down.
        let stream: HTTPLineStream
        init(_ stream: HTTPLineStream) { self.stream = stream }

        /// The next `count` lines, read on a thread of their own; the stream is closed (and the
        /// test fails) if they have not all come within `seconds`.
        func lines(_ count: Int, within seconds: Double = 20) async throws -> [[String: Any]] {
            let done = DoneFlag()
            DispatchQueue.global().asyncAfter(deadline: .now() + seconds) { [self] in
                if !done.isSet { stream.close() }
            }
            let raw: [[UInt8]] = try await withCheckedThrowingContinuation { c in
                DispatchQueue.global().async { [self] in
                    var out: [[UInt8]] = []
                    do {
                        while out.count < count, let line = try stream.nextLine() { out.append(line) }
                        done.set()
                        c.resume(returning: out)
                    } catch {
                        done.set()
                        c.resume(throwing: error)
                    }
                }
            }
            #expect(raw.count == count, "\(raw.count) lines of \(count) came")
            return try raw.map { try #require(try JSONSerialization.jsonObject(with: Data($0)) as? [String: Any]) }
        }

        /// The rest of an error answer, read on a Dispatch thread.
        func rest() async throws -> [UInt8] {
            try await withCheckedThrowingContinuation { c in
                DispatchQueue.global().async { [self] in
                    do { c.resume(returning: try stream.readRest()) } catch { c.resume(throwing: error) }
                }
            }
        }

        /// How many lines follow until the body ends cleanly; a failure when it breaks, or has
        /// not ended within `seconds` (the stream is closed then).
        func end(within seconds: Double) async -> Result<Int, ClientError> {
            let done = DoneFlag()
            DispatchQueue.global().asyncAfter(deadline: .now() + seconds) { [self] in
                if !done.isSet { stream.close() }
            }
            defer { done.set() }
            return await withCheckedContinuation { c in
                DispatchQueue.global().async { [self] in
                    var n = 0
                    do throws(ClientError) {
                        while try stream.nextLine() != nil { n += 1 }
                        c.resume(returning: .success(n))
                    } catch {
                        c.resume(returning: .failure(error))
                    }
                }
            }
        }
    }

    final class DoneFlag: @unchecked Sendable {
        // unchecked: `value` is guarded by `lock`.
        private let lock = NSLock()
        private var value = false
        var isSet: Bool { lock.withLock { value } }
        func set() { lock.withLock { value = true } }
    }

    /// Opens a stream on a Dispatch thread: the blocking client must not hold one of the
    /// cooperative pool's threads (two on two cores), which the daemon in process needs.
    static func open(_ client: VaultHTTPClient, _ path: String) async throws -> Reader {
        try await withCheckedThrowingContinuation { c in
            DispatchQueue.global().async {
                do { c.resume(returning: Reader(try client.openStream(path))) } catch { c.resume(throwing: error) }
            }
        }
    }

    /// A page of `GET path` as objects.
    static func page(_ client: VaultHTTPClient, _ path: String) async throws -> [[String: Any]] {
        let r = try await client.send("GET", path)
        #expect(r.status == 200, "\(path): \(r.status)")
        return try #require(try r.object()["entries"] as? [[String: Any]])
    }

    static func same(_ a: [[String: Any]], _ b: [[String: Any]]) -> Bool {
        a.count == b.count && zip(a, b).allSatisfy { NSDictionary(dictionary: $0) == NSDictionary(dictionary: $1) }
    }

    static func write(_ agent: VaultHTTPClient, _ n: Int) async throws {
        for i in 0..<n {
            let w = try await agent.send("POST", "/v1/records", body: json(
                ["subject": "s-\(i)", "category": "personal", "channel": "chat", "data": ["n": i]]))
            #expect(w.status == 201)
        }
    }

    @Test(.timeLimit(.minutes(2))) func backlogThenLiveEntriesInOrderResumedAndIsolated() async throws {
        try await ServerHarness.with { (h: ServerHarness) async throws in
            let acme = try await h.tenant("acme")
            let globex = try await h.tenant("globex")
            try await Self.write(acme.agent, 3)
            try await Self.write(globex.agent, 3)

            // The backlog: exactly the tenant's page, in its numbering.
            let backlog = try await Self.page(acme.admin, "/v1/audit?after=0&limit=1000")
            #expect(backlog.count == 6, "tenant creation, two tokens, three writes")
            let stream = try await Self.open(acme.admin, "/v1/audit/stream")
            #expect(stream.stream.status == 200)
            #expect(stream.stream.header("content-type") == "application/x-ndjson")
            #expect(Self.same(try await stream.lines(6), backlog))

            // Live: another tenant's writes show nothing here; the tenant's own arrive in order.
            let globexStream = try await Self.open(globex.admin, "/v1/audit/stream?after=6")
            try await Self.write(globex.agent, 2)
            try await Self.write(acme.agent, 2)
            let live = try await stream.lines(2)
            #expect(live.map { $0["seq"] as? Int } == [7, 8])
            #expect(live.allSatisfy { $0["tenant"] as? String == "acme" })
            #expect(Self.same(live, try await Self.page(acme.admin, "/v1/audit?after=6")))
            let theirs = try await globexStream.lines(2)
            #expect(theirs.map { $0["seq"] as? Int } == [7, 8] && theirs.allSatisfy { $0["tenant"] as? String == "globex" })
            // A read is audited too (one more entry each), and still nothing of the other's.
            _ = try await globex.agent.send("GET", "/v1/records/01KZZZZZZZZZZZZZZZZZZZZZZZ")
            _ = try await acme.agent.send("GET", "/v1/records/01KZZZZZZZZZZZZZZZZZZZZZZZ")
            let next = try await stream.lines(1)
            #expect(next.first?["seq"] as? Int == 9 && next.first?["tenant"] as? String == "acme")

            // Resuming after N gives N+1 on, exactly.
            let resumed = try await Self.open(acme.admin, "/v1/audit/stream?after=3")
            #expect(Self.same(try await resumed.lines(6), try await Self.page(acme.admin, "/v1/audit?after=3")))
            resumed.stream.close()

            // The operator's stream is the operator's page, then what follows.
            let chain = try await Self.page(h.operatorClient, "/v1/admin/audit?after=0&limit=1000")
            let from = try #require(chain.dropLast(2).last?["seq"] as? Int)
            let op = try await Self.open(h.operatorClient, "/v1/audit/stream?after=\(from)")
            #expect(Self.same(try await op.lines(2), Array(chain.suffix(2))))
            try await Self.write(globex.agent, 1)
            let opLive = try await op.lines(1)
            #expect(opLive.first?["seq"] as? Int == from + 3 && opLive.first?["tenant"] as? String == "globex")
            #expect(opLive.first?["prev"] is String && opLive.first?["target"] is NSNull)
            for r in [stream, globexStream, op] { r.stream.close() }
        }
    }

    @Test func refusalsAreProblemsAsOnTheOtherAuditRoutes() async throws {
        try await ServerHarness.with { (h: ServerHarness) async throws in
            let acme = try await h.tenant("acme")
            let agent = try await acme.agent.send("GET", "/v1/audit/stream")
            #expect(agent.status == 403 && agent.isProblem)
            #expect(try await h.client(nil).send("GET", "/v1/audit/stream").status == 401)
            for bad in ["x", "-1", "1e3", "9223372036854775808", "18446744073709551616", ""] {
                for client in [acme.admin, h.operatorClient] {
                    let r = try await client.send("GET", "/v1/audit/stream?after=\(bad)")
                    #expect(r.status == 400 && r.isProblem, "after=\(bad): \(r.status) \(r.text)")
                }
            }
            // At the cap, an empty stream opens (and sends nothing yet).
            let atCap = try await Self.open(acme.admin, "/v1/audit/stream?after=9223372036854775807")
            #expect(atCap.stream.status == 200)
            atCap.stream.close()
        }
    }

    @Test(.timeLimit(.minutes(1))) func pastTheCapIs503AndAClosedStreamFreesItsPlace() async throws {
        try await ServerHarness.with(configure: { $0.maxAuditStreams = 2 }) { (h: ServerHarness) async throws in
            let acme = try await h.tenant("acme")
            let a = try await Self.open(acme.admin, "/v1/audit/stream")
            let b = try await Self.open(h.operatorClient, "/v1/audit/stream")
            #expect(a.stream.status == 200 && b.stream.status == 200)
            let refused = try await Self.open(acme.admin, "/v1/audit/stream")
            #expect(refused.stream.status == 503 && refused.stream.header("retry-after") == "5")
            let problem = try JSONSerialization.jsonObject(with: Data(try await refused.rest())) as? [String: Any]
            #expect(problem?["type"] as? String == "/problems/unavailable")
            // Nothing is written to a's tenant meanwhile: the daemon notices the close itself.
            a.stream.close()
            var reopened: Reader?
            for _ in 0..<100 {
                let s = try await Self.open(acme.admin, "/v1/audit/stream")
                if s.stream.status == 200 { reopened = s; break }
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(reopened != nil, "the closed stream's place was not freed")
            reopened?.stream.close()
            b.stream.close()
        }
    }

    @Test(.timeLimit(.minutes(1))) func aRevokedTokensStreamEndsAtTheNextCommit() async throws {
        try await ServerHarness.with { (h: ServerHarness) async throws in
            let acme = try await h.tenant("acme")
            let issued = try await h.operatorClient.send("POST", "/v1/admin/tokens",
                                                         body: json(["tenant": "acme", "role": "admin", "name": "soc"])).object()
            let soc = h.client(Array(try #require(issued["token"] as? String).utf8))
            let stream = try await Self.open(soc, "/v1/audit/stream")
            #expect(try await stream.lines(4).count == 4)
            let id = try #require(issued["id"] as? String)
            #expect(try await h.operatorClient.send("DELETE", "/v1/admin/tokens/\(id)").status == 204)
            try await Self.write(acme.agent, 1)
            // The revocation's own entry may still go out; then the stream ends, cleanly.
            guard case .success(let more) = await stream.end(within: 20) else {
                Issue.record("the stream did not end cleanly")
                return
            }
            #expect(more <= 1)
            #expect(try await soc.send("GET", "/v1/audit/stream").status == 401)
        }
    }

    @Test(.timeLimit(.minutes(2))) func aReaderThatStopsReadingNeitherStallsTheVaultNorLosesEntries() async throws {
        try await ServerHarness.with { (h: ServerHarness) async throws in
            let acme = try await h.tenant("acme")
            let chain = try await Self.page(h.operatorClient, "/v1/admin/audit?after=0&limit=1000")
            let start = try #require(chain.last?["seq"] as? Int)
            // Opened, then not read while ~3,000 entries (about 1 MB of lines, more than the
            // socket buffers hold) are written: the daemon goes on answering everyone else.
            let stalled = try await Self.open(h.operatorClient, "/v1/audit/stream?after=\(start)")
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<4 {
                    let client = h.client(acme.agentToken)
                    group.addTask {
                        for _ in 0..<750 { _ = try await client.send("GET", "/v1/records/01KZZZZZZZZZZZZZZZZZZZZZZZ") }
                    }
                }
                try await group.waitForAll()
            }
            #expect(try await h.client(nil).send("GET", "/healthz").status == 200)
            // Then everything arrives, in order, past several pages.
            let lines = try await stalled.lines(3000, within: 60)
            #expect(lines.map { $0["seq"] as? Int } == Array((start + 1)...(start + 3000)).map { Optional($0) })
            stalled.stream.close()
        }
    }

    // MARK: The real daemon

    static func initVault(_ dir: String) throws -> String {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let (status, output) = try ShutdownTests.run(["init", "--data-dir", dir + "/data", "--key-file", dir + "/keys/master.key"], dir: dir)
        try #require(status == 0)
        return try #require((try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: String])?["operator_token"])
    }

    @Test(.timeLimit(.minutes(2))) func sigtermWithAnOpenStreamEndsItAndExits() async throws {
        let dir = "/tmp/sv-" + UUID().uuidString.prefix(8).lowercased()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let token = try Self.initVault(dir)
        let socket = dir + "/data/shredvault.sock"
        let daemon = try ShutdownTests.serve(dir: dir, log: dir + "/serve.log")
        defer { if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) } }
        try ShutdownTests.waitForSocket(socket, daemon)
        let op = VaultHTTPClient(endpoint: .unixSocket(path: socket), token: Array(token.utf8))
        #expect(try await op.send("POST", "/v1/admin/tenants", body: json(["id": "acme"])).status == 201)
        let stream = try await Self.open(op, "/v1/audit/stream")
        #expect(try await stream.lines(2).count == 2)
        // A second stream whose reader never reads: it must not hold the shutdown either.
        let idle = try await Self.open(op, "/v1/audit/stream")
        #expect(idle.stream.status == 200)

        kill(daemon.processIdentifier, SIGTERM)
        let ended = await stream.end(within: 20)
        #expect(ShutdownTests.waitForExit(daemon, seconds: 20), "the daemon did not exit with streams open")
        #expect(daemon.terminationStatus == 0)
        guard case .success(let more) = ended else { Issue.record("the stream did not end cleanly: \(ended)"); return }
        #expect(more == 0)
        idle.stream.close()
    }

    @Test(.timeLimit(.minutes(3))) func auditFollowResumesAcrossARestartWithoutGapsOrDuplicates() async throws {
        let dir = "/tmp/sv-" + UUID().uuidString.prefix(8).lowercased()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let token = try Self.initVault(dir)
        let socket = dir + "/data/shredvault.sock"
        let tokenFile = dir + "/op.token"
        #expect(FileManager.default.createFile(atPath: tokenFile, contents: Data(token.utf8), attributes: [.posixPermissions: 0o600]))
        var daemon = try ShutdownTests.serve(dir: dir, log: dir + "/serve.log")
        defer { if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) } }
        try ShutdownTests.waitForSocket(socket, daemon)
        let op = VaultHTTPClient(endpoint: .unixSocket(path: socket), token: Array(token.utf8))
        for i in 0..<3 { #expect(try await op.send("POST", "/v1/admin/tenants", body: json(["id": "t\(i)"])).status == 201) }

        let out = dir + "/follow.out", err = dir + "/follow.err"
        FileManager.default.createFile(atPath: out, contents: nil)
        FileManager.default.createFile(atPath: err, contents: nil)
        let follow = Process()
        follow.executableURL = URL(fileURLWithPath: ShutdownTests.binary)
        follow.arguments = ["audit", "follow", "--after", "1", "--socket", socket, "--token-file", tokenFile]
        follow.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
        follow.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: err))
        try follow.run()
        defer { if follow.isRunning { kill(follow.processIdentifier, SIGKILL) } }

        /// The seqs printed so far, once there are `count` of them.
        func printed(_ count: Int) async throws -> [Int] {
            for _ in 0..<400 {
                let lines = (try String(contentsOfFile: out, encoding: .utf8)).split(separator: "\n")
                if lines.count >= count {
                    return try lines.map { line in
                        let o = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
                        return try #require(o["seq"] as? Int)
                    }
                }
                try await Task.sleep(for: .milliseconds(50))
            }
            Issue.record("follow printed fewer than \(count) lines: \((try? String(contentsOfFile: err, encoding: .utf8)) ?? "")")
            return []
        }
        // Entry 1 is the operator token's issue; --after 1 starts at the tenants.
        #expect(try await printed(3) == [2, 3, 4])

        // The daemon restarts; entries are written before follow can be back, then after.
        kill(daemon.processIdentifier, SIGTERM)
        #expect(ShutdownTests.waitForExit(daemon, seconds: 20))
        daemon = try ShutdownTests.serve(dir: dir, log: dir + "/serve2.log")
        try ShutdownTests.waitForSocket(socket, daemon)
        let again = VaultHTTPClient(endpoint: .unixSocket(path: socket), token: Array(token.utf8))
        for i in 3..<5 { #expect(try await again.send("POST", "/v1/admin/tenants", body: json(["id": "t\(i)"])).status == 201) }
        #expect(try await printed(5) == [2, 3, 4, 5, 6])
        for i in 5..<7 { #expect(try await again.send("POST", "/v1/admin/tenants", body: json(["id": "t\(i)"])).status == 201) }
        let all = try await printed(7)
        #expect(all == Array(2...8), "\(all)")

        // What it printed is the operator's page, line for line.
        let page = try await Self.page(again, "/v1/admin/audit?after=1&limit=1000")
        let lines = try String(contentsOfFile: out, encoding: .utf8).split(separator: "\n").map {
            try #require(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
        #expect(Self.same(lines, page))
        let notes = (try? String(contentsOfFile: err, encoding: .utf8)) ?? ""
        #expect(notes.contains("connecting again"), "\(notes)")
        kill(follow.processIdentifier, SIGTERM)
    }
}
