import Hummingbird
import Sodium
import VaultAPI
import VaultCore

extension VaultServer {
    static let recordFields: Set<String> = ["subject", "category", "channel", "data", "retention"]

    /// Parses one record body (single or batch item).
    func newRecord(_ body: JSONBody) throws -> NewRecord {
        guard let subjectBytes = try body.sensitiveString("subject") else { throw Problem(.badRequest, "field \"subject\" is required") }
        let subject: Subject
        do { subject = try Subject(bytes: subjectBytes) } catch let e as VaultError { throw Problem.from(e) }
        let category: DataCategory, channel: Channel
        do {
            category = try DataCategory(parsing: try body.requiredString("category"))
            channel = try Channel(parsing: try body.requiredString("channel"))
        } catch let e as VaultError { throw Problem.from(e) }
        guard let data = try body.rawJSON("data") else { throw Problem(.badRequest, "field \"data\" is required") }
        return NewRecord(subject: subject, category: category, channel: channel, data: data,
                         retentionSeconds: try duration(try body.string("retention"), field: "retention"))
    }

    func recordID(_ context: VaultRequestContext) throws -> RecordID {
        // A malformed id answers exactly like an unknown one.
        guard let text = context.parameters.get("id"), let id = RecordID(text) else { throw Problem.recordNotFound }
        return id
    }

    func addRecordRoutes(_ router: RouteTable) {
        router.post("/v1/records") { request, _ -> Response in
            var request = request
            let (p, tenant) = try self.tenantPrincipal(request, .agent, .admin)
            let record = try self.newRecord(try await self.body(&request, allowed: Self.recordFields))
            let receipt = try await self.vault.write(record, tenant: tenant, actor: p.actor)
            return jsonResponse(.created) { w in Self.writeReceipt(receipt, into: &w, version: false) }
        }

        router.post("/v1/records/batch") { request, _ -> Response in
            var request = request
            let (p, tenant) = try self.tenantPrincipal(request, .agent, .admin)
            let body = try await self.body(&request, allowed: ["records"])
            guard let items = try body.objectArray("records", max: 1000, allowed: Self.recordFields) else {
                throw Problem(.badRequest, "field \"records\" is required")
            }
            var parsed: [Result<NewRecord, Problem>] = []
            for item in items {
                switch item {
                case .success(let b):
                    do { parsed.append(.success(try self.newRecord(b))) }
                    catch let problem as Problem { parsed.append(.failure(problem)) }
                case .failure(let problem): parsed.append(.failure(problem))
                }
            }
            let valid = parsed.compactMap { try? $0.get() }
            var written = await self.vault.writeBatch(valid, tenant: tenant, actor: p.actor)[...]
            return jsonResponse { w in
                w.beginObject()
                w.key("results")
                w.beginArray()
                for item in parsed {
                    let result: Result<RecordReceipt, Problem>
                    switch item {
                    case .failure(let problem): result = .failure(problem)
                    case .success: result = written.removeFirst().mapError(Problem.from)
                    }
                    switch result {
                    case .success(let r): Self.writeReceipt(r, into: &w, version: false)
                    case .failure(let problem):
                        w.beginObject()
                        w.key("error")
                        Self.writeProblem(problem, into: &w)
                        w.endObject()
                    }
                }
                w.endArray()
                w.endObject()
            }
        }

        router.get("/v1/records/:id") { request, context -> Response in
            let (p, tenant) = try self.tenantPrincipal(request, .agent, .admin)
            let record = try await self.vault.read(try self.recordID(context), tenant: tenant, actor: p.actor)
            return jsonResponse { w in Self.writeRecord(record, into: &w) }
        }

        router.put("/v1/records/:id") { request, context -> Response in
            var request = request
            let (p, tenant) = try self.tenantPrincipal(request, .agent, .admin)
            let id = try self.recordID(context)
            let body = try await self.body(&request, allowed: ["data"])
            guard let data = try body.rawJSON("data") else { throw Problem(.badRequest, "field \"data\" is required") }
            let receipt = try await self.vault.correct(id, data: data, tenant: tenant, actor: p.actor)
            return jsonResponse { w in Self.writeReceipt(receipt, into: &w, version: true) }
        }

        router.delete("/v1/records/:id") { request, context -> Response in
            let (p, tenant) = try self.tenantPrincipal(request, .admin)
            try await self.vault.delete(try self.recordID(context), tenant: tenant, actor: p.actor)
            return Response(status: .noContent)
        }
    }

    static func writeReceipt(_ r: RecordReceipt, into w: inout JSONWriter, version: Bool) {
        w.beginObject()
        w.field("id", r.id.description)
        w.time("created_at", r.createdAt)
        w.time("expires_at", r.expiresAt)
        if version { w.field("version", Int64(r.version)) }
        w.endObject()
    }

    static func writeRecord(_ r: OpenedRecord, into w: inout JSONWriter) {
        w.beginObject()
        w.field("id", r.id.description)
        w.key("subject")
        r.subject.withUnsafeBytes { w.string(bytes: $0) }
        w.field("category", r.category.rawValue)
        w.field("channel", r.channel.rawValue)
        w.time("created_at", r.createdAt)
        w.time("expires_at", r.expiresAt)
        w.field("version", Int64(r.version))
        w.key("data")
        r.data.withUnsafeBytes { w.raw($0) }
        w.endObject()
    }

    static func writeProblem(_ p: Problem, into w: inout JSONWriter) {
        w.beginObject()
        w.field("type", p.type)
        w.field("title", p.title)
        w.field("status", Int64(p.status.code))
        w.field("detail", p.detail)
        w.endObject()
    }
}
