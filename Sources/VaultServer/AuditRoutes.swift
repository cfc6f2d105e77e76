import Foundation
import Hummingbird
import VaultAPI
import VaultCore

extension VaultServer {
    func page(_ request: Request) throws -> (after: UInt64, limit: Int) {
        let q = request.uri.queryParameters
        var after: UInt64 = 0
        var limit = 100
        if let a = q.get("after") {
            // Capped at the largest signed 64-bit integer, as openapi.yaml declares (format
            // int64): clients in languages without unsigned 64-bit integers can send any value.
            guard let v = UInt64(a), v <= UInt64(Int64.max) else {
                throw Problem(.badRequest, "\"after\" must be a sequence number from 0 to \(Int64.max)")
            }
            after = v
        }
        if let l = q.get("limit") {
            guard let v = Int(l), (1...1000).contains(v) else { throw Problem(.badRequest, "\"limit\" must be 1 to 1000") }
            limit = v
        }
        return (after, limit)
    }

    func addAuditRoutes(_ router: RouteTable) {
        router.get("/v1/audit") { request, _ -> Response in
            let (_, tenant) = try self.tenantPrincipal(request, .admin)
            let (after, limit) = try self.page(request)
            // The tenant's own numbering, no prev: nothing here counts another tenant's operations.
            let entries = try await self.vault.auditEntries(tenant: tenant, after: after, limit: limit)
            return jsonResponse { w in Self.writeAudit(entries, after: after, chain: false, into: &w) }
        }

        // The transparency logs: an admin's is its tenant's, the operator's is every entry's.
        router.get("/v1/audit/head") { request, _ -> Response in
            let head = try await self.vault.auditTreeHead(tenant: try self.auditLogOwner(request))
            return jsonResponse { w in
                w.beginObject()
                w.field("size", head.size)
                w.field("root", Self.base64(head.root))
                w.time("at", head.at)
                w.optionalString("tenant", head.tenant)
                w.field("signature", Self.base64(head.signature))
                w.field("key_id", head.keyID)
                w.endObject()
            }
        }

        router.get("/v1/audit/proof") { request, _ -> Response in
            let owner = try self.auditLogOwner(request)
            let q = request.uri.queryParameters
            let seq = try Self.treeSize(q.get("seq"), "seq"), size = try Self.treeSize(q.get("size"), "size")
            let proof = try await self.vault.auditInclusionProof(tenant: owner, seq: seq, size: size)
            return jsonResponse { w in
                w.beginObject()
                // What the proof is of, so that the answer kept as it came says it.
                w.field("seq", seq)
                w.field("size", size)
                w.field("leaf_hash", Self.base64(proof.leafHash))
                Self.writePath(proof.path, into: &w)
                w.endObject()
            }
        }

        router.get("/v1/audit/consistency") { request, _ -> Response in
            let owner = try self.auditLogOwner(request)
            let q = request.uri.queryParameters
            let from = try Self.treeSize(q.get("from"), "from"), to = try Self.treeSize(q.get("to"), "to")
            let path = try await self.vault.auditConsistencyProof(tenant: owner, from: from, to: to)
            return jsonResponse { w in
                w.beginObject()
                w.field("from", from)
                w.field("to", to)
                Self.writePath(path, into: &w)
                w.endObject()
            }
        }

        // What the audit retention pruned, for a verifier whose saved entries start after it.
        router.get("/v1/audit/pruned") { request, _ -> Response in
            let prefix = try await self.vault.auditPrunedPrefix(tenant: try self.auditLogOwner(request))
            return jsonResponse { w in
                w.beginObject()
                w.field("size", prefix.size)
                w.key("subtrees")
                w.beginArray()
                for h in prefix.subtrees { w.string(Self.base64(h)) }
                w.endArray()
                w.endObject()
            }
        }

        // Public keys, without a token: a verifier fetches them once and keeps them.
        router.get("/v1/audit/keys") { _, _ -> Response in
            let keys = try await self.vault.auditPublicKeys()
            return jsonResponse { w in
                w.beginObject()
                w.key("keys")
                w.beginArray()
                for k in keys { Self.writeKey(k, into: &w) }
                w.endArray()
                w.endObject()
            }
        }

        // The operator rotates the signing key; the old public keys stay listed.
        router.post("/v1/admin/audit/keys") { request, context -> Response in
            let p = try self.operatorPrincipal(request)
            let key = try await maintenance("audit key rotation", context.logger) { try await self.vault.rotateAuditKey(actor: p.actor) }
            context.logger.notice("audit signing key rotated", metadata: ["key_id": "\(key.keyID)"])
            return jsonResponse(.created) { w in Self.writeKey(key, into: &w) }
        }

        router.get("/v1/report") { request, _ -> Response in
            let (p, tenant) = try self.tenantPrincipal(request, .admin)
            let report = try await self.vault.report(tenant: tenant, actor: p.actor)
            let now = self.vault.configuration.clock.now()
            // The transparency page for a browser (or `report --html`), the JSON for anyone else.
            if ReportPage.prefersHTML(request.headers[values: .accept]) {
                return Response(status: .ok,
                                headers: [.contentType: "text/html; charset=utf-8", .vary: "Accept",
                                          .init("Content-Security-Policy")!: ReportPage.contentSecurityPolicy,
                                          .init("X-Content-Type-Options")!: "nosniff"],
                                body: .init(byteBuffer: ByteBuffer(string: ReportPage.render(report, tenant: tenant.slug, now: now))))
            }
            var response = jsonResponse { w in
                w.beginObject()
                w.field("tenant", tenant.slug)
                w.time("generated_at", now)
                w.field("records", Int64(report.records))
                w.field("bytes", Int64(report.bytes))
                w.key("by_category")
                w.beginObject()
                for c in DataCategory.allCases { w.field(c.rawValue, Int64(report.byCategory[c] ?? 0)) }
                w.endObject()
                w.key("by_channel")
                w.beginObject()
                for c in Channel.allCases { w.field(c.rawValue, Int64(report.byChannel[c] ?? 0)) }
                w.endObject()
                w.key("oldest_record")
                if let oldest = report.oldestCreatedAt { w.string(RFC3339.format(milliseconds: oldest)) } else { w.null() }
                w.field("held_past_expiry", Int64(report.heldPastExpiry))
                w.field("holds", Int64(report.holds))
                w.key("expiries_per_day")
                w.beginArray()
                for (day, count) in report.expiriesPerDay.enumerated() {
                    w.beginObject()
                    w.field("date", String(RFC3339.format(milliseconds: now + Int64(day) * 86_400_000).prefix(10)))
                    w.field("records", Int64(count))
                    w.endObject()
                }
                w.endArray()
                w.key("retention")
                Self.writeRetention(report.retention, now: now, into: &w)
                w.endObject()
            }
            response.headers[.vary] = "Accept"
            return response
        }
    }

    /// A page of entries. `chain`: the operator's view, in the chain's numbering with `prev`;
    /// otherwise a tenant's view, in the tenant's own numbering, without `prev`.
    static func writeAudit(_ entries: [AuditEntry], after: UInt64, chain: Bool = true, into w: inout JSONWriter) {
        w.beginObject()
        w.key("entries")
        w.beginArray()
        for e in entries { writeEntry(e, chain: chain, into: &w) }
        w.endArray()
        w.field("next", entries.last?.seq ?? after)
        w.endObject()
    }

    /// One entry as a page (and a line of the stream) shows it; `chain` as in `writeAudit`.
    static func writeEntry(_ e: AuditEntry, chain: Bool, into w: inout JSONWriter) {
        w.beginObject()
        w.field("seq", e.seq)
        w.time("at", e.at)
        w.optionalString("tenant", e.tenant)
        w.field("actor", e.actor)
        w.field("action", e.action)
        w.optionalString("target", e.target)
        w.field("outcome", e.outcome)
        w.field("count", e.count)
        w.optionalString("reference", e.reference)
        if chain {
            w.field("prev", e.prev.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined())
        }
        w.field("hash", e.hashHex)
        w.endObject()
    }

    /// The routes that answer without a token.
    public static let openPaths: Set<String> = ["/healthz", "/v1/audit/keys"]

    /// Whose log a token reads: an admin its tenant's, the operator the operator's (nil).
    func auditLogOwner(_ request: Request) throws -> TenantID? {
        let p = try principal(request)
        switch p.info.role {
        case .admin: return try p.tenant()
        case .operator: return nil
        default: throw Problem.forbidden()
        }
    }

    /// A required tree size or entry number: an integer from 0 to the int64 cap.
    static func treeSize(_ text: String?, _ name: String) throws -> UInt64 {
        guard let text else { throw Problem(.badRequest, "\"\(name)\" is required") }
        guard let v = UInt64(text), v <= UInt64(Int64.max) else {
            throw Problem(.badRequest, "\"\(name)\" must be an integer from 0 to \(Int64.max)")
        }
        return v
    }

    static func base64(_ bytes: [UInt8]) -> String { Data(bytes).base64EncodedString() }

    static func writeKey(_ k: AuditPublicKey, into w: inout JSONWriter) {
        w.beginObject()
        w.field("key_id", k.keyID)
        w.field("public_key", base64(k.publicKey))
        w.time("from", k.from)
        w.endObject()
    }

    static func writePath(_ path: [[UInt8]], into w: inout JSONWriter) {
        w.key("path")
        w.beginArray()
        for h in path { w.string(base64(h)) }
        w.endArray()
    }
}
