import Hummingbird
import VaultAPI
import VaultCore

extension VaultServer {
    func addHoldRoutes(_ router: RouteTable) {
        router.post("/v1/holds") { request, _ -> Response in
            var request = request
            let (p, tenant) = try self.tenantPrincipal(request, .admin)
            let body = try await self.body(&request, allowed: ["subject", "record", "reason", "reference"])
            let target: HoldTarget
            switch (body.has("subject"), body.has("record")) {
            case (true, false): target = .subject(try self.subject(body))
            case (false, true):
                guard let id = RecordID(try body.requiredString("record")) else { throw Problem.recordNotFound }
                target = .record(id)
            default: throw Problem(.badRequest, "give exactly one of \"subject\" and \"record\"")
            }
            let hold = try await self.vault.addHold(target, reason: try body.string("reason") ?? "",
                                                    reference: try body.string("reference") ?? "", tenant: tenant, actor: p.actor)
            return jsonResponse(.created) { w in Self.writeHold(hold, into: &w) }
        }

        router.get("/v1/holds") { request, _ -> Response in
            let (_, tenant) = try self.tenantPrincipal(request, .admin)
            let holds = try await self.vault.holds(tenant: tenant)
            return jsonResponse { w in
                w.beginObject()
                w.key("holds")
                w.beginArray()
                for h in holds { Self.writeHold(h, into: &w) }
                w.endArray()
                w.endObject()
            }
        }

        router.delete("/v1/holds/:id") { request, context -> Response in
            let (p, tenant) = try self.tenantPrincipal(request, .admin)
            try await self.vault.removeHold(context.parameters.get("id") ?? "", tenant: tenant, actor: p.actor)
            return Response(status: .noContent)
        }
    }

    static func writeHold(_ h: LegalHold, into w: inout JSONWriter) {
        w.beginObject()
        w.field("id", h.id)
        switch h.target {
        case .subjectTag(let tag): w.field("subject_tag", tag)
        case .record(let id): w.field("record", id.description)
        }
        w.field("reason", h.reason)
        w.field("reference", h.reference)
        w.time("created_at", h.createdAt)
        w.endObject()
    }
}
