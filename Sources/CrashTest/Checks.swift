import Foundation
import VaultClient
import VaultCore

/// A read as the checks see it (Sendable, unlike `Outcome`'s JSON).
struct Seen: Sendable {
    let status: Int?
    let summary: String
    let observed: Observed?
    /// Wall-clock window in which the daemon answered: its `now` lies inside.
    let sent: Int64
    let received: Int64
}

/// A subject listing as the checks see it.
struct Listing: Sendable {
    let status: Int?
    let summary: String
    let records: [(id: String, observed: Observed)]
    let sent: Int64
    let received: Int64
}

/// The checks after a restart: every acknowledged promise against what the daemon now answers,
/// resolving each operation that was in flight at the kill (it happened entirely, or not at all).
final class Checker {
    let model: VaultModel
    let daemon: Daemon
    let socket: String
    let tokens: [TenantTokens]
    let op: VaultHTTPClient
    let violations: ViolationLog
    let round: Int
    let threads: Int
    var rng: SeededRandom
    /// Observations that are not violations (orphans swept after the crash, batches half there…).
    var notes: [String] = []
    var checkedRecords = 0
    var listedSubjects = 0
    /// Seconds the post-check rotation and compaction took (the next kill aims inside them).
    var rotationSeconds: Double?
    var compactionSeconds: Double?
    var sweepSeconds: Double?

    init(model: VaultModel, daemon: Daemon, tokens: [TenantTokens], op: VaultHTTPClient, violations: ViolationLog,
         round: Int, threads: Int, rng: SeededRandom) {
        self.model = model
        self.daemon = daemon
        self.socket = daemon.socket
        self.tokens = tokens
        self.op = op
        self.violations = violations
        self.round = round
        self.threads = threads
        self.rng = rng
    }

    /// Set when the daemon stopped answering: the remaining checks are skipped.
    private(set) var daemonLost = false

    private func lost(_ what: String, _ outcome: Outcome) {
        daemonLost = true
        violations.add("daemon stopped answering during the checks", "\(what): \(outcome.summary)")
    }

    /// Runs every check. `full`: every record and every subject, not just this round's and a sample.
    func run(full: Bool, rotate: Bool, compact: Bool, rotationInFlight: Bool, killWall: Int64) {
        timed("reads") { checkRecords(full: full) }
        if daemonLost { return }
        timed("listings") { checkSubjects(full: full, killWall: killWall) }
        if daemonLost { return }
        timed("sweeps") { checkSweepsAndCounts(rotationInFlight: rotationInFlight) }
        if daemonLost { return }
        timed("tokens") { checkTokens() }
        if daemonLost { return }
        timed("audit") { checkAudit() }
        if daemonLost { return }
        if rotate || compact { timed("maintenance") { maintenance(rotate: rotate, compact: compact) } }
    }

    /// Seconds per phase, for `--timings`.
    var timings: [(String, Double)] = []

    private func timed(_ phase: String, _ body: () -> Void) {
        let started = monotonicSeconds()
        body()
        timings.append((phase, monotonicSeconds() - started))
    }

    // MARK: Records by id

    private func clients() -> [[VaultHTTPClient]] {
        (0..<threads).map { _ in
            tokens.map { VaultHTTPClient(endpoint: .unixSocket(path: socket), token: $0.agent, timeout: 60) }
        }
    }

    private func read(_ records: [RecordModel]) -> [Seen] {
        let clients = self.clients()
        let targets = records.map { ($0.id, $0.tenant) }
        return parallelMap(targets.count, threads: threads) { worker, i in
            let sent = wallMilliseconds()
            let outcome = clients[worker][targets[i].1].call("GET", "/v1/records/\(targets[i].0)")
            let received = wallMilliseconds()
            return Seen(status: outcome.status, summary: outcome.summary, observed: outcome.object.map(Observed.init),
                        sent: sent, received: received)
        }
    }

    private func checkRecords(full: Bool) {
        var chosen: [RecordModel]
        if full {
            chosen = model.records
        } else {
            chosen = model.records.filter { $0.touched == round || $0.inFlight != nil }
            let others = model.records.filter { $0.touched != round && $0.inFlight == nil }
            chosen += others.count <= 150 ? others : Array(others.shuffled(using: &rng).prefix(150))
        }
        let seen = read(chosen)
        checkedRecords += chosen.count
        var eraseOutcomes: [ObjectIdentifier: [(RecordModel, Bool)]] = [:]
        for (r, s) in zip(chosen, seen) {
            guard let status = s.status else {
                lost("GET /v1/records/\(r.id)", .noAnswer(s.summary))
                return
            }
            if let present = evaluate(r, s, status: status), r.inFlight == .erase {
                eraseOutcomes[ObjectIdentifier(r.subject), default: []].append((r, present))
            }
        }
        // An erasure in flight: all of the subject's records gone, or none.
        for subject in model.subjects {
            guard let before = subject.pendingErase else { continue }
            let outcomes = eraseOutcomes[ObjectIdentifier(subject)] ?? []
            let gone = outcomes.filter { !$0.1 }.count
            if gone > 0 && gone < outcomes.count {
                violations.add("erasure applied in part",
                               "subject \(subject.name): the erasure sent at the kill removed \(gone) of its \(outcomes.count) records: "
                               + outcomes.map { "\($0.0.id) \($0.1 ? "present" : "gone")" }.joined(separator: ", "))
            }
            for (r, present) in outcomes {
                r.inFlight = nil
                if present {
                    r.log(round, "erasure without answer did not happen (record present after restart)")
                } else {
                    r.state = .erased
                    r.log(round, "erasure without answer happened (gone after restart)")
                    subject.records.removeAll { $0 === r }
                }
            }
            if !before.isEmpty && gone == outcomes.count { notes.append("an erasure in flight at the kill had happened (\(gone) records)") }
            subject.pendingErase = nil
        }
    }

    /// Compares one read with the log and resolves an operation in flight. Returns whether the
    /// record is present when it was under an erasure in flight (nil otherwise).
    private func evaluate(_ r: RecordModel, _ s: Seen, status: Int) -> Bool? {
        let o = s.observed
        func sameFields() -> Bool {
            o?.subject == r.subject.name && o?.category == r.category && o?.channel == r.channel
        }
        func matches(_ content: Payload, _ version: Int) -> Bool {
            status == 200 && o?.payload == content && o?.version == version && sameFields()
        }
        let got = status == 200 ? (o?.label ?? "an unreadable body") + (sameFields() ? "" : " with wrong subject/category/channel") : s.summary

        if r.state.isGone {
            if status != 404 {
                violations.add(r.state == .expired ? "expired record came back" : "\(r.state == .erased ? "erased" : "deleted") record came back",
                               "\(r.describe); GET answered \(got)")
            }
            return nil
        }
        if r.ephemeral {
            if r.expiresAt <= s.sent {
                if status != 404 { violations.add("expired record still readable", "\(r.describe); expires_at \(r.expiresAt), read at \(s.sent): \(got)") }
            } else if r.expiresAt > s.received {
                if !matches(r.content, r.version) { violations.add("acknowledged record lost or changed", "\(r.describe); GET answered \(got)") }
            } else if status != 404 && !matches(r.content, r.version) {
                violations.add("acknowledged record changed", "\(r.describe); GET answered \(got)")
            }
            return nil
        }
        switch r.inFlight {
        case nil:
            if !matches(r.content, r.version) {
                violations.add(status == 404 ? "acknowledged record lost" : "acknowledged record changed",
                               "\(r.describe); GET answered \(got)")
            }
        case .correct(let next):
            r.inFlight = nil
            if matches(next, r.version + 1) {
                r.content = next
                r.version += 1
                r.log(round, "correction without answer happened (v\(r.version) after restart)")
            } else if matches(r.content, r.version) {
                r.log(round, "correction without answer did not happen")
            } else {
                violations.add(status == 404 ? "acknowledged record lost" : "correction neither applied nor absent",
                               "\(r.describe); GET answered \(got)")
            }
        case .delete:
            r.inFlight = nil
            if status == 404 {
                r.state = .deleted
                r.log(round, "deletion without answer happened")
                r.subject.records.removeAll { $0 === r }
            } else if matches(r.content, r.version) {
                r.log(round, "deletion without answer did not happen")
            } else {
                violations.add("deletion neither applied nor absent", "\(r.describe); GET answered \(got)")
            }
        case .erase:
            if status == 404 { return false }
            if matches(r.content, r.version) { return true }
            violations.add("erasure neither applied nor absent", "\(r.describe); GET answered \(got)")
            return true
        }
        return nil
    }

    // MARK: Subjects

    private func checkSubjects(full: Bool, killWall: Int64) {
        var chosen: [SubjectModel]
        if full {
            chosen = model.subjects
        } else {
            // Subjects with writes in flight must be listed (that is how those writes are found);
            // of the others, a sample (every subject in a full check).
            chosen = model.subjects.filter { !$0.pendingWrites.isEmpty }
            let others = model.subjects.filter { $0.pendingWrites.isEmpty }
            let touched = others.filter { $0.touched == round }, untouched = others.filter { $0.touched != round }
            chosen += touched.shuffled(using: &rng).prefix(16) + untouched.shuffled(using: &rng).prefix(4)
        }
        let clients = self.clients()
        let targets = chosen.map { ($0.name, $0.tenant) }
        let listings: [Listing] = parallelMap(targets.count, threads: threads) { worker, i in
            let sent = wallMilliseconds()
            let outcome = clients[worker][targets[i].1].call("POST", "/v1/subjects/records", ["subject": targets[i].0])
            let received = wallMilliseconds()
            let items = (outcome.object?["records"] as? [[String: Any]]) ?? []
            return Listing(status: outcome.status, summary: outcome.summary,
                           records: items.compactMap { item in (item["id"] as? String).map { ($0, Observed(item)) } },
                           sent: sent, received: received)
        }
        listedSubjects += chosen.count
        // Batches in flight: how many of their (regular) items turned up, and how many did not.
        var batchFound: [String: (found: Int, missing: Int)] = [:]
        for (subject, listing) in zip(chosen, listings) {
            guard listing.status == 200 else {
                if listing.status == nil { lost("listing of \(subject.name)", .noAnswer(listing.summary)); return }
                violations.add("listing refused", "subject \(subject.name): \(listing.summary)")
                continue
            }
            var listed: [String: Observed] = [:]
            for item in listing.records { listed[item.id] = item.observed }
            for r in subject.records where r.state == .live {
                let o = listed.removeValue(forKey: r.id)
                let mustBeThere = !r.ephemeral || r.expiresAt > listing.received
                let mustBeAbsent = r.ephemeral && r.expiresAt <= listing.sent
                if let o {
                    if mustBeAbsent {
                        violations.add("expired record listed", "\(r.describe); listed at \(listing.sent)")
                    } else if o.payload != r.content || o.version != r.version {
                        violations.add("wrong content listed", "\(r.describe); listing returned \(o.label)")
                    }
                } else if mustBeThere {
                    violations.add("acknowledged record missing from its subject's listing", r.describe)
                }
            }
            // What is left was never acknowledged: an in-flight write of this subject, or a violation.
            for (id, o) in listed {
                if let known = model.byID[id] {
                    violations.add("\(known.state == .live ? "record of another subject" : "\(known.state) record") listed",
                                   "subject \(subject.name) lists \(known.describe)")
                    continue
                }
                guard let payload = o.payload, let i = subject.pendingWrites.firstIndex(where: { $0.payload.tag == payload.tag }) else {
                    violations.add("record nobody wrote", "subject \(subject.name) lists \(id) with \(o.label), "
                        + "which matches no write sent to it (in flight: \(subject.pendingWrites.map(\.payload.tag)))")
                    continue
                }
                let w = subject.pendingWrites.remove(at: i)
                guard payload == w.payload, o.version == 1, o.category == w.category, o.channel == w.channel,
                      let expires = o.expiresAt else {
                    violations.add("in-flight write committed with other content",
                                   "subject \(subject.name), \(id): sent \(w.payload.label) \(w.category)/\(w.channel) v1, "
                                   + "listed \(o.label) \(o.category ?? "?")/\(o.channel ?? "?")")
                    continue
                }
                let record = RecordModel(id: id, subject: subject, category: w.category, channel: w.channel, ephemeral: subject.ephemeral,
                                         expiresAt: expires, content: payload, round: round,
                                         note: "sent\(w.batch.map { " in batch \($0)" } ?? ""), no answer; committed (found after restart)")
                subject.records.append(record)
                model.add(record)
                if let b = w.batch, !subject.ephemeral { batchFound[batchKey(subject, b), default: (0, 0)].found += 1 }
            }
            for w in subject.pendingWrites {
                if let b = w.batch, !subject.ephemeral { batchFound[batchKey(subject, b), default: (0, 0)].missing += 1 }
                // An ephemeral write may have committed and expired unseen: it counts as uncertain until swept.
                if let retention = w.retentionMs { model.unresolvedEphemeral.append(killWall + retention) }
            }
            subject.pendingWrites = []
        }
        for (key, n) in batchFound where n.found > 0 && n.missing > 0 {
            notes.append("batch \(key) in flight at the kill: \(n.found) items committed, \(n.missing) not")
        }
    }

    private func batchKey(_ s: SubjectModel, _ batch: Int) -> String {
        // Subjects are named e<epoch>-w<worker>-s<n>: the batch belongs to the worker.
        "\(s.name.split(separator: "-").dropLast().joined(separator: "-"))#\(batch)"
    }

    // MARK: Sweeps, counts, audit

    private func sweep() -> ([String: Any], Int64, Int64)? {
        let sent = wallMilliseconds()
        let outcome = op.call("POST", "/v1/admin/sweep")
        let received = wallMilliseconds()
        guard outcome.status == 200, let s = outcome.object else {
            if outcome.status == nil { lost("POST /v1/admin/sweep", outcome) } else { violations.add("sweep refused", outcome.summary) }
            return nil
        }
        return (s, sent, received)
    }

    private func checkSweepsAndCounts(rotationInFlight: Bool) {
        // Nothing writes between the two sweeps: the first removes what the crash left (orphan
        // ciphertexts, entries of destroyed buckets), the second must find nothing of that kind.
        guard let (first, sent, received) = sweep() else { return }
        sweepSeconds = Double(received - sent) / 1000
        let orphans = first["orphans_removed"] as? Int ?? 0
        if orphans > 0 { notes.append("the first sweep after the restart removed \(orphans) orphan ciphertexts") }
        guard let (second, t1, t2) = sweep() else { return }
        let int = { (key: String) in second[key] as? Int ?? -1 }
        if int("orphans_removed") != 0 {
            violations.add("orphans after a sweep", "a second sweep right after the first removed \(int("orphans_removed")) orphans: \(second)")
        }
        if int("buckets_destroyed") == 0 && int("held_records_expired") == 0
            && (int("entries_removed") != 0 || int("ciphertexts_removed") != 0) {
            violations.add("dead entries after a sweep", "a second sweep destroyed no bucket but removed entries or ciphertexts: \(second)")
        }

        // The keystore's record count against the log: exact, except ephemeral records whose
        // bucket ended while the second sweep ran.
        var lower = 0, uncertain = 0
        let width = model.bucketWidthMs
        for r in model.records where r.state == .live {
            guard r.ephemeral else { lower += 1; continue }
            let end = r.bucketEnd(widthMs: width)
            if end <= t1 {
                r.state = .expired
                r.log(round, "expired and swept")
                r.subject.records.removeAll { $0 === r }
            } else if end > t2 {
                lower += 1
            } else {
                uncertain += 1
            }
        }
        model.unresolvedEphemeral.removeAll { ($0 / width + 1) * width <= t1 }
        uncertain += model.unresolvedEphemeral.count

        let outcome = op.call("GET", "/v1/admin/stats")
        guard outcome.status == 200, let stats = outcome.object else {
            if outcome.status == nil { lost("GET /v1/admin/stats", outcome) } else { violations.add("stats refused", outcome.summary) }
            return
        }
        let records = stats["records"] as? Int ?? -1
        if records < lower || records > lower + uncertain {
            let expected = uncertain == 0 ? "\(lower)" : "\(lower)…\(lower + uncertain)"
            violations.add("record count", "the keystore holds \(records) records after two sweeps; the log expects \(expected) "
                + "(\(model.records.filter { $0.state == .live }.count) live in the log, \(uncertain) uncertain)")
        }
        checkIndexes(records: records)
        if stats["tenants"] as? Int != model.tenants {
            violations.add("tenant count", "stats report \(stats["tenants"] ?? "nothing") tenants, expected \(model.tenants)")
        }
        if let g = (stats["master_key_generation"] as? Int).map(UInt64.init) {
            let low = model.acknowledgedGeneration
            let high = max(model.knownGeneration, model.acknowledgedGeneration) + (rotationInFlight ? 1 : 0)
            if g < low || g > high {
                violations.add("master key generation", "after the restart the vault is at generation \(g); acknowledged rotations "
                    + "reached \(low), at most \(high) possible")
            }
            if rotationInFlight {
                // The only rotation of the round was in flight: the generation moved iff it committed.
                notes.append(g > model.knownGeneration ? "the rotation in flight had committed (generation \(g))"
                                                       : "the rotation in flight had not committed")
            }
            model.knownGeneration = g
            model.acknowledgedGeneration = max(model.acknowledgedGeneration, g)
        }
    }

    /// With no orphan left, every record has exactly one subject index entry, one bucket index
    /// entry and one ciphertext (its current version): the entry counts of the LMDB databases,
    /// read with mdb_stat beside the idle daemon, must all equal the record count.
    private func checkIndexes(records: Int) {
        guard let keystore = daemon.entryCounts("keystore"), let store = daemon.entryCounts("records") else {
            if Daemon.mdbStat != nil { violations.add("mdb_stat failed", "cannot read the entry counts of \(daemon.dataDirectory)") }
            return
        }
        let counts: [(String, Int?)] = [("keystore records", keystore["records"]), ("subject index", keystore["subjects"]),
                                        ("bucket index", keystore["bybucket"]), ("ciphertexts", store["ciphertexts"])]
        if counts.contains(where: { $0.1 != records }) {
            violations.add("index counts", "after two sweeps, with \(records) records: "
                + counts.map { "\($0.0) \($0.1.map(String.init) ?? "?")" }.joined(separator: ", "))
        }
    }

    private func checkAudit() {
        let outcome = op.call("GET", "/v1/admin/audit/verify")
        guard outcome.status == 200, let v = outcome.object else {
            if outcome.status == nil { lost("GET /v1/admin/audit/verify", outcome) } else { violations.add("audit verify refused", outcome.summary) }
            return
        }
        if v["intact"] as? Bool != true {
            violations.add("audit chain broken", "verify answered \(v)")
        }
        checkOperatorLog()
        if daemonLost { return }
        checkTenantLogs()
    }

    /// Every committed write (acknowledged, or found after the restart) has its `record.write`
    /// entry in its tenant's audit, and the newest such entry is a leaf of the tenant's signed
    /// head (its inclusion proof, checked here with RFC 9162's algorithm, over the leaf
    /// computed from the entry as listed). Each tenant's audit is read on from where the last
    /// round stopped.
    private func checkTenantLogs() {
        while model.auditRead.count < tokens.count { model.auditRead.append(0); model.auditedWrites.append([]) }
        for (t, token) in tokens.enumerated() {
            let admin = VaultHTTPClient(endpoint: .unixSocket(path: socket), token: token.admin, timeout: 60)
            var newest: [String: Any]?
            while true {
                let page = admin.call("GET", "/v1/audit?after=\(model.auditRead[t])&limit=1000")
                guard page.status == 200, let entries = page.object?["entries"] as? [[String: Any]] else {
                    if page.status == nil { lost("GET /v1/audit", page) } else { violations.add("audit listing refused", page.summary) }
                    return
                }
                for e in entries {
                    guard let seq = (e["seq"] as? NSNumber)?.uint64Value, seq == model.auditRead[t] + 1 else {
                        violations.add("audit numbering", "tenant \(t): entry \(e["seq"] ?? "?") follows \(model.auditRead[t])")
                        return
                    }
                    model.auditRead[t] = seq
                    if e["action"] as? String == "record.write", e["outcome"] as? String == "ok",
                       let target = e["target"] as? String, target.hasPrefix("record:") {
                        model.auditedWrites[t].insert(String(target.dropFirst("record:".count)))
                        newest = e
                    }
                }
                if entries.count < 1000 { break }
            }
            let missing = model.records.filter { $0.tenant == t && !model.auditedWrites[t].contains($0.id) }
            if let first = missing.first {
                violations.add("write without its audit entry", "\(missing.count) of tenant \(t)'s committed writes have no "
                               + "record.write entry, e.g. \(first.describe)")
            }
            if let newest { checkLeaf(newest, tenant: t, admin) }
        }
    }

    private func checkLeaf(_ e: [String: Any], tenant t: Int, _ admin: VaultHTTPClient) {
        func hex(_ s: String) -> [UInt8]? {
            let u = Array(s.utf8)
            guard u.count % 2 == 0 else { return nil }
            var out: [UInt8] = []
            for i in stride(from: 0, to: u.count, by: 2) {
                guard let b = UInt8(String(decoding: u[i..<i + 2], as: UTF8.self), radix: 16) else { return nil }
                out.append(b)
            }
            return out
        }
        guard let seq = (e["seq"] as? NSNumber)?.uint64Value, let at = (e["at"] as? String).flatMap(RFC3339.parse),
              let actor = e["actor"] as? String, let action = e["action"] as? String, let outcome = e["outcome"] as? String,
              let count = (e["count"] as? NSNumber)?.uint64Value, let hash = (e["hash"] as? String).flatMap(hex) else {
            violations.add("audit entry unreadable", "tenant \(t): \(e)")
            return
        }
        let leaf = MerkleTree.leafHash(AuditEntry.leaf(seq: seq, at: at, tenant: e["tenant"] as? String, actor: actor, action: action,
                                                       target: e["target"] as? String, outcome: outcome, count: count,
                                                       reference: e["reference"] as? String, hash: hash))
        guard let (size, root) = signedHead(admin),
              let path = proofPath(admin, "/v1/audit/proof?seq=\(seq)&size=\(size)", refused: "inclusion proof refused") else { return }
        if !MerkleTree.verifyInclusion(leaf: leaf, index: seq - 1, size: size, proof: path, root: root) {
            violations.add("write not in the tenant's log", "tenant \(t): entry \(seq) (\(e["target"] ?? "?")) is not a leaf of "
                           + "its head of \(size) entries")
        }
    }

    /// The caller's log head (size and root), or nil once what went wrong is recorded.
    private func signedHead(_ client: VaultHTTPClient) -> (size: UInt64, root: [UInt8])? {
        let outcome = client.call("GET", "/v1/audit/head")
        guard outcome.status == 200, let size = (outcome.object?["size"] as? NSNumber)?.uint64Value,
              let root = (outcome.object?["root"] as? String).flatMap({ Data(base64Encoded: $0) }) else {
            if outcome.status == nil { lost("GET /v1/audit/head", outcome) } else { violations.add("audit head refused", outcome.summary) }
            return nil
        }
        return (size, Array(root))
    }

    /// A proof's path from `route`, or nil once what went wrong is recorded.
    private func proofPath(_ client: VaultHTTPClient, _ route: String, refused: String) -> [[UInt8]]? {
        let outcome = client.call("GET", route)
        guard outcome.status == 200, let paths = outcome.object?["path"] as? [String] else {
            if outcome.status == nil { lost("GET \(route)", outcome) } else { violations.add(refused, outcome.summary) }
            return nil
        }
        let hashes = paths.compactMap { Data(base64Encoded: $0).map(Array.init) }
        guard hashes.count == paths.count else {
            violations.add(refused, "GET \(route): a path element is not base64")
            return nil
        }
        return hashes
    }

    /// The operator's transparency log only grew across the kill: the head kept at the last
    /// round's checks (signed before the crash) is extended by today's, by the vault's own
    /// consistency proof checked here with RFC 9162's algorithm.
    private func checkOperatorLog() {
        guard let (size, root) = signedHead(op) else { return }
        defer { model.operatorHead = (size, root) }
        guard let saved = model.operatorHead else { return }
        guard size >= saved.size else {
            violations.add("audit log shrank", "the operator log had \(saved.size) entries before the kill and has \(size)")
            return
        }
        guard let hashes = proofPath(op, "/v1/audit/consistency?from=\(saved.size)&to=\(size)",
                                     refused: "consistency proof refused") else { return }
        if !MerkleTree.verifyConsistency(old: saved.size, new: size, oldRoot: saved.root, newRoot: root, proof: hashes) {
            violations.add("audit log rewritten", "no consistency from the head of \(saved.size) entries kept before the kill "
                           + "to the head of \(size) after it")
        }
    }

    // MARK: Tokens

    /// Acknowledged tokens authenticate, acknowledged revocations stay revoked; a revocation in
    /// flight either happened or did not.
    private func checkTokens() {
        // Every 401 counts against this client's peer (the daemon backs off a peer after five bad
        // tokens, in memory, so a restart forgives it): probe the revocation in flight, this round's
        // revocations and a few older ones, and any number of live tokens.
        let inFlight = model.tokens.filter { $0.revocationInFlight }
        let revokedNow = model.tokens.filter { $0.revoked && $0.revokedIn == round }
        let older = model.tokens.filter { $0.revoked && $0.revokedIn != round }.shuffled(using: &rng)
        let revoked = revokedNow + older.prefix(max(0, 4 - inFlight.count - revokedNow.count))
        let chosen = inFlight + revoked + model.tokens.filter { !$0.revoked && !$0.revocationInFlight }.suffix(40)
        let secrets = chosen.map(\.secret)
        let socket = self.socket
        let statuses: [Outcome.Status] = parallelMap(chosen.count, threads: threads) { _, i in
            let client = VaultHTTPClient(endpoint: .unixSocket(path: socket), token: secrets[i], timeout: 60)
            let outcome = client.call("GET", "/v1/records/00000000000000000000000000")
            return Outcome.Status(status: outcome.status, summary: outcome.summary)
        }
        for (token, answer) in zip(chosen, statuses) {
            guard let status = answer.status else { lost("a request with \(token.id)", .noAnswer(answer.summary)); return }
            let authenticated = status == 404
            if status != 404 && status != 401 {
                violations.add("token probe", "\(token.describe): an unknown record answered \(answer.summary)")
            } else if token.revocationInFlight {
                token.revocationInFlight = false
                token.revoked = !authenticated
                token.history.append("r\(round) revocation without answer \(authenticated ? "did not happen" : "happened")")
            } else if token.revoked && authenticated {
                violations.add("revoked token accepted again", token.describe)
            } else if !token.revoked && !authenticated {
                violations.add("acknowledged token lost", "\(token.describe): answered \(answer.summary)")
            }
        }
    }

    // MARK: Maintenance after the restart

    private func maintenance(rotate: Bool, compact: Bool) {
        if rotate {
            let started = monotonicSeconds()
            let outcome = op.call("POST", "/v1/admin/rotate")
            rotationSeconds = monotonicSeconds() - started
            guard outcome.status == 200, let s = outcome.object else {
                if outcome.status == nil { lost("POST /v1/admin/rotate", outcome) } else { violations.add("rotation after the restart failed", outcome.summary) }
                return
            }
            if let g = (s["master_key_generation"] as? Int).map(UInt64.init) {
                if g != model.knownGeneration + 1 {
                    violations.add("master key generation", "a rotation from generation \(model.knownGeneration) answered \(g)")
                }
                model.knownGeneration = g
                model.acknowledgedGeneration = g
            }
        }
        if compact {
            let started = monotonicSeconds()
            let outcome = op.call("POST", "/v1/admin/compact")
            compactionSeconds = monotonicSeconds() - started
            guard outcome.status == 200 else {
                if outcome.status == nil { lost("POST /v1/admin/compact", outcome) } else { violations.add("compaction after the restart failed", outcome.summary) }
                return
            }
        }
        // Still readable under the re-wrapped keys.
        let live = model.records.filter { $0.state == .live && !$0.ephemeral }
        let sample = Array(live.shuffled(using: &rng).prefix(40))
        for (r, s) in zip(sample, read(sample)) {
            guard let status = s.status else { lost("GET /v1/records/\(r.id)", .noAnswer(s.summary)); return }
            if status != 200 || s.observed?.payload != r.content || s.observed?.version != r.version {
                violations.add("record unreadable after rotation", "\(r.describe); GET answered \(status == 200 ? s.observed?.label ?? "?" : s.summary)")
            }
        }
        checkedRecords += sample.count
    }
}
