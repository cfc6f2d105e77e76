import Hummingbird
import VaultAPI
import VaultCore

extension VaultServer {
    func subject(_ body: JSONBody) throws -> Subject {
        guard let bytes = try body.sensitiveString("subject") else { throw Problem(.badRequest, "field \"subject\" is required") }
        do { return try Subject(bytes: bytes) } catch let e as VaultError { throw Problem.from(e) }
    }

    func addSubjectRoutes(_ router: RouteTable) {
        // Listing for agents; with "export": true the disclosure export, admins only.
        router.post("/v1/subjects/records") { request, _ -> Response in
            var request = request
            let (p, tenant) = try self.tenantPrincipal(request, .agent, .admin)
            let body = try await self.body(&request, allowed: ["subject", "export"])
            let export = try body.bool("export") ?? false
            if export { try p.require(.admin) }
            let records = try await self.vault.records(of: try self.subject(body), tenant: tenant, actor: p.actor, export: export)
            return jsonResponse { w in
                w.beginObject()
                w.key("records")
                w.beginArray()
                for r in records { Self.writeRecord(r, into: &w) }
                w.endArray()
                w.endObject()
            }
        }

        router.post("/v1/subjects/erase") { request, _ -> Response in
            var request = request
            let (p, tenant) = try self.tenantPrincipal(request, .admin)
            let body = try await self.body(&request, allowed: ["subject", "reference"])
            let receipt = try await self.vault.erase(subject: try self.subject(body), reference: try body.string("reference"),
                                                     tenant: tenant, actor: p.actor)
            return jsonResponse { w in
                w.beginObject()
                w.field("erased", Int64(receipt.erased))
                w.key("receipt")
                w.beginObject()
                w.field("tenant", receipt.tenant)
                w.field("subject_tag", receipt.subjectTag)
                w.field("erased", Int64(receipt.erased))
                w.time("at", receipt.at)
                // The entry's number in the tenant's own audit log (as GET /v1/audit shows it),
                // never the chain's, which would count other tenants' operations.
                w.field("audit_seq", receipt.auditSeq)
                w.field("audit_hash", receipt.auditHash)
                w.endObject()
                w.endObject()
            }
        }
    }
}
