import Logging
import Hummingbird
import Sodium
import VaultAPI
import VaultCore

extension VaultServer {
    func addAdminRoutes(_ router: RouteTable) {
        router.post("/v1/admin/tenants") { request, _ -> Response in
            var request = request
            let p = try self.operatorPrincipal(request)
            let body = try await self.body(&request, allowed: ["id"])
            let id: TenantID
            do { id = try TenantID(try body.requiredString("id")) } catch let e as VaultError { throw Problem.from(e) }
            let info = try await self.vault.createTenant(id, actor: p.actor)
            return jsonResponse(.created) { w in Self.writeTenant(info, into: &w) }
        }

        router.get("/v1/admin/tenants") { request, _ -> Response in
            _ = try self.operatorPrincipal(request)
            let tenants = try await self.vault.listTenants()
            return jsonResponse { w in
                w.beginObject()
                w.key("tenants")
                w.beginArray()
                for t in tenants { Self.writeTenant(t, into: &w) }
                w.endArray()
                w.endObject()
            }
        }

        router.delete("/v1/admin/tenants/:id") { request, context -> Response in
            let p = try self.operatorPrincipal(request)
            guard let id = try? TenantID(context.parameters.get("id") ?? "") else { throw Problem(.notFound, "no such tenant") }
            try await self.vault.offboardTenant(id, actor: p.actor)
            return Response(status: .noContent)
        }

        router.post("/v1/admin/tokens") { request, _ -> Response in
            var request = request
            let p = try self.operatorPrincipal(request)
            let body = try await self.body(&request, allowed: ["tenant", "role", "name"])
            guard let role = Role(rawValue: try body.requiredString("role")) else {
                throw Problem(.badRequest, "field \"role\" must be one of agent, admin, operator")
            }
            var tenant: TenantID? = nil
            if let slug = try body.string("tenant") {
                do { tenant = try TenantID(slug) } catch let e as VaultError { throw Problem.from(e) }
            }
            let issued = try await self.vault.issueToken(tenant: tenant, role: role, name: try body.requiredString("name"), actor: p.actor)
            return jsonResponse(.created) { w in
                w.beginObject()
                w.field("id", issued.info.id)
                w.key("token")
                issued.secret.withUnsafeBytes { w.string(bytes: $0) }
                w.optionalString("tenant", issued.info.tenant)
                w.field("role", issued.info.role.rawValue)
                w.field("name", issued.info.name)
                w.time("created_at", issued.info.createdAt)
                w.endObject()
            }
        }

        router.delete("/v1/admin/tokens/:id") { request, context -> Response in
            let p = try self.operatorPrincipal(request)
            try await self.vault.revokeToken(id: context.parameters.get("id") ?? "", actor: p.actor)
            return Response(status: .noContent)
        }

        router.post("/v1/admin/rotate") { request, context -> Response in
            let p = try self.operatorPrincipal(request)
            let s = try await maintenance("rotation", context.logger) { try await self.vault.rotate(actor: p.actor) }
            for line in s.skipped {
                context.logger.warning("rotation skipped a damaged key", metadata: ["key": "\(line)"])
            }
            return jsonResponse { w in
                w.beginObject()
                w.field("buckets_rekeyed", Int64(s.bucketsRekeyed))
                w.field("records_rewrapped", Int64(s.recordsRewrapped))
                w.field("tenants_renewed", Int64(s.tenantsRenewed))
                w.field("master_key_generation", s.masterGeneration)
                w.field("keystore_bytes_before", Int64(s.keystoreBytesBefore))
                w.field("keystore_bytes_after", Int64(s.keystoreBytesAfter))
                w.field("rewrap_transactions", Int64(s.rewrapTransactions))
                w.key("skipped")
                w.beginArray()
                for line in s.skipped { w.string(line) }
                w.endArray()
                w.endObject()
            }
        }

        router.post("/v1/admin/sweep") { request, context -> Response in
            let p = try self.operatorPrincipal(request)
            let s = try await maintenance("sweep", context.logger) { try await self.vault.sweep(actor: p.actor) }
            return jsonResponse { w in
                w.beginObject()
                w.field("buckets_destroyed", Int64(s.bucketsDestroyed))
                w.field("held_records_rewrapped", Int64(s.heldRecordsRewrapped))
                w.field("held_records_expired", Int64(s.heldRecordsExpired))
                w.field("entries_removed", Int64(s.entriesRemoved))
                w.field("ciphertexts_removed", Int64(s.ciphertextsRemoved))
                w.field("orphans_removed", Int64(s.orphansRemoved))
                w.field("audit_entries_pruned", s.auditEntriesPruned)
                w.field("audit_retention", ISODuration.format(seconds: s.auditRetentionSeconds))
                w.field("key_destruction_ms", s.keyDestructionMilliseconds)
                w.field("total_ms", s.totalMilliseconds)
                w.endObject()
            }
        }

        router.post("/v1/admin/compact") { request, context -> Response in
            _ = try self.operatorPrincipal(request)
            let (before, after) = try await maintenance("compaction", context.logger) { try await self.vault.compact() }
            return jsonResponse { w in
                w.beginObject()
                w.field("keystore_bytes_before", Int64(before))
                w.field("keystore_bytes_after", Int64(after))
                w.endObject()
            }
        }

        router.post("/v1/admin/snapshot") { request, context -> Response in
            _ = try self.operatorPrincipal(request)
            guard self.vault.hasJournal else { throw Problem(.conflict, "this vault runs without a journal (serve --journal)") }
            let info = try await maintenance("snapshot", context.logger) { try await self.vault.snapshot() }
            context.logger.info("snapshot taken", metadata: ["epoch": "\(info.epoch)", "sequence": "\(info.sequence)",
                                                              "bytes": "\(info.bytes)"])
            return jsonResponse { w in Self.writeSnapshot(info, into: &w) }
        }

        // Served by a standby (StandbyServer); the writer has nothing to promote.
        router.post("/v1/admin/promote") { request, _ -> Response in
            _ = try self.operatorPrincipal(request)
            guard let r = try await self.vault.journalReport() else {
                throw Problem(.conflict, "this vault runs without a journal: there is no standby to promote")
            }
            throw Problem(.conflict, "this vault is the journal's writer\(r.term.map { " (term \($0))" } ?? ""); "
                          + "promote a standby (serve --standby) instead")
        }

        router.get("/v1/admin/journal") { request, _ -> Response in
            _ = try self.operatorPrincipal(request)
            guard let r = try await self.vault.journalReport() else {
                throw Problem(.notFound, "this vault runs without a journal (serve --journal)")
            }
            return jsonResponse { w in
                w.beginObject()
                w.field("location", r.location)
                w.field("sequence", r.sequence)
                w.field("epoch", r.epoch)
                w.field("appended_since_start", Int64(r.appendedSinceStart))
                w.field("bytes_since_start", Int64(r.bytesSinceStart))
                w.key("snapshots")
                w.beginArray()
                for s in r.snapshots { Self.writeSnapshot(s, into: &w) }
                w.endArray()
                w.optionalString("broken", r.broken)
                w.field("role", r.deposed == nil ? "primary" : "deposed")
                if let term = r.term {
                    w.field("term", term)
                }
                w.optionalString("deposed", r.deposed)
                w.key("standbys")
                w.beginArray()
                for s in r.standbys {
                    w.beginObject()
                    w.field("name", s.name)
                    w.field("applied", s.applied)
                    w.field("lag_ms", Int64(s.lagMilliseconds))
                    w.field("seen_ms_ago", Int64(s.secondsSinceSeen * 1000))
                    w.endObject()
                }
                w.endArray()
                w.endObject()
            }
        }

        router.get("/v1/admin/stats") { request, _ -> Response in
            _ = try self.operatorPrincipal(request)
            let s = try await self.vault.statistics()
            return jsonResponse { w in
                w.beginObject()
                w.field("tenants", Int64(s.tenants))
                w.field("records", Int64(s.records))
                w.field("audit_entries", s.auditEntries)
                w.field("audit_archived", s.auditArchived)
                w.field("audit_moves_failed", Int64(s.auditMovesFailed))
                w.field("audit_tree_gaps", Int64(s.auditTreeGaps))
                w.field("audit_pruned", s.auditPruned)
                w.field("master_key_generation", s.masterKeyGeneration)
                w.field("keystore_bytes", Int64(s.keystoreBytes))
                w.field("record_store_bytes", Int64(s.recordStoreBytes))
                w.field("batches", Int64(s.batches))
                w.field("batched_operations", Int64(s.batchedOperations))
                w.endObject()
            }
        }

        // Operators read audit entries without targets, and verify the chain.
        router.get("/v1/admin/audit") { request, _ -> Response in
            _ = try self.operatorPrincipal(request)
            let (after, limit) = try self.page(request)
            let entries = try await self.vault.auditEntries(tenant: nil, after: after, limit: limit)
            return jsonResponse { w in Self.writeAudit(entries, after: after, into: &w) }
        }

        router.get("/v1/admin/audit/verify") { request, _ -> Response in
            _ = try self.operatorPrincipal(request)
            let v = try await self.vault.verifyAudit()
            return jsonResponse { w in
                w.beginObject()
                w.field("entries", v.entries)
                w.field("pruned", v.pruned)
                w.field("intact", v.isIntact)
                w.key("first_broken")
                if let b = v.firstBroken { w.uint(b) } else { w.null() }
                w.optionalString("reason", v.reason)
                w.endObject()
            }
        }
    }

    static func writeSnapshot(_ s: SnapshotInfo, into w: inout JSONWriter) {
        w.beginObject()
        w.field("epoch", s.epoch)
        w.field("sequence", s.sequence)
        w.field("bytes", Int64(s.bytes))
        w.endObject()
    }

    static func writeTenant(_ t: TenantInfo, into w: inout JSONWriter) {
        w.beginObject()
        w.field("id", t.id)
        w.time("created_at", t.createdAt)
        w.field("status", t.offboarded ? "offboarded" : "active")
        w.endObject()
    }
}

/// Runs a maintenance operation for the operator: a failure of the environment (a read-only
/// or full data directory, an unwritable key directory) is told as it is, since only an
/// operator token gets here and the message names paths and causes, never key material.
/// The operations are crash-safe, so a failed one leaves the vault consistent.
func maintenance<T: Sendable>(_ name: String, _ logger: Logger, _ operation: () async throws -> T) async throws -> T {
    do {
        return try await operation()
    } catch let e as VaultError {
        switch e {
        case .io(let m), .masterKey(let m), .auditKey(let m), .dataDirectory(let m):
            logger.error("maintenance failed", metadata: ["operation": "\(name)", "error": "\(m)"])
            throw Problem(.serviceUnavailable, "\(name) failed: \(m); the vault is consistent, run it again once this is fixed")
        default:
            throw e
        }
    }
}
