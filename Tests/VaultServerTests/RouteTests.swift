import Foundation
import Testing
import VaultClient
import VaultCore
import VaultServer

/// Every route and every status of docs/api.md's table, through the real socket.
@Suite struct RouteTests {
    let record: [String: Any] = ["subject": "cust-123", "category": "personal", "channel": "phone",
                                 "data": ["note": "called about invoice 77", "n": 3]]

    @Test func healthNeedsNoTokenAndEverythingElseDoes() async throws {
        try await ServerHarness.with { (h: ServerHarness) async throws in
            let anonymous = h.client(nil)
            let health = try await anonymous.send("GET", "/healthz")
            #expect(health.status == 200)
            #expect(try health.object()["status"] as? String == "ok")
            for (method, path) in [("GET", "/v1/records/01J0000000000000000000000A"), ("POST", "/v1/records"), ("GET", "/v1/admin/tenants"),
                                   ("GET", "/metrics"), ("GET", "/v1/report")] {
                let r = try await anonymous.send(method, path, body: method == "POST" ? json(record) : nil)
                #expect(r.status == 401, "\(method) \(path)")
                #expect(r.isProblem)
                #expect(r.header("www-authenticate") == "Bearer")
            }
            let bad = try await h.client(Array("svt_not-a-real-token-but-the-right-length-xxxxx".utf8)).send("GET", "/v1/admin/tenants")
            #expect(bad.status == 401)
            let garbage = try await h.client(Array("garbage".utf8)).send("GET", "/v1/admin/tenants")
            #expect(garbage.status == 401)
        }
    }

    @Test func recordLifecycle() async throws {
        try await ServerHarness.with { (h: ServerHarness) async throws in
            let t = try await h.tenant("acme")
            let created = try await t.agent.send("POST", "/v1/records", body: json(record))
            #expect(created.status == 201)
            let receipt = try created.object()
            let id = try #require(receipt["id"] as? String)
            #expect(id.count == 26)
            let createdAt = try #require(receipt["created_at"] as? String)
            let expiresAt = try #require(receipt["expires_at"] as? String)
            // Default retention is P92D.
            let c = try #require(RFC3339Box.parse(createdAt)), e = try #require(RFC3339Box.parse(expiresAt))
            #expect(e - c == 92 * 86_400_000)

            let got = try await t.agent.send("GET", "/v1/records/\(id)")
            #expect(got.status == 200)
            let body = try got.object()
            #expect(body["id"] as? String == id)
            #expect(body["subject"] as? String == "cust-123")
            #expect(body["category"] as? String == "personal")
            #expect(body["channel"] as? String == "phone")
            #expect(body["version"] as? Int == 1)
            #expect((body["data"] as? [String: Any])?["note"] as? String == "called about invoice 77")
            #expect(body["created_at"] as? String == createdAt)

            let corrected = try await t.agent.send("PUT", "/v1/records/\(id)", body: json(["data": ["note": "fixed"]]))
            #expect(corrected.status == 200)
            #expect(try corrected.object()["version"] as? Int == 2)
            let again = try await t.agent.send("GET", "/v1/records/\(id)")
            #expect((try again.object()["data"] as? [String: Any])?["note"] as? String == "fixed")

            // Deleting is the client's instruction: admins only.
            #expect(try await t.agent.send("DELETE", "/v1/records/\(id)").status == 403)
            #expect(try await t.admin.send("DELETE", "/v1/records/\(id)").status == 204)
            let gone = try await t.agent.send("GET", "/v1/records/\(id)")
            #expect(gone.status == 404)
            #expect(gone.isProblem)
            #expect(try await t.agent.send("PUT", "/v1/records/\(id)", body: json(["data": [:] as [String: Any]])).status == 404)
            #expect(try await t.admin.send("DELETE", "/v1/records/\(id)").status == 404)
        }
    }

    @Test func badInputGetsAProblemAndLeaksNothing() async throws {
        try await ServerHarness.with(maxBody: 4096) { (h: ServerHarness) async throws in
            let t = try await h.tenant("acme")
            let marker = "SUBJECT-MARKER-9917"
            var cases: [(String, [UInt8], Int)] = [
                ("malformed", Array(#"{"subject": "\#(marker)", "category": "personal""#.utf8), 400),
                ("not an object", Array("[1,2]".utf8), 400),
                ("empty", [], 400),
                ("unknown category", json(["subject": marker, "category": "secret", "channel": "phone", "data": [:] as [String: Any]]), 400),
                ("unknown channel", json(["subject": marker, "category": "personal", "channel": "pigeon", "data": [:] as [String: Any]]), 400),
                ("bad duration", json(["subject": marker, "category": "personal", "channel": "phone", "data": [:] as [String: Any], "retention": "P1Y"]), 400),
                ("wrong type", json(["subject": 42, "category": "personal", "channel": "phone", "data": [:] as [String: Any]]), 400),
                ("missing data", json(["subject": marker, "category": "personal", "channel": "phone"]), 400),
                ("unknown field", json(["subject": marker, "category": "personal", "channel": "phone", "data": [:] as [String: Any], "extra": 1]), 400),
                ("longer than policy", json(["subject": marker, "category": "personal", "channel": "phone", "data": [:] as [String: Any], "retention": "P93D"]), 422),
            ]
            cases.append(("too large", json(["subject": marker, "category": "personal", "channel": "phone",
                                              "data": ["blob": String(repeating: "x", count: 5000)]]), 413))
            for (name, body, status) in cases {
                let r = try await t.agent.send("POST", "/v1/records", body: body)
                #expect(r.status == status, "\(name)")
                #expect(r.isProblem, "\(name)")
                #expect(!r.text.contains(marker), "\(name) echoed the subject")
            }
            let unknownRoute = try await t.agent.send("GET", "/v1/nothing-here")
            #expect(unknownRoute.status == 404)
            #expect(unknownRoute.isProblem)
            // Malformed ids answer like unknown ones.
            #expect(try await t.agent.send("GET", "/v1/records/not-an-id").status == 404)
            // Nothing was written by any of the refused requests.
            let stats = try await h.operatorClient.send("GET", "/v1/admin/stats")
            #expect(try stats.object()["records"] as? Int == 0)
        }
    }

    @Test func batchWritesFailItemByItem() async throws {
        try await ServerHarness.with { (h: ServerHarness) async throws in
            let t = try await h.tenant("acme")
            let items: [[String: Any]] = [
                record,
                ["subject": "x", "category": "nope", "channel": "phone", "data": [:] as [String: Any]],
                record,
                ["subject": "y", "category": "personal", "channel": "phone", "data": 1, "retention": "P100D"],
            ]
            let r = try await t.agent.send("POST", "/v1/records/batch", body: json(["records": items]))
            #expect(r.status == 200)
            let results = try #require(try r.object()["results"] as? [[String: Any]])
            #expect(results.count == 4)
            #expect(results[0]["id"] is String)
            #expect((results[1]["error"] as? [String: Any])?["status"] as? Int == 400)
            #expect(results[2]["id"] is String)
            #expect((results[3]["error"] as? [String: Any])?["status"] as? Int == 422)
            let tooMany = try await t.agent.send("POST", "/v1/records/batch", body: json(["records": Array(repeating: record, count: 1001)]))
            #expect(tooMany.status == 400 || tooMany.status == 413)
        }
    }

    @Test func subjectsListingExportAndErasure() async throws {
        try await ServerHarness.with { (h: ServerHarness) async throws in
            let t = try await h.tenant("acme")
            for _ in 0..<3 { #expect(try await t.agent.send("POST", "/v1/records", body: json(record)).status == 201) }
            let listed = try await t.agent.send("POST", "/v1/subjects/records", body: json(["subject": "cust-123"]))
            #expect((try listed.object()["records"] as? [Any])?.count == 3)
            #expect(try await t.agent.send("POST", "/v1/subjects/records", body: json(["subject": "cust-123", "export": true])).status == 403)
            let export = try await t.admin.send("POST", "/v1/subjects/records", body: json(["subject": "cust-123", "export": true]))
            #expect((try export.object()["records"] as? [Any])?.count == 3)

            #expect(try await t.agent.send("POST", "/v1/subjects/erase", body: json(["subject": "cust-123"])).status == 403)
            let erased = try await t.admin.send("POST", "/v1/subjects/erase", body: json(["subject": "cust-123", "reference": "ticket-42"]))
            #expect(erased.status == 200)
            let body = try erased.object()
            #expect(body["erased"] as? Int == 3)
            let receipt = try #require(body["receipt"] as? [String: Any])
            #expect(receipt["tenant"] as? String == "acme")
            #expect((receipt["subject_tag"] as? String)?.count == 32)
            #expect(receipt["audit_seq"] is Int)
            #expect((receipt["audit_hash"] as? String)?.count == 64)
            #expect(!erased.text.contains("cust-123"))
            let after = try await t.agent.send("POST", "/v1/subjects/records", body: json(["subject": "cust-123"]))
            #expect((try after.object()["records"] as? [Any])?.count == 0)
            // The receipt's audit entry is in the tenant's audit log.
            let audit = try await t.admin.send("GET", "/v1/audit?limit=1000")
            let entries = try #require(try audit.object()["entries"] as? [[String: Any]])
            let entry = try #require(entries.first { $0["seq"] as? Int == receipt["audit_seq"] as? Int })
            #expect(entry["action"] as? String == "subject.erase")
            #expect(entry["hash"] as? String == receipt["audit_hash"] as? String)
            #expect(entry["reference"] as? String == "ticket-42")
        }
    }

    @Test func retentionExtensionsAndHolds() async throws {
        try await ServerHarness.with { (h: ServerHarness) async throws in
            let t = try await h.tenant("acme")
            let initial = try await t.admin.send("GET", "/v1/retention")
            #expect(try initial.object()["default"] as? String == "P92D")
            #expect(try await t.agent.send("GET", "/v1/retention").status == 403)
            let tooLong = try await t.admin.send("PUT", "/v1/retention", body: json(["default": "P365D"]))
            #expect(tooLong.status == 422)
            #expect(tooLong.isProblem)
            let set = try await t.admin.send("PUT", "/v1/retention", body: json(["default": "P30D", "categories": ["privacy_related": "P7D"]]))
            #expect(set.status == 200)
            #expect(try set.object()["default"] as? String == "P30D")
            #expect((try set.object()["categories"] as? [String: String])?["privacy_related"] == "P7D")
            #expect(try await t.admin.send("PUT", "/v1/retention", body: json(["default": "P30D", "categories": ["nope": "P7D"]])).status == 400)

            let ext = try await t.admin.send("POST", "/v1/retention/extensions", body: json([
                "purpose": "legal", "reference": "contract-7", "retention": "P365D", "categories": ["personal"],
                "until": "2099-01-01T00:00:00Z"]))
            #expect(ext.status == 201)
            let extID = try #require(try ext.object()["id"] as? String)
            #expect(try ext.object()["active"] as? Bool == true)
            #expect(try await t.admin.send("PUT", "/v1/retention", body: json(["default": "P30D", "categories": ["personal": "P365D"]])).status == 200)
            #expect(try await t.admin.send("POST", "/v1/retention/extensions", body: json(["purpose": "fun", "reference": "x", "retention": "P1D", "until": "2099-01-01T00:00:00Z"])).status == 400)
            #expect(try await t.admin.send("DELETE", "/v1/retention/extensions/\(extID)").status == 204)
            #expect(try await t.admin.send("DELETE", "/v1/retention/extensions/\(extID)").status == 404)

            let written = try await t.agent.send("POST", "/v1/records", body: json(record))
            let id = try #require(try written.object()["id"] as? String)
            let hold = try await t.admin.send("POST", "/v1/holds", body: json(["subject": "cust-123", "reason": "lawsuit", "reference": "case-1"]))
            #expect(hold.status == 201)
            let holdID = try #require(try hold.object()["id"] as? String)
            #expect(!hold.text.contains("cust-123"))
            #expect(try await t.admin.send("POST", "/v1/holds", body: json(["subject": "a", "record": id, "reason": "r"])).status == 400)
            let blocked = try await t.admin.send("POST", "/v1/subjects/erase", body: json(["subject": "cust-123"]))
            #expect(blocked.status == 409)
            #expect(blocked.isProblem)
            #expect(try await t.admin.send("DELETE", "/v1/records/\(id)").status == 409)
            let holds = try await t.admin.send("GET", "/v1/holds")
            #expect((try holds.object()["holds"] as? [[String: Any]])?.first?["reason"] as? String == "lawsuit")
            #expect(try await t.admin.send("DELETE", "/v1/holds/\(holdID)").status == 204)
            #expect(try await t.admin.send("POST", "/v1/subjects/erase", body: json(["subject": "cust-123"])).status == 200)
            let recordHold = try await t.admin.send("POST", "/v1/holds", body: json(["record": "01J0000000000000000000000A", "reason": "r"]))
            #expect(recordHold.status == 404)
        }
    }

    @Test func auditAndReport() async throws {
        try await ServerHarness.with { (h: ServerHarness) async throws in
            let t = try await h.tenant("acme")
            for channel in ["phone", "email", "chat"] {
                var r = record
                r["channel"] = channel
                _ = try await t.agent.send("POST", "/v1/records", body: json(r))
            }
            let first = try await t.admin.send("GET", "/v1/audit?limit=2")
            let page = try first.object()
            #expect((page["entries"] as? [Any])?.count == 2)
            let next = try #require(page["next"] as? Int)
            let second = try await t.admin.send("GET", "/v1/audit?after=\(next)&limit=100")
            let rest = try #require(try second.object()["entries"] as? [[String: Any]])
            #expect(rest.allSatisfy { ($0["seq"] as? Int ?? 0) > next })
            #expect(try await t.admin.send("GET", "/v1/audit?limit=0").status == 400)
            #expect(try await t.agent.send("GET", "/v1/audit").status == 403)

            let report = try await t.admin.send("GET", "/v1/report")
            #expect(report.status == 200)
            let body = try report.object()
            #expect(body["records"] as? Int == 3)
            #expect((body["by_channel"] as? [String: Int])?["email"] == 1)
            #expect((body["by_category"] as? [String: Int])?["personal"] == 3)
            #expect((body["expiries_per_day"] as? [[String: Any]])?.count == 92)
            #expect(body["retention"] is [String: Any])
        }
    }

    @Test func operatorRoutes() async throws {
        try await ServerHarness.with { (h: ServerHarness) async throws in
            let op = h.operatorClient
            #expect(try await op.send("POST", "/v1/admin/tenants", body: json(["id": "acme"])).status == 201)
            #expect(try await op.send("POST", "/v1/admin/tenants", body: json(["id": "acme"])).status == 409)
            #expect(try await op.send("POST", "/v1/admin/tenants", body: json(["id": "Not A Slug"])).status == 400)
            let list = try await op.send("GET", "/v1/admin/tenants")
            #expect((try list.object()["tenants"] as? [[String: Any]])?.first?["id"] as? String == "acme")
            let issued = try await op.send("POST", "/v1/admin/tokens", body: json(["tenant": "acme", "role": "agent", "name": "app"]))
            #expect(issued.status == 201)
            let tokenID = try #require(try issued.object()["id"] as? String)
            let token = Array(try #require(try issued.object()["token"] as? String).utf8)
            let agent = h.client(token)
            #expect(try await agent.send("POST", "/v1/records", body: json(record)).status == 201)
            // Operators never reach a payload, a subject or a report.
            #expect(try await op.send("POST", "/v1/records", body: json(record)).status == 403)
            #expect(try await op.send("POST", "/v1/subjects/records", body: json(["subject": "cust-123"])).status == 403)
            #expect(try await op.send("GET", "/v1/report").status == 403)
            #expect(try await op.send("GET", "/v1/audit").status == 403)
            // Agents never reach operator routes.
            #expect(try await agent.send("GET", "/v1/admin/tenants").status == 403)
            #expect(try await agent.send("POST", "/v1/admin/rotate").status == 403)
            #expect(try await agent.send("GET", "/metrics").status == 403)

            for path in ["/v1/admin/sweep", "/v1/admin/rotate", "/v1/admin/compact"] {
                let r = try await op.send("POST", path)
                #expect(r.status == 200, "\(path)")
            }
            let stats = try await op.send("GET", "/v1/admin/stats")
            #expect(try stats.object()["records"] as? Int == 1)
            #expect(try stats.object()["master_key_generation"] as? Int == 2)
            let verify = try await op.send("GET", "/v1/admin/audit/verify")
            #expect(try verify.object()["intact"] as? Bool == true)
            let opAudit = try await op.send("GET", "/v1/admin/audit?limit=1000")
            let entries = try #require(try opAudit.object()["entries"] as? [[String: Any]])
            #expect(entries.allSatisfy { $0["target"] is NSNull })
            let metrics = try await op.send("GET", "/metrics")
            #expect(metrics.status == 200)
            #expect(metrics.text.contains("shredvault_group_commit_batch_size"))
            #expect(metrics.text.contains("hb_requests"))

            #expect(try await op.send("DELETE", "/v1/admin/tokens/\(tokenID)").status == 204)
            #expect(try await agent.send("GET", "/v1/audit").status == 401)
            #expect(try await op.send("DELETE", "/v1/admin/tokens/\(tokenID)").status == 404)
            #expect(try await op.send("DELETE", "/v1/admin/tenants/acme").status == 204)
            #expect(try await op.send("DELETE", "/v1/admin/tenants/acme").status == 404)
        }
    }

    @Test func offboardingRevokesTheTenantsTokens() async throws {
        try await ServerHarness.with { (h: ServerHarness) async throws in
            let t = try await h.tenant("acme")
            #expect(try await t.agent.send("POST", "/v1/records", body: json(record)).status == 201)
            #expect(try await h.operatorClient.send("DELETE", "/v1/admin/tenants/acme").status == 204)
            #expect(try await t.agent.send("POST", "/v1/records", body: json(record)).status == 401)
            #expect(try await t.admin.send("GET", "/v1/report").status == 401)
        }
    }

    @Test func expiryEndToEnd() async throws {
        try await ServerHarness.with(bucketWidthSeconds: 1, manualClock: true) { (h: ServerHarness) async throws in
            let t = try await h.tenant("acme")
            var short = record
            short["retention"] = "PT5S"
            let id = try #require(try (await t.agent.send("POST", "/v1/records", body: json(short))).object()["id"] as? String)
            #expect(try await t.agent.send("GET", "/v1/records/\(id)").status == 200)
            h.clock.advance(seconds: 5)
            #expect(try await t.agent.send("GET", "/v1/records/\(id)").status == 404)
            // The bucket key dies once its whole one-second window is past.
            h.clock.advance(seconds: 1)
            let sweep = try await h.operatorClient.send("POST", "/v1/admin/sweep")
            #expect(try sweep.object()["buckets_destroyed"] as? Int == 1)
            #expect(try sweep.object()["entries_removed"] as? Int == 1)
        }
    }

    @Test func storageFullAnswers503AndReadsGoOn() async throws {
        try await ServerHarness.with(recordsMapSize: 2 << 20) { (h: ServerHarness) async throws in
            let t = try await h.tenant("acme")
            var big = record
            big["data"] = ["blob": String(repeating: "z", count: 60_000)]
            var ids: [String] = []
            var full: HTTPResponse?
            for _ in 0..<100 {
                let r = try await t.agent.send("POST", "/v1/records", body: json(big))
                if r.status == 201 { ids.append(try r.object()["id"] as! String) } else { full = r; break }
            }
            let refusal = try #require(full)
            #expect(refusal.status == 503)
            #expect(refusal.isProblem)
            #expect(!ids.isEmpty)
            for id in ids { #expect(try await t.agent.send("GET", "/v1/records/\(id)").status == 200) }
            let verify = try await h.operatorClient.send("GET", "/v1/admin/audit/verify")
            #expect(try verify.object()["intact"] as? Bool == true)
        }
    }
}

/// RFC 3339 parsing for assertions (the server's own parser is under test elsewhere).
enum RFC3339Box {
    static func parse(_ s: String) -> Int64? {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.date(from: s).map { Int64(($0.timeIntervalSince1970 * 1000).rounded()) }
    }
}
