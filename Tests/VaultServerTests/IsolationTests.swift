import Foundation
import Testing
import VaultClient
import VaultServer

/// Requests from one tenant can never observe another tenant's records, subjects, tags,
/// audit entries or counts: other tenants' ids answer exactly like unknown ids.
@Suite struct IsolationTests {
    @Test func anotherTenantsIdsAnswerLikeUnknownIds() async throws {
        try await ServerHarness.with { (h: ServerHarness) async throws in
            let a = try await h.tenant("acme")
            let b = try await h.tenant("globex")
            let body = json(["subject": "shared-subject", "category": "personal", "channel": "email", "data": ["owner": "acme"]])
            let id = try #require(try (await a.agent.send("POST", "/v1/records", body: body)).object()["id"] as? String)
            let unknown = "01KZZZZZZZZZZZZZZZZZZZZZZZ"

            let probes: [(String, String, [UInt8]?)] = [
                ("GET", "/v1/records/%@", nil),
                ("PUT", "/v1/records/%@", json(["data": ["owner": "globex"]])),
                ("DELETE", "/v1/records/%@", nil),
            ]
            for (method, template, payload) in probes {
                for client in [b.agent, b.admin] {
                    if method == "DELETE" && client === b.agent { continue }
                    let theirs = try await client.send(method, template.replacingOccurrences(of: "%@", with: id), body: payload)
                    let none = try await client.send(method, template.replacingOccurrences(of: "%@", with: unknown), body: payload)
                    #expect(theirs.status == 404, "\(method)")
                    #expect(theirs.status == none.status)
                    #expect(theirs.body == none.body, "\(method): the body tells another tenant's id from an unknown one")
                }
            }
            // A hold on another tenant's record answers like one on an unknown record.
            let hold = try await b.admin.send("POST", "/v1/holds", body: json(["record": id, "reason": "x"]))
            let holdUnknown = try await b.admin.send("POST", "/v1/holds", body: json(["record": unknown, "reason": "x"]))
            #expect(hold.status == 404)
            #expect(hold.body == holdUnknown.body)

            // The same subject string is a different subject in another tenant.
            let listed = try await b.agent.send("POST", "/v1/subjects/records", body: json(["subject": "shared-subject"]))
            #expect((try listed.object()["records"] as? [Any])?.isEmpty == true)
            let erased = try await b.admin.send("POST", "/v1/subjects/erase", body: json(["subject": "shared-subject"]))
            #expect(try erased.object()["erased"] as? Int == 0)
            let aTag = try (await a.admin.send("POST", "/v1/subjects/erase", body: json(["subject": "nobody"]))).object()
            let bTag = try erased.object()["receipt"] as? [String: Any]
            #expect((aTag["receipt"] as? [String: Any])?["subject_tag"] as? String != bTag?["subject_tag"] as? String)

            // Counts, reports and audit entries are per tenant.
            let report = try await b.admin.send("GET", "/v1/report")
            #expect(try report.object()["records"] as? Int == 0)
            let audit = try await b.admin.send("GET", "/v1/audit?limit=1000")
            let entries = try #require(try audit.object()["entries"] as? [[String: Any]])
            #expect(entries.allSatisfy { $0["tenant"] as? String == "globex" })
            #expect(!audit.text.contains(id) || entries.allSatisfy { $0["tenant"] as? String == "globex" })

            // And acme's record is intact after all of it.
            let mine = try await a.agent.send("GET", "/v1/records/\(id)")
            #expect(mine.status == 200)
            #expect((try mine.object()["data"] as? [String: Any])?["owner"] as? String == "acme")
            #expect(try mine.object()["version"] as? Int == 1)
        }
    }

    @Test func tokensOfOneRoleCannotUseAnother() async throws {
        try await ServerHarness.with { (h: ServerHarness) async throws in
            let t = try await h.tenant("acme")
            let adminOnly: [(String, String, [UInt8]?)] = [
                ("POST", "/v1/subjects/erase", json(["subject": "s"])),
                ("GET", "/v1/retention", nil),
                ("PUT", "/v1/retention", json(["default": "P30D"])),
                ("POST", "/v1/retention/extensions", json(["purpose": "legal", "reference": "r", "retention": "P100D", "until": "2099-01-01T00:00:00Z"])),
                ("DELETE", "/v1/retention/extensions/01KZZZZZZZZZZZZZZZZZZZZZZZ", nil),
                ("POST", "/v1/holds", json(["subject": "s", "reason": "r"])),
                ("GET", "/v1/holds", nil),
                ("DELETE", "/v1/holds/01KZZZZZZZZZZZZZZZZZZZZZZZ", nil),
                ("GET", "/v1/audit", nil),
                ("GET", "/v1/report", nil),
                ("GET", "/v1/audit/head", nil),
                ("GET", "/v1/audit/proof?seq=1&size=1", nil),
                ("GET", "/v1/audit/consistency?from=0&to=1", nil),
                ("GET", "/v1/audit/stream", nil),
                ("DELETE", "/v1/records/01KZZZZZZZZZZZZZZZZZZZZZZZ", nil),
            ]
            for (method, path, body) in adminOnly {
                let r = try await t.agent.send(method, path, body: body)
                #expect(r.status == 403, "agent \(method) \(path)")
                #expect(r.isProblem)
            }
            let server = VaultServer(vault: h.vault, configuration: .init(socketPath: h.socket))
            let operatorOnly = server.routes.filter { $0.path.hasPrefix("/v1/admin") || $0.path == "/metrics" }
            for (method, path) in operatorOnly {
                let concrete = path.replacingOccurrences(of: "{id}", with: "acme")
                for client in [t.agent, t.admin] {
                    let r = try await client.send(method, concrete, body: method == "POST" || method == "PUT" ? json([:]) : nil)
                    #expect(r.status == 403, "\(method) \(path)")
                }
            }
            // The transparency routes serve the operator its own log; the keys are public.
            let operatorsToo: Set<String> = ["/v1/audit/head", "/v1/audit/proof", "/v1/audit/consistency", "/v1/audit/pruned", "/v1/audit/keys",
                                             "/v1/audit/stream"]
            let tenantRoutes = server.routes.filter {
                $0.path.hasPrefix("/v1/") && !$0.path.hasPrefix("/v1/admin") && !operatorsToo.contains($0.path)
            }
            for (method, path) in tenantRoutes {
                let concrete = path.replacingOccurrences(of: "{id}", with: "01KZZZZZZZZZZZZZZZZZZZZZZZ")
                let r = try await h.operatorClient.send(method, concrete, body: method == "POST" || method == "PUT" ? json([:]) : nil)
                #expect(r.status == 403, "operator \(method) \(path)")
            }
        }
    }
}

/// openapi.yaml and the router agree in both directions.
@Suite struct OpenAPITests {
    static func specRoutes() throws -> Set<String> {
        var dir = URL(fileURLWithPath: #filePath)
        while !FileManager.default.fileExists(atPath: dir.appendingPathComponent("Package.swift").path) {
            dir.deleteLastPathComponent()
        }
        let text = try String(contentsOf: dir.appendingPathComponent("openapi.yaml"), encoding: .utf8)
        var routes = Set<String>()
        var inPaths = false
        var path: String?
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("paths:") { inPaths = true; continue }
            guard inPaths else { continue }
            if let first = line.first, first != " ", first != "#" { inPaths = false; continue }
            if line.hasPrefix("  /") && line.hasSuffix(":") && !line.hasPrefix("   ") {
                path = String(line.dropFirst(2).dropLast()).trimmingCharacters(in: CharacterSet(charactersIn: "'\""))
            } else if let p = path, line.hasPrefix("    "), !line.hasPrefix("     "), line.hasSuffix(":") {
                let method = line.trimmingCharacters(in: .whitespaces).dropLast().uppercased()
                if ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"].contains(method) { routes.insert("\(method) \(p)") }
            }
        }
        return routes
    }

    @Test func everySpecRouteIsServedAndEveryServedRouteIsInTheSpec() async throws {
        try await ServerHarness.with { (h: ServerHarness) async throws in
            let served = Set(VaultServer(vault: h.vault, configuration: .init(socketPath: h.socket)).routes.map { "\($0.method) \($0.path)" })
            let spec = try Self.specRoutes()
            #expect(!spec.isEmpty)
            #expect(spec.subtracting(served).isEmpty, "in the spec but not served: \(spec.subtracting(served).sorted())")
            #expect(served.subtracting(spec).isEmpty, "served but not in the spec: \(served.subtracting(spec).sorted())")
            // And each answers on the socket (not the router's unknown-route 404).
            let anonymous = h.client(nil)
            for route in spec {
                let parts = route.split(separator: " ")
                let path = String(parts[1]).replacingOccurrences(of: "{id}", with: "01KZZZZZZZZZZZZZZZZZZZZZZZ")
                let r = try await anonymous.send(String(parts[0]), path)
                #expect(r.status == (VaultServer.openPaths.contains(path) ? 200 : 401), "\(route)")
            }
        }
    }
}

/// Restart without loss: what a client was told is written survives a daemon restart.
@Suite struct RestartTests {
    @Test func acknowledgedWritesSurviveARestart() async throws {
        let dir = "/tmp/sv-" + UUID().uuidString.prefix(8).lowercased()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir + "/keys", withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let first = try await DaemonInProcess.start(dir: dir, create: true)
        let op = first.client(first.operatorToken)
        #expect(try await op.send("POST", "/v1/admin/tenants", body: json(["id": "acme"])).status == 201)
        let issued = try await op.send("POST", "/v1/admin/tokens", body: json(["tenant": "acme", "role": "agent", "name": "a"]))
        let agentToken = Array((try issued.object()["token"] as! String).utf8)
        let agent = first.client(agentToken)
        var written: [String: Int] = [:]
        try await withThrowingTaskGroup(of: (String, Int).self) { group in
            for i in 0..<64 {
                group.addTask {
                    let r = try await agent.send("POST", "/v1/records", body: json(["subject": "s\(i % 8)", "category": "personal", "channel": "chat", "data": ["i": i]]))
                    return (try r.object()["id"] as! String, i)
                }
            }
            for try await (id, i) in group { written[id] = i }
        }
        await first.stop()
        let second = try await DaemonInProcess.start(dir: dir, create: false, operatorToken: first.operatorToken)
        let again = second.client(agentToken)
        do {
            for (id, i) in written {
                let r = try await again.send("GET", "/v1/records/\(id)")
                #expect(r.status == 200)
                #expect((try r.object()["data"] as? [String: Any])?["i"] as? Int == i)
            }
        } catch {
            await second.stop()
            throw error
        }
        await second.stop()
    }
}
