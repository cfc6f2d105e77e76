import Sodium
import Foundation
import Testing
import VaultClient
import VaultCore

/// The transparency routes through the real socket, and what a client company does with
/// them: save heads, entries and keys, and check them offline with `scripts/verify-audit`
/// (Python, no Swift) and `shredvault audit verify --offline` (no vault, socket or key), which
/// must both say ok for the vault's own answers, name every edit, and agree line for line.
@Suite struct AuditTransparencyRouteTests {
    static let repository: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    /// Runs `scripts/verify-audit` and `shredvault audit verify --offline` on `dir`: they must
    /// agree on the exit status and on every `BROKEN:` and `note:` line; the script's status
    /// and output.
    static func verify(_ dir: String) throws -> (status: Int32, output: String) {
        let python = try run(["/usr/bin/env", "python3", repository + "/scripts/verify-audit", dir], dir)
        let swift = try run([shredvaultTestBinary, "audit", "verify", "--offline", dir], dir)
        func findings(_ output: String) -> [Substring] {
            output.split(separator: "\n").filter { $0.hasPrefix("BROKEN: ") || $0.hasPrefix("note: ") }
        }
        #expect(swift.status == python.status, "verify-audit: \(python.output)\naudit verify --offline: \(swift.output)")
        #expect(findings(swift.output) == findings(python.output),
                "verify-audit: \(python.output)\naudit verify --offline: \(swift.output)")
        return python
    }

    static func run(_ command: [String], _ dir: String) throws -> (status: Int32, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: command[0])
        p.arguments = Array(command.dropFirst())
        let out = dir + ".out"
        FileManager.default.createFile(atPath: out, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
        p.standardOutput = handle
        p.standardError = handle
        try p.run()
        p.waitUntilExit()
        try handle.close()
        return (p.terminationStatus, (try? String(contentsOfFile: out, encoding: .utf8)) ?? "")
    }

    static func save(_ r: HTTPResponse, _ path: String) throws {
        #expect(r.status == 200, "\(path): \(r.status) \(r.text)")
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent,
                                                withIntermediateDirectories: true)
        #expect(FileManager.default.createFile(atPath: path, contents: Data(r.body)))
    }

    @Test func headsProofsAndKeysAnswerAsTheSpecSaysAndVerifyOffline() async throws {
        try await ServerHarness.with { (h: ServerHarness) async throws in
            let acme = try await h.tenant("acme")
            let globex = try await h.tenant("globex")
            var ids: [String] = []
            for i in 0..<7 {
                let w = try await acme.agent.send("POST", "/v1/records", body: json(
                    ["subject": "cust-\(i)", "category": "personal", "channel": "phone", "data": ["n": i]]))
                #expect(w.status == 201)
                ids.append(try w.object()["id"] as! String)
                _ = try await globex.agent.send("POST", "/v1/records", body: json(
                    ["subject": "g-\(i)", "category": "personal", "channel": "email", "data": ["n": i]]))
            }
            _ = try await acme.agent.send("GET", "/v1/records/\(ids[2])")

            // Who may ask: an admin (its tenant's log), the operator (the operator's), not an agent.
            #expect(try await acme.agent.send("GET", "/v1/audit/head").status == 403)
            #expect(try await h.client(nil).send("GET", "/v1/audit/head").status == 401)
            let opHead = try await h.operatorClient.send("GET", "/v1/audit/head").object()
            #expect(opHead["tenant"] is NSNull)
            let head = try await acme.admin.send("GET", "/v1/audit/head").object()
            #expect(head["tenant"] as? String == "acme")
            // The tenant's creation and its two tokens, 7 writes and a read.
            #expect(head["size"] as? Int == 11, "\(head)")
            #expect(Set(head.keys) == ["size", "root", "at", "tenant", "signature", "key_id"])
            let keys = try await h.client(nil).send("GET", "/v1/audit/keys")
            #expect(keys.status == 200)
            #expect(((try keys.object()["keys"] as? [[String: Any]])?.first?["key_id"] as? String) == head["key_id"] as? String)

            // Bad and refused parameters.
            for (path, status) in [("/v1/audit/proof?size=3", 400), ("/v1/audit/proof?seq=x&size=3", 400),
                                   ("/v1/audit/proof?seq=1&size=9223372036854775808", 400),
                                   ("/v1/audit/proof?seq=1&size=12", 422), ("/v1/audit/proof?seq=0&size=11", 422),
                                   ("/v1/audit/proof?seq=12&size=11", 422), ("/v1/audit/consistency?from=1", 400),
                                   ("/v1/audit/consistency?from=5&to=4", 422), ("/v1/audit/consistency?from=1&to=12", 422)] {
                let r = try await acme.admin.send("GET", path)
                #expect(r.status == status && r.isProblem, "\(path): \(r.status) \(r.text)")
            }

            // What a client company keeps, then checks offline.
            let dir = h.directory + "/acme-audit"
            try Self.save(keys, dir + "/keys.json")
            try Self.save(try await acme.admin.send("GET", "/v1/audit/head"), dir + "/heads/1.json")
            try Self.save(try await acme.admin.send("GET", "/v1/audit/proof?seq=6&size=11"), dir + "/proofs/6-11.json")
            for i in 0..<4 {
                _ = try await acme.agent.send("GET", "/v1/records/\(ids[i])")
            }
            try Self.save(try await acme.admin.send("GET", "/v1/audit/head"), dir + "/heads/2.json")
            try Self.save(try await acme.admin.send("GET", "/v1/audit/consistency?from=11&to=15"), dir + "/consistency/11-15.json")
            try Self.save(try await acme.admin.send("GET", "/v1/audit?limit=5"), dir + "/entries/1.json")
            try Self.save(try await acme.admin.send("GET", "/v1/audit?after=5"), dir + "/entries/2.json")
            let ok = try Self.verify(dir)
            #expect(ok.status == 0, "\(ok.output)")
            #expect(ok.output.contains(": ok"), "\(ok.output)")

            // One entry edited (its target), as a rewriter of the keystore would show it: named.
            let page = dir + "/entries/2.json"
            let original = try String(contentsOfFile: page, encoding: .utf8)
            let edited = original.replacingOccurrences(of: ids[2], with: ids[3])
            #expect(edited != original)
            try edited.write(toFile: page, atomically: true, encoding: .utf8)
            let broken = try Self.verify(dir)
            #expect(broken.status == 1 && broken.output.contains("BROKEN"), "\(broken.output)")
            try original.write(toFile: page, atomically: true, encoding: .utf8)

            // A head with a forged signature (its size changed), and one of another tenant's.
            // An entry removed from a page (the second page's first): named as a gap.
            let pageText = try String(contentsOfFile: page, encoding: .utf8)
            var pageObject = try #require(try JSONSerialization.jsonObject(with: Data(pageText.utf8)) as? [String: Any])
            var kept = try #require(pageObject["entries"] as? [Any])
            kept.removeFirst()
            pageObject["entries"] = kept
            try JSONSerialization.data(withJSONObject: pageObject).write(to: URL(fileURLWithPath: page))
            let removed = try Self.verify(dir)
            #expect(removed.status == 1 && removed.output.contains("entry 6 is missing"), "\(removed.output)")
            try original.write(toFile: page, atomically: true, encoding: .utf8)

            let headPath = dir + "/heads/2.json"
            let head2 = try String(contentsOfFile: headPath, encoding: .utf8)
            #expect(head2.contains("\"size\":15"), "\(head2)")
            try head2.replacingOccurrences(of: "\"size\":15", with: "\"size\":14").write(toFile: headPath, atomically: true, encoding: .utf8)
            let forged = try Self.verify(dir)
            #expect(forged.status == 1 && forged.output.contains("BROKEN"), "\(forged.output)")
            try Self.save(try await globex.admin.send("GET", "/v1/audit/head"), headPath)
            let mixed = try Self.verify(dir)
            #expect(mixed.status != 0, "\(mixed.output)")

            // Unreadable input is exit 2 for both: no directory, and a page that is not JSON.
            #expect(try Self.verify(h.directory + "/nothing-saved").status == 2)
            try "{not json".write(toFile: dir + "/entries/3.json", atomically: true, encoding: .utf8)
            #expect(try Self.verify(dir).status == 2)
        }
    }

    /// After the sweep pruned a log's first entries: a client company that kept its entries from
    /// 1 checks them against `pruned.json`; one that saves only what is left starts after them.
    /// Both verifiers agree, and a pruned prefix that does not match the kept entries is named.
    @Test func aPrunedLogVerifiesOfflineFromThePrunedSubtrees() async throws {
        try await ServerHarness.with(manualClock: true, auditTail: 16) { (h: ServerHarness) async throws in
            let acme = try await h.tenant("acme")
            func write(_ n: Int) async throws {
                for i in 0..<n {
                    let w = try await acme.agent.send("POST", "/v1/records", body: json(
                        ["subject": "cust-\(i)", "category": "personal", "channel": "phone", "data": ["n": i]]))
                    #expect(w.status == 201)
                }
            }
            try await write(9)
            let kept = h.directory + "/kept", fresh = h.directory + "/fresh"
            let keys = try await h.client(nil).send("GET", "/v1/audit/keys")
            for dir in [kept, fresh] { try Self.save(keys, dir + "/keys.json") }
            try Self.save(try await acme.admin.send("GET", "/v1/audit/head"), kept + "/heads/1.json")
            try Self.save(try await acme.admin.send("GET", "/v1/audit"), kept + "/entries/1.json")
            let before = try await acme.admin.send("GET", "/v1/audit/pruned").object()
            #expect(before["size"] as? Int == 0 && (before["subtrees"] as? [Any])?.isEmpty == true, "\(before)")

            h.clock.advance(seconds: AuditRetention.defaultSeconds + 86_400)
            try await write(40)
            let sweep = try await h.operatorClient.send("POST", "/v1/admin/sweep").object()
            #expect((sweep["audit_entries_pruned"] as? Int ?? 0) > 0, "\(sweep)")
            #expect(sweep["audit_retention"] as? String == "P400D")
            let verify = try await h.operatorClient.send("GET", "/v1/admin/audit/verify").object()
            #expect(verify["intact"] as? Bool == true && (verify["pruned"] as? Int ?? 0) > 0, "\(verify)")
            let pruned = try await acme.admin.send("GET", "/v1/audit/pruned")
            // The tenant's creation, its two tokens and nine writes: twelve entries, 8 + 4.
            #expect(try pruned.object()["size"] as? Int == 12 && (try pruned.object()["subtrees"] as? [Any])?.count == 2, "\(pruned.text)")
            let rest = try await acme.admin.send("GET", "/v1/audit")
            #expect((try rest.object()["entries"] as? [[String: Any]])?.first?["seq"] as? Int == 13, "\(rest.text)")
            let head = try await acme.admin.send("GET", "/v1/audit/head")
            for dir in [kept, fresh] {
                try Self.save(pruned, dir + "/pruned.json")
                try Self.save(head, dir + "/heads/2.json")
            }
            try Self.save(rest, kept + "/entries/2.json")
            try Self.save(rest, fresh + "/entries/1.json")
            for dir in [kept, fresh] {
                let ok = try Self.verify(dir)
                #expect(ok.status == 0 && ok.output.contains(": ok"), "\(dir): \(ok.output)")
            }

            // Without pruned.json, what is left cannot be checked from entry 1: named.
            try FileManager.default.removeItem(atPath: fresh + "/pruned.json")
            let missing = try Self.verify(fresh)
            #expect(missing.status == 1 && missing.output.contains("entry 1 is missing"), "\(missing.output)")
            // A pruned prefix that is not the kept entries' (one subtree swapped for another log's): named.
            var forged = try pruned.object()
            var subtrees = try #require(forged["subtrees"] as? [String])
            subtrees.swapAt(0, 1)
            forged["subtrees"] = subtrees
            try JSONSerialization.data(withJSONObject: forged).write(to: URL(fileURLWithPath: kept + "/pruned.json"))
            let rewritten = try Self.verify(kept)
            #expect(rewritten.status == 1 && rewritten.output.contains("the subtrees of the 12 pruned entries"), "\(rewritten.output)")
            try JSONSerialization.data(withJSONObject: forged).write(to: URL(fileURLWithPath: fresh + "/pruned.json"))
            let wrongRoot = try Self.verify(fresh)
            #expect(wrongRoot.status == 1 && wrongRoot.output.contains("does not match the pruned entries' subtrees"), "\(wrongRoot.output)")
        }
    }

    /// The daemon signs the operator's head every `headInterval` while entries arrive, off any
    /// request, and logs it; each logged head verifies with the listed key, and none is logged
    /// again while the log does not grow.
    @Test func theOperatorsHeadIsSignedAndLoggedWhileEntriesArrive() async throws {
        let log = LogCapture()
        try await ServerHarness.with(configure: { $0.headInterval = .milliseconds(100) }, logger: log.logger) { (h: ServerHarness) async throws in
            let acme = try await h.tenant("acme")
            func logged() async -> [[String: String]] {
                log.lines(containing: "audit head ").map { line in
                    Dictionary(line.split(separator: " ").compactMap { part -> (String, String)? in
                        guard let eq = part.firstIndex(of: "=") else { return nil }
                        return (String(part[..<eq]), String(part[part.index(after: eq)...]))
                    }, uniquingKeysWith: { $1 })
                }
            }
            var heads: [[String: String]] = []
            for _ in 0..<100 where heads.isEmpty {
                try await Task.sleep(for: .milliseconds(50))
                heads = await logged()
            }
            let first = try #require(heads.last, "no audit head logged")
            let keys = try await h.client(nil).send("GET", "/v1/audit/keys").object()["keys"] as? [[String: Any]]
            let key = try #require(keys?.first { $0["key_id"] as? String == first["key_id"] })
            let size = try #require(first["size"].flatMap { UInt64($0) })
            let root = try #require(first["root"].flatMap { Data(base64Encoded: $0) })
            let signature = try #require(first["signature"].flatMap { Data(base64Encoded: $0) })
            let publicKey = try #require((key["public_key"] as? String).flatMap { Data(base64Encoded: $0) })
            #expect(SigningKey.verify(signature: Array(signature),
                                      of: SignedTreeHead.signedBytes(size: size, root: Array(root), at: first["at"]!, tenant: nil),
                                      publicKey: Array(publicKey)))
            // Quiet: nothing new is logged. Then a write: a larger head is.
            try await Task.sleep(for: .milliseconds(400))
            let quiet = await logged()
            #expect(Set(quiet.compactMap { $0["size"] }).count == quiet.count, "a head logged twice for one size: \(quiet)")
            let w = try await acme.agent.send("POST", "/v1/records", body: json(
                ["subject": "cust-1", "category": "personal", "channel": "phone", "data": ["n": 1]]))
            #expect(w.status == 201)
            var grown: UInt64 = 0
            for _ in 0..<100 where grown <= size {
                try await Task.sleep(for: .milliseconds(50))
                grown = await logged().last.flatMap { $0["size"] }.flatMap { UInt64($0) } ?? 0
            }
            #expect(grown > size)
        }
    }
}
