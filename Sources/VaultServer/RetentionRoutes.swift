import Hummingbird
import VaultAPI
import VaultCore

extension VaultServer {
    func addRetentionRoutes(_ router: RouteTable) {
        router.get("/v1/retention") { request, _ -> Response in
            let (_, tenant) = try self.tenantPrincipal(request, .admin)
            let state = try await self.vault.retention(tenant: tenant)
            let now = self.vault.configuration.clock.now()
            return jsonResponse { w in Self.writeRetention(state, now: now, into: &w) }
        }

        router.put("/v1/retention") { request, _ -> Response in
            var request = request
            let (p, tenant) = try self.tenantPrincipal(request, .admin)
            let body = try await self.body(&request, allowed: ["default", "categories"])
            var policy = RetentionPolicy(defaultSeconds: try self.duration(try body.string("default"), field: "default")
                                             ?? RetentionPolicy.standardMaximum, categories: [:])
            for (name, value) in try body.object("categories") ?? [] {
                let category: DataCategory
                do { category = try DataCategory(parsing: name) } catch let e as VaultError { throw Problem.from(e) }
                policy.categories[category] = try self.duration(value, field: "categories.\(name)")
            }
            _ = try await self.vault.setRetentionPolicy(policy, tenant: tenant, actor: p.actor)
            let state = try await self.vault.retention(tenant: tenant)
            let now = self.vault.configuration.clock.now()
            return jsonResponse { w in Self.writeRetention(state, now: now, into: &w) }
        }

        router.post("/v1/retention/extensions") { request, _ -> Response in
            var request = request
            let (p, tenant) = try self.tenantPrincipal(request, .admin)
            let body = try await self.body(&request, allowed: ["purpose", "reference", "retention", "categories", "until"])
            guard let purpose = RetentionExtension.Purpose(rawValue: try body.requiredString("purpose")) else {
                throw Problem(.badRequest, "field \"purpose\" must be one of quality, legal, other")
            }
            guard let retention = try self.duration(try body.requiredString("retention"), field: "retention") else {
                throw Problem(.badRequest, "field \"retention\" is required")
            }
            let categories: [DataCategory]
            do {
                categories = try (try body.stringArray("categories") ?? DataCategory.allCases.map(\.rawValue)).map(DataCategory.init(parsing:))
            } catch let e as VaultError { throw Problem.from(e) }
            guard let until = RFC3339.parse(try body.requiredString("until")) else {
                throw Problem(.badRequest, "field \"until\" must be an RFC 3339 time")
            }
            let ext = try await self.vault.addRetentionExtension(
                purpose: purpose, reference: try body.requiredString("reference"), retentionSeconds: retention,
                categories: categories, until: until, tenant: tenant, actor: p.actor)
            let now = self.vault.configuration.clock.now()
            return jsonResponse(.created) { w in Self.writeExtension(ext, now: now, into: &w) }
        }

        router.delete("/v1/retention/extensions/:id") { request, context -> Response in
            let (p, tenant) = try self.tenantPrincipal(request, .admin)
            try await self.vault.endRetentionExtension(context.parameters.get("id") ?? "", tenant: tenant, actor: p.actor)
            return Response(status: .noContent)
        }
    }

    static func writeRetention(_ state: RetentionState, now: Int64, into w: inout JSONWriter) {
        w.beginObject()
        w.field("default", ISODuration.format(seconds: state.policy.defaultSeconds))
        w.key("categories")
        w.beginObject()
        for c in DataCategory.allCases { if let s = state.policy.categories[c] { w.field(c.rawValue, ISODuration.format(seconds: s)) } }
        w.endObject()
        w.key("extensions")
        w.beginArray()
        for e in state.extensions { writeExtension(e, now: now, into: &w) }
        w.endArray()
        w.endObject()
    }

    static func writeExtension(_ e: RetentionExtension, now: Int64, into w: inout JSONWriter) {
        w.beginObject()
        w.field("id", e.id)
        w.field("purpose", e.purpose.rawValue)
        w.field("reference", e.reference)
        w.field("retention", ISODuration.format(seconds: e.retentionSeconds))
        w.key("categories")
        w.beginArray()
        for c in e.categories { w.string(c.rawValue) }
        w.endArray()
        w.time("until", e.until)
        w.time("created_at", e.createdAt)
        if let ended = e.endedAt { w.time("ended_at", ended) }
        w.field("active", e.isActive(at: now))
        w.endObject()
    }
}
