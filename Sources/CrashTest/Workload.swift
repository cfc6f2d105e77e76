import VaultCore
import Locking
import VaultClient

/// Operation counts of a round (or a phase), for the round's line.
struct Counts {
    var writes = 0, batches = 0, batchItems = 0, corrections = 0, deletions = 0, erasures = 0, erasedRecords = 0
    var reads = 0, listings = 0, sweeps = 0, rotations = 0, compactions = 0, tokensIssued = 0, tokensRevoked = 0
    /// Requests without an answer when the daemon died.
    var inFlight = 0

    static func + (a: Counts, b: Counts) -> Counts {
        var c = a
        c.writes += b.writes; c.batches += b.batches; c.batchItems += b.batchItems; c.corrections += b.corrections
        c.deletions += b.deletions; c.erasures += b.erasures; c.erasedRecords += b.erasedRecords; c.reads += b.reads
        c.listings += b.listings; c.sweeps += b.sweeps; c.rotations += b.rotations; c.compactions += b.compactions
        c.tokensIssued += b.tokensIssued; c.tokensRevoked += b.tokensRevoked
        c.inFlight += b.inFlight
        return c
    }

    var summary: String {
        "acked \(writes) writes + \(batchItems) in \(batches) batches, \(corrections) corrections, \(deletions) deletions, "
            + "\(erasures) erasures (\(erasedRecords) records), \(reads) reads, \(listings) listings, \(sweeps) sweeps, "
            + "\(tokensIssued)/\(tokensRevoked) tokens issued/revoked"
            + (rotations + compactions > 0 ? ", \(rotations) rotations, \(compactions) compactions" : "")
            + "; \(inFlight) in flight at the kill"
    }
}

/// The tokens of one tenant.
struct TenantTokens: Sendable {
    let agent: [UInt8]
    let admin: [UInt8]
}

let categories = ["personal", "non_personal", "privacy_related"]
let channels = ["phone", "email", "chat", "sms", "web", "other"]

/// One client of the load phase: owns a set of subjects (and their records) and sends one
/// request at a time until the daemon stops answering, logging every acknowledgement.
final class Worker: @unchecked Sendable {
    // unchecked: run on one thread at a time (its own during the load phase; the driver's after the join).
    let index: Int
    let round: Int
    let subjects: [SubjectModel]
    let socket: String
    let agent: VaultHTTPClient
    let admin: VaultHTTPClient
    let violations: ViolationLog
    let killed: StopFlag
    /// Retention sent with writes to ephemeral subjects (`PT1S`), in milliseconds too.
    let ephemeralRetention: (text: String, ms: Int64)?
    var rng: SeededRandom
    var counts = Counts()
    /// Records written this round (the driver adds them to the model after the join).
    var written: [RecordModel] = []
    /// Live, non-ephemeral records: the ones corrected, deleted and read.
    private var changeable: [RecordModel] = []
    private var sequence = 0
    private var batchNumber = 0

    init(index: Int, round: Int, subjects: [SubjectModel], socket: String, tokens: TenantTokens,
         violations: ViolationLog, killed: StopFlag, ephemeralRetention: (String, Int64)?, rng: SeededRandom) {
        self.index = index
        self.round = round
        self.subjects = subjects
        self.socket = socket
        self.agent = VaultHTTPClient(endpoint: .unixSocket(path: socket), token: tokens.agent, timeout: 60)
        self.admin = VaultHTTPClient(endpoint: .unixSocket(path: socket), token: tokens.admin, timeout: 60)
        self.violations = violations
        self.killed = killed
        self.ephemeralRetention = ephemeralRetention
        self.rng = rng
        for s in subjects where !s.ephemeral {
            changeable += s.records.filter { $0.state == .live && $0.inFlight == nil }
        }
    }

    /// Runs until a request gets no answer (the daemon was killed) or `stop` is set.
    func run(stop: StopFlag) {
        while !stop.isSet {
            let roll = Int.random(in: 0..<100, using: &rng)
            let answered: Bool
            switch roll {
            case 0..<30: answered = writeOne()
            case 30..<38: answered = writeBatch()
            case 38..<58: answered = correct()
            case 58..<65: answered = delete()
            case 65..<68: answered = erase()
            case 68..<70: answered = list()
            default: answered = read()
            }
            if !answered {
                counts.inFlight += 1
                return
            }
        }
    }

    // MARK: Operations (each returns false when the request got no answer)

    private func nextPayload() -> Payload {
        sequence += 1
        let length = rng.chance(0.05) ? Int.random(in: 2000...6000, using: &rng) : Int.random(in: 8...400, using: &rng)
        return Payload(tag: "r\(round).w\(index).\(sequence)", pad: rng.letters(length))
    }

    private func body(for subject: SubjectModel, _ payload: Payload, category: String, channel: String) -> [String: Any] {
        var body: [String: Any] = ["subject": subject.name, "category": category, "channel": channel, "data": payload.json]
        if subject.ephemeral, let ephemeralRetention { body["retention"] = ephemeralRetention.text }
        return body
    }

    private func randomSubject() -> SubjectModel {
        let regular = subjects.filter { !$0.ephemeral }
        if ephemeralRetention != nil, rng.chance(0.15), let e = subjects.filter(\.ephemeral).randomElement(using: &rng) {
            return e
        }
        return regular.randomElement(using: &rng)!
    }

    /// Where an unanswered request leaves a record: noted, and the caller stops.
    private func noAnswer(_ outcome: Outcome, _ what: String) -> Bool {
        if !killed.isSet {
            violations.add("no answer while the daemon was running",
                           "worker \(index), \(what): \(outcome.summary); \(socketState(socket))")
        }
        return false
    }

    private func adopt(_ object: [String: Any], subject: SubjectModel, payload: Payload, category: String,
                       channel: String, note: String) -> Bool {
        guard let id = object["id"] as? String, let expires = (object["expires_at"] as? String).flatMap(RFC3339.parse) else {
            violations.add("malformed acknowledgement", "worker \(index): a write receipt without id or expires_at")
            return false
        }
        let record = RecordModel(id: id, subject: subject, category: category, channel: channel, ephemeral: subject.ephemeral,
                                 expiresAt: expires, content: payload, round: round, note: note)
        subject.records.append(record)
        subject.touched = round
        written.append(record)
        if !subject.ephemeral { changeable.append(record) }
        return true
    }

    private func writeOne() -> Bool {
        let subject = randomSubject()
        let payload = nextPayload()
        let category = categories.randomElement(using: &rng)!, channel = channels.randomElement(using: &rng)!
        let outcome = agent.call("POST", "/v1/records", body(for: subject, payload, category: category, channel: channel))
        switch outcome {
        case .answered(201, let json):
            if adopt(json as? [String: Any] ?? [:], subject: subject, payload: payload, category: category,
                     channel: channel, note: "acknowledged") {
                counts.writes += 1
            }
        case .answered:
            violations.add("write refused", "worker \(index), subject \(subject.name), \(payload.tag): \(outcome.summary)")
        case .noAnswer:
            subject.pendingWrites.append(PendingWrite(payload: payload, category: category, channel: channel, batch: nil,
                                                      retentionMs: retention(subject)))
            subject.touched = round
            return noAnswer(outcome, "write of \(payload.tag)")
        }
        return true
    }

    private func retention(_ subject: SubjectModel) -> Int64? {
        subject.ephemeral ? ephemeralRetention?.ms : nil
    }

    private func writeBatch() -> Bool {
        batchNumber += 1
        let n = Int.random(in: 2...25, using: &rng)
        var items: [(SubjectModel, Payload, String, String)] = []
        for _ in 0..<n {
            items.append((randomSubject(), nextPayload(), categories.randomElement(using: &rng)!,
                          channels.randomElement(using: &rng)!))
        }
        let outcome = agent.call("POST", "/v1/records/batch",
                                 ["records": items.map { body(for: $0.0, $0.1, category: $0.2, channel: $0.3) }])
        switch outcome {
        case .answered(200, let json):
            guard let results = (json as? [String: Any])?["results"] as? [[String: Any]], results.count == n else {
                violations.add("malformed acknowledgement", "worker \(index): batch of \(n) answered without \(n) results")
                return true
            }
            counts.batches += 1
            for (item, result) in zip(items, results) {
                if result["error"] != nil {
                    violations.add("batch item refused", "worker \(index), \(item.1.tag): \(result["error"]!)")
                } else if adopt(result, subject: item.0, payload: item.1, category: item.2, channel: item.3,
                                note: "acknowledged in batch \(batchNumber)") {
                    counts.batchItems += 1
                }
            }
        case .answered:
            violations.add("batch refused", "worker \(index), batch of \(n) from \(items[0].1.tag): \(outcome.summary)")
        case .noAnswer:
            for item in items {
                item.0.pendingWrites.append(PendingWrite(payload: item.1, category: item.2, channel: item.3, batch: batchNumber,
                                                         retentionMs: retention(item.0)))
                item.0.touched = round
            }
            return noAnswer(outcome, "batch of \(n) from \(items[0].1.tag)")
        }
        return true
    }

    private func pickChangeable() -> (Int, RecordModel)? {
        guard !changeable.isEmpty else { return nil }
        let i = Int.random(in: 0..<changeable.count, using: &rng)
        return (i, changeable[i])
    }

    private func dropChangeable(at i: Int) {
        changeable.swapAt(i, changeable.count - 1)
        changeable.removeLast()
    }

    private func correct() -> Bool {
        guard let (i, record) = pickChangeable() else { return writeOne() }
        let payload = nextPayload()
        let outcome = agent.call("PUT", "/v1/records/\(record.id)", ["data": payload.json])
        switch outcome {
        case .answered(200, let json):
            let version = (json as? [String: Any])?["version"] as? Int
            if version != record.version + 1 {
                violations.add("wrong version acknowledged",
                               "correction \(payload.tag) of \(record.describe) answered version \(version.map(String.init) ?? "none"), expected \(record.version + 1)")
            }
            record.content = payload
            record.version = version ?? record.version + 1
            record.log(round, "corrected v\(record.version) \(payload.tag) (acknowledged)")
            counts.corrections += 1
        case .answered:
            violations.add("acknowledged record refused a correction", "\(record.describe); PUT \(payload.tag) got \(outcome.summary)")
            dropChangeable(at: i)
        case .noAnswer:
            record.inFlight = .correct(payload)
            record.log(round, "correction v\(record.version + 1) \(payload.tag) sent, no answer")
            return noAnswer(outcome, "correction of \(record.id)")
        }
        return true
    }

    private func delete() -> Bool {
        guard let (i, record) = pickChangeable() else { return writeOne() }
        let outcome = admin.call("DELETE", "/v1/records/\(record.id)")
        switch outcome {
        case .answered(204, _):
            record.state = .deleted
            record.log(round, "deleted (acknowledged)")
            record.subject.records.removeAll { $0 === record }
            record.subject.touched = round
            dropChangeable(at: i)
            counts.deletions += 1
        case .answered:
            violations.add("acknowledged record refused a deletion", "\(record.describe); DELETE got \(outcome.summary)")
            dropChangeable(at: i)
        case .noAnswer:
            record.inFlight = .delete
            record.log(round, "deletion sent, no answer")
            return noAnswer(outcome, "deletion of \(record.id)")
        }
        return true
    }

    /// Erases a regular subject (ephemeral subjects only expire: their records are never changed).
    private func erase() -> Bool {
        let subject = subjects.filter { !$0.ephemeral }.randomElement(using: &rng)!
        let before = subject.records
        let outcome = admin.call("POST", "/v1/subjects/erase", ["subject": subject.name, "reference": "crash-test r\(round)"])
        subject.touched = round
        switch outcome {
        case .answered(200, let json):
            let erased = (json as? [String: Any])?["erased"] as? Int
            if erased != before.count {
                violations.add("erasure count", "subject \(subject.name): erased \(erased.map(String.init) ?? "?") records, "
                    + "the log has \(before.count) live: \(before.map(\.id).joined(separator: ", "))")
            }
            for r in before {
                r.state = .erased
                r.log(round, "erased with its subject (acknowledged)")
            }
            subject.records = []
            changeable.removeAll { $0.subject === subject }
            counts.erasures += 1
            counts.erasedRecords += before.count
        case .answered:
            violations.add("erasure refused", "subject \(subject.name): \(outcome.summary)")
        case .noAnswer:
            subject.pendingErase = before
            for r in before {
                r.inFlight = .erase
                r.log(round, "erasure of its subject sent, no answer")
            }
            return noAnswer(outcome, "erasure of \(subject.name)")
        }
        return true
    }

    private func read() -> Bool {
        guard let (i, record) = pickChangeable() else { return writeOne() }
        let outcome = agent.call("GET", "/v1/records/\(record.id)")
        switch outcome {
        case .answered(200, let json):
            let seen = Observed(json as? [String: Any] ?? [:])
            if seen.payload != record.content || seen.version != record.version {
                violations.add("wrong content read back", "\(record.describe); GET returned \(seen.label)")
            }
            counts.reads += 1
        case .answered:
            violations.add("acknowledged record unreadable", "\(record.describe); GET got \(outcome.summary)")
            dropChangeable(at: i)
        case .noAnswer:
            return noAnswer(outcome, "read of \(record.id)")
        }
        return true
    }

    /// Lists a regular subject: exactly its acknowledged live records, with their content.
    private func list() -> Bool {
        guard let subject = subjects.filter({ !$0.ephemeral }).randomElement(using: &rng) else { return true }
        let outcome = agent.call("POST", "/v1/subjects/records", ["subject": subject.name])
        switch outcome {
        case .answered(200, let json):
            let listed = ((json as? [String: Any])?["records"] as? [[String: Any]]) ?? []
            var seen: [String: Observed] = [:]
            for item in listed { if let id = item["id"] as? String { seen[id] = Observed(item) } }
            let expected = Set(subject.records.map(\.id))
            for r in subject.records {
                guard let o = seen[r.id] else {
                    violations.add("acknowledged record missing from its subject's listing", r.describe)
                    continue
                }
                if o.payload != r.content || o.version != r.version {
                    violations.add("wrong content listed", "\(r.describe); listing returned \(o.label)")
                }
            }
            for (id, o) in seen where !expected.contains(id) {
                violations.add("unexpected record listed", "subject \(subject.name): \(id) with \(o.label) is not in the log")
            }
            counts.listings += 1
        case .answered:
            violations.add("listing refused", "subject \(subject.name): \(outcome.summary)")
        case .noAnswer:
            return noAnswer(outcome, "listing of \(subject.name)")
        }
        return true
    }
}

/// What a round's kill aims at.
enum KillTarget: String {
    case load = "load"
    case rotate = "rotate"
    case sweep = "sweep"
    case compact = "compact"
}

/// The operator's side of the load phase: sweeps and stats now and then; in rotation and
/// compaction rounds, that operation at `fireAt` (the driver kills the daemon shortly after).
final class OperatorLoad: @unchecked Sendable {
    // unchecked: run on one thread, read by the driver after the join.
    let client: VaultHTTPClient
    let socket: String
    let violations: ViolationLog
    let killed: StopFlag
    let target: KillTarget
    let fireAt: Double
    let round: Int
    var rng: SeededRandom
    var counts = Counts()
    /// Set when the maintenance operation was answered: the kill came after it finished.
    var maintenanceAnswered: Double?
    var maintenanceSent: Bool { sentAt.withLock { $0 } != nil }
    /// When the maintenance request was sent (monotonic): the driver times the kill from it.
    let sentAt = Locked<Double?>(nil)
    var acknowledgedGeneration: UInt64?
    /// A rotation sent without answer: the generation may have moved by one.
    var rotationInFlight = false
    /// Tokens issued so far in this vault (the operator revokes some of them) and those issued now.
    var tokens: [TokenModel]
    var issued: [TokenModel] = []
    let tenantForTokens: String

    init(client: VaultHTTPClient, socket: String, violations: ViolationLog, killed: StopFlag, target: KillTarget, fireAt: Double, rng: SeededRandom,
         tokens: [TokenModel], tenantForTokens: String, round: Int) {
        self.round = round
        self.tokens = tokens
        self.tenantForTokens = tenantForTokens
        self.client = client
        self.socket = socket
        self.violations = violations
        self.killed = killed
        self.target = target
        self.fireAt = fireAt
        self.rng = rng
    }

    func run(started: Double, stop: StopFlag) {
        var fired = target == .load
        while !stop.isSet {
            let now = monotonicSeconds() - started
            if !fired && now >= fireAt {
                fired = true
                if !maintenance(started: started) { return }
                continue
            }
            var pause = Double.random(in: 0.05...0.25, using: &rng)
            if !fired { pause = min(pause, max(0.001, fireAt - now)) }
            sleepSeconds(pause)
            if stop.isSet { return }
            if !fired && monotonicSeconds() - started >= fireAt { continue }
            let roll = Double.random(in: 0..<1, using: &rng)
            let answered: Bool
            if roll < 0.55 {
                answered = sweep()
            } else if roll < 0.7 {
                answered = issueToken()
            } else if roll < 0.85 {
                answered = revokeToken()
            } else {
                let outcome = client.call("GET", "/v1/admin/stats")
                if outcome.status != nil && outcome.status != 200 { violations.add("stats refused", outcome.summary) }
                answered = outcome.status == nil ? unanswered("stats", outcome) : true
            }
            if !answered { return }
        }
    }

    private func unanswered(_ what: String, _ outcome: Outcome) -> Bool {
        counts.inFlight += 1
        if !killed.isSet {
            violations.add("no answer while the daemon was running", "\(what): \(outcome.summary); \(socketState(socket))")
        }
        return false
    }

    private func sweep() -> Bool {
        let outcome = client.call("POST", "/v1/admin/sweep")
        switch outcome.status {
        case 200: counts.sweeps += 1
        case nil: return unanswered("sweep", outcome)
        default: violations.add("sweep refused", outcome.summary)
        }
        return true
    }

    private func issueToken() -> Bool {
        let outcome = client.call("POST", "/v1/admin/tokens", ["tenant": tenantForTokens, "role": "agent", "name": "crash-test load"])
        switch outcome.status {
        case 201:
            guard let id = outcome.object?["id"] as? String, let secret = outcome.object?["token"] as? String else {
                violations.add("malformed acknowledgement", "a token issue answered without id or token")
                return true
            }
            let token = TokenModel(id: id, secret: Array(secret.utf8), round: round)
            issued.append(token)
            tokens.append(token)
            counts.tokensIssued += 1
        case nil: return unanswered("token issue", outcome)
        default: violations.add("token issue refused", outcome.summary)
        }
        return true
    }

    private func revokeToken() -> Bool {
        let live = tokens.filter { !$0.revoked }
        guard live.count > 2, let token = live.randomElement(using: &rng) else { return issueToken() }
        let outcome = client.call("DELETE", "/v1/admin/tokens/\(token.id)")
        switch outcome.status {
        case 204:
            token.revoked = true
            token.revokedIn = round
            token.history.append("r\(round) revoked (acknowledged)")
            counts.tokensRevoked += 1
        case nil:
            token.revocationInFlight = true
            token.history.append("r\(round) revocation sent, no answer")
            return unanswered("token revocation", outcome)
        default: violations.add("token revocation refused", "\(token.describe): \(outcome.summary)")
        }
        return true
    }

    private func maintenance(started: Double) -> Bool {
        sentAt.withLock { $0 = monotonicSeconds() }
        let path = "/v1/admin/" + target.rawValue
        if target == .rotate { rotationInFlight = true }
        let outcome = client.call("POST", path)
        switch outcome {
        case .answered(200, let json):
            maintenanceAnswered = monotonicSeconds() - started
            switch target {
            case .rotate:
                rotationInFlight = false
                counts.rotations += 1
                if let g = (json as? [String: Any])?["master_key_generation"] as? Int { acknowledgedGeneration = UInt64(g) }
            case .compact: counts.compactions += 1
            case .sweep: counts.sweeps += 1
            case .load: break
            }
            return true
        case .answered:
            if target == .rotate { rotationInFlight = false }
            violations.add("\(target.rawValue) refused", outcome.summary)
            return true
        case .noAnswer:
            return unanswered(path, outcome)
        }
    }
}
