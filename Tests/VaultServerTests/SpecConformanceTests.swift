import Foundation
import Testing
import VaultClient
import VaultCore
import VaultServer

/// What schemathesis (`scripts/api-fuzz`) found where openapi.yaml and the server disagreed,
/// kept fixed through the real socket: undeclared methods, the audit cursor's cap, the
/// duration grammar, and an extension that ends in the past.
@Suite struct SpecConformanceTests {
    static var specText: String {
        var dir = URL(fileURLWithPath: #filePath)
        while !FileManager.default.fileExists(atPath: dir.appendingPathComponent("Package.swift").path) {
            dir.deleteLastPathComponent()
        }
        return (try? String(contentsOf: dir.appendingPathComponent("openapi.yaml"), encoding: .utf8)) ?? ""
    }

    /// The `Duration` schema's pattern, as openapi.yaml states it.
    static func durationPattern() throws -> NSRegularExpression {
        let lines = specText.split(separator: "\n", omittingEmptySubsequences: false)
        let start = try #require(lines.firstIndex { $0 == "    Duration:" })
        let line = try #require(lines[start...].first { $0.hasPrefix("      pattern: '") })
        var pattern = String(line.dropFirst("      pattern: '".count).dropLast())
        // JSON Schema patterns are ECMA-262, where "$" matches only at the very end; ICU's "$"
        // also matches before a final line terminator ("P1D\n"). "\z" is ECMA's "$" in ICU.
        if pattern.hasSuffix("$") { pattern = String(pattern.dropLast()) + "\\z" }
        return try NSRegularExpression(pattern: pattern)
    }

    @Test func anUndeclaredMethodOnAServedPathIs405WithAllow() async throws {
        try await ServerHarness.with { (h: ServerHarness) async throws in
            let anonymous = h.client(nil)
            let cases: [(method: String, path: String, allow: String)] = [
                ("TRACE", "/v1/records", "POST"),
                ("OPTIONS", "/v1/records", "POST"),
                ("GET", "/v1/records", "POST"),
                ("TRACE", "/v1/records/01KZZZZZZZZZZZZZZZZZZZZZZZ", "DELETE, GET, PUT"),
                ("PATCH", "/v1/records/anything", "DELETE, GET, PUT"),
                ("POST", "/v1/retention", "GET, PUT"),
                ("TRACE", "/healthz", "GET"),
                ("DELETE", "/v1/admin/tenants", "GET, POST"),
                ("PUT", "/v1/admin/tenants/acme", "DELETE"),
                ("GET", "/v1/records/batch", "POST"),
            ]
            for c in cases {
                let r = try await anonymous.send(c.method, c.path)
                #expect(r.status == 405, "\(c.method) \(c.path)")
                #expect(r.isProblem, "\(c.method) \(c.path)")
                #expect((try? r.object())?["type"] as? String == "/problems/method-not-allowed")
                #expect(r.header("allow") == c.allow, "\(c.method) \(c.path)")
            }
            // A path nobody serves stays 404, whatever the method; so does a served method's
            // parameter that is empty (no route has an empty segment).
            for (method, path) in [("TRACE", "/v1/nothing"), ("GET", "/v1/records/"), ("GET", "/v2/records"), ("TRACE", "/")] {
                let r = try await anonymous.send(method, path)
                #expect(r.status == 404, "\(method) \(path)")
                #expect(r.header("allow") == nil)
            }
            // The served method itself still answers as before (401 without a token).
            #expect(try await anonymous.send("GET", "/v1/retention").status == 401)
        }
    }

    @Test func anAuditCursorAboveTheSpecsCapIs400() async throws {
        try await ServerHarness.with { (h: ServerHarness) async throws in
            let t = try await h.tenant("acme")
            let cap = "9223372036854775807"
            #expect(Self.specText.contains("maximum: \(cap)"), "openapi.yaml declares the cap")
            for (client, path) in [(t.admin, "/v1/audit"), (h.operatorClient, "/v1/admin/audit")] {
                let atCap = try await client.send("GET", "\(path)?after=\(cap)")
                #expect(atCap.status == 200, "\(path) at the cap")
                #expect((try atCap.object()["entries"] as? [Any])?.isEmpty == true)
                for above in ["9223372036854775808", "18446744073709551615", "18446744073709551616", "-1", "1e3"] {
                    let r = try await client.send("GET", "\(path)?after=\(above)")
                    #expect(r.status == 400, "\(path)?after=\(above)")
                    #expect(r.isProblem)
                }
            }
        }
    }

    /// The spec's pattern and the parser accept exactly the same strings: hand-picked edge
    /// cases plus every string of up to five characters over the grammar's alphabet.
    @Test func theDurationPatternAdmitsExactlyWhatTheVaultParses() throws {
        let regex = try Self.durationPattern()
        func matches(_ s: String) -> Bool {
            regex.firstMatch(in: s, range: NSRange(s.startIndex..., in: s)) != nil
        }
        func parses(_ s: String) -> Bool {
            do {
                _ = try ISODuration.seconds(s)
                return true
            } catch VaultError.refused {
                return true  // well-formed, above 100 years: 422, not 400
            } catch {
                return false
            }
        }
        var corpus = ["PSW", "P", "PT", "P1DT", "P0D", "P01D", "PT0S", "P1D1W", "PT1S1H", "P1W2D", "P1DT1H1M1S",
                      "P999999999999W", "P1000000000000W", "P36500D", "P36501D", "P1Y", "P1M", "PT1M", "P2W3DT4H5M6S",
                      "P1.5D", "p1d", " P1D", "P1D ", "P1H", "PT1D", "P1WT1S", "PT12H30M", "P１D", "P1D\n"]
        let alphabet = Array("PWDTHMS019")
        var level = [""]
        for _ in 1...5 {
            level = level.flatMap { prefix in alphabet.map { prefix + String($0) } }
            corpus += level.filter { $0.hasPrefix("P") }
        }
        var disagreements: [String] = []
        for s in corpus where matches(s) != parses(s) { disagreements.append(s) }
        #expect(disagreements.isEmpty, "pattern and parser disagree on \(disagreements.prefix(20))")
    }

    @Test func durationsOverHTTP() async throws {
        try await ServerHarness.with { (h: ServerHarness) async throws in
            let t = try await h.tenant("acme")
            for (text, status) in [("PSW", 400), ("P1D1W", 400), ("P0D", 400), ("P1DT", 400), ("P30D", 200),
                                   ("P4W", 200), ("P1DT12H", 200), ("P93D", 422), ("P999999999999W", 422)] {
                let r = try await t.admin.send("PUT", "/v1/retention", body: json(["default": text]))
                #expect(r.status == status, "\(text)")
                if status != 200 { #expect(r.isProblem) }
            }
        }
    }

    @Test func anExtensionEndingInThePastIsRefusedWith422() async throws {
        try await ServerHarness.with { (h: ServerHarness) async throws in
            let t = try await h.tenant("acme")
            let aSecondAgo = ISO8601DateFormatter().string(from: Date(timeIntervalSinceNow: -1))
            for until in ["2020-01-01T00:00:00Z", aSecondAgo] {
                let r = try await t.admin.send("POST", "/v1/retention/extensions", body: json([
                    "purpose": "legal", "reference": "contract-7", "retention": "P365D", "until": until]))
                #expect(r.status == 422, "\(until)")
                #expect(r.isProblem)
                #expect((try? r.object())?["type"] as? String == "/problems/refused")
            }
            // Malformed stays 400; a future time is accepted.
            let malformed = try await t.admin.send("POST", "/v1/retention/extensions", body: json([
                "purpose": "legal", "reference": "contract-7", "retention": "P365D", "until": "yesterday"]))
            #expect(malformed.status == 400)
            // Nothing was recorded by the refusals.
            let state = try await t.admin.send("GET", "/v1/retention").object()
            #expect((state["extensions"] as? [Any])?.isEmpty == true)
            let future = try await t.admin.send("POST", "/v1/retention/extensions", body: json([
                "purpose": "legal", "reference": "contract-7", "retention": "P365D", "until": "2999-01-01T00:00:00Z"]))
            #expect(future.status == 201)
        }
    }
}
