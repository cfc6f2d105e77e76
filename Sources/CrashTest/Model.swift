import VaultCore
import Locking

// The acknowledgement log: what the daemon said it did, kept in memory per vault directory.
//
// Every record and subject has exactly one owner (a worker thread), and a worker sends one
// request at a time, so each record's history is a sequence: acknowledged operations, then at
// most one operation in flight when the daemon was killed (no answer: it may or may not have
// happened). After a restart the checks compare the vault with that history and resolve the
// in-flight operation (it happened, or it did not — anything else is a violation).

/// A record's `data`: `{"tag": ..., "pad": ...}`. Tags are unique in a run, so content that came
/// back names the write or correction that produced it.
struct Payload: Sendable, Equatable {
    let tag: String
    let pad: String

    var json: [String: Any] { ["tag": tag, "pad": pad] }

    init(tag: String, pad: String) {
        self.tag = tag
        self.pad = pad
    }

    /// The payload in a record the daemon returned; nil when `data` is not of our shape.
    init?(_ data: Any?) {
        guard let d = data as? [String: Any], d.count == 2, let tag = d["tag"] as? String,
              let pad = d["pad"] as? String else { return nil }
        self.init(tag: tag, pad: pad)
    }

    /// `r3.w2.17 (412 B)`: the tag and the pad length, for messages.
    var label: String { "\(tag) (\(pad.utf8.count) B pad)" }
}

/// What a returned record holds, as far as the checks care.
struct Observed: Sendable {
    let payload: Payload?
    let version: Int?
    let subject: String?
    let category: String?
    let channel: String?
    let expiresAt: Int64?

    init(_ object: [String: Any]) {
        payload = Payload(object["data"])
        version = object["version"] as? Int
        subject = object["subject"] as? String
        category = object["category"] as? String
        channel = object["channel"] as? String
        expiresAt = (object["expires_at"] as? String).flatMap(RFC3339.parse)
    }

    var label: String {
        "content \(payload?.label ?? "(not ours)") v\(version.map(String.init) ?? "?")"
    }
}

enum RecordState: Equatable {
    case live
    case deleted
    case erased
    /// Past its bucket's end and swept (ephemeral records only).
    case expired

    var isGone: Bool { self != .live }
}

/// An operation sent on a record whose answer never came.
enum InFlight: Equatable {
    case correct(Payload)
    case delete
    case erase
}

final class RecordModel: @unchecked Sendable {
    // unchecked: touched by its owning worker during the load phase and by the driver thread
    // between phases (threads are joined in between); checker threads only read it.
    let id: String
    let tenant: Int
    let subject: SubjectModel
    let category: String
    let channel: String
    let ephemeral: Bool
    let expiresAt: Int64
    var content: Payload
    var version: Int
    var state: RecordState = .live
    var inFlight: InFlight?
    /// The last round that changed it (or tried to).
    var touched: Int
    /// One line per event: `r3 written v1 r3.w2.17 (acknowledged)`.
    var history: [String] = []

    init(id: String, subject: SubjectModel, category: String, channel: String, ephemeral: Bool, expiresAt: Int64,
         content: Payload, version: Int = 1, round: Int, note: String) {
        self.id = id
        self.tenant = subject.tenant
        self.subject = subject
        self.category = category
        self.channel = channel
        self.ephemeral = ephemeral
        self.expiresAt = expiresAt
        self.content = content
        self.version = version
        self.touched = round
        history.append("r\(round) written v\(version) \(content.tag) (\(note))")
    }

    func log(_ round: Int, _ event: String) {
        touched = round
        history.append("r\(round) \(event)")
    }

    /// The end of its expiry bucket: a sweep at or after this time destroys it.
    func bucketEnd(widthMs: Int64) -> Int64 { (expiresAt / widthMs + 1) * widthMs }

    var describe: String {
        "record \(id) (tenant \(tenant), subject \(subject.name)\(ephemeral ? ", ephemeral" : "")): "
            + history.joined(separator: "; ")
    }
}

/// A write sent whose answer never came (single or batch item).
struct PendingWrite {
    let payload: Payload
    let category: String
    let channel: String
    /// Batch number within the round, nil for a single write.
    let batch: Int?
    /// The retention asked for an ephemeral write (its `expires_at` is at most the kill time
    /// plus this); nil otherwise.
    let retentionMs: Int64?
}

final class SubjectModel: @unchecked Sendable {
    // unchecked: as RecordModel.
    let name: String
    let tenant: Int
    let ephemeral: Bool
    /// Records of this subject not acknowledged gone (some may be in flight).
    var records: [RecordModel] = []
    var pendingWrites: [PendingWrite] = []
    /// Records live when an erasure was sent whose answer never came.
    var pendingErase: [RecordModel]?
    var touched = 0

    init(name: String, tenant: Int, ephemeral: Bool) {
        self.name = name
        self.tenant = tenant
        self.ephemeral = ephemeral
    }
}

/// A bearer token issued during the load phase (an acknowledged issue: its secret came back).
final class TokenModel: @unchecked Sendable {
    // unchecked: as RecordModel.
    let id: String
    let secret: [UInt8]
    var revoked = false
    /// The round whose load phase revoked it.
    var revokedIn: Int?
    /// A revocation was sent and never answered.
    var revocationInFlight = false
    var history: [String]

    init(id: String, secret: [UInt8], round: Int) {
        self.id = id
        self.secret = secret
        history = ["r\(round) issued (acknowledged)"]
    }

    var describe: String { "token \(id): " + history.joined(separator: "; ") }
}

/// One broken promise.
struct Violation: Sendable {
    let round: Int
    let kind: String
    let detail: String

    var line: String { "round \(round): \(kind): \(detail)" }
}

/// Violations of the current round, from any thread.
final class ViolationLog: Sendable {
    private let items = Locked<[Violation]>([])
    let round: Int

    init(round: Int) { self.round = round }

    func add(_ kind: String, _ detail: String) {
        items.withLock { $0.append(Violation(round: round, kind: kind, detail: detail)) }
    }

    var all: [Violation] { items.withLock { $0 } }
    var count: Int { items.withLock { $0.count } }
}

/// Everything acknowledged in one vault directory, across its crashes.
final class VaultModel: @unchecked Sendable {
    // unchecked: mutated by the driver thread between phases only (see RecordModel).
    let tenants: Int
    let ephemeralAllowed: Bool
    let bucketWidthMs: Int64
    var subjects: [SubjectModel] = []
    /// Subjects of each worker.
    var owned: [[SubjectModel]] = []
    var records: [RecordModel] = []
    var byID: [String: RecordModel] = [:]
    /// The master key generation the daemon last reported, and the highest a rotation acknowledged.
    /// The operator log's head at the last round's checks: every later head must extend it.
    var operatorHead: (size: UInt64, root: [UInt8])?
    /// Per tenant: how far its audit has been read (its own seq), and the records its
    /// `record.write` entries name.
    var auditRead: [UInt64] = []
    var auditedWrites: [Set<String>] = []
    var knownGeneration: UInt64 = 1
    var acknowledgedGeneration: UInt64 = 1
    /// Latest possible `expires_at` of ephemeral writes in flight at a kill that were not seen
    /// afterwards: committed and expired, or never committed. Until their bucket is surely swept
    /// they make the record count uncertain by one each.
    var unresolvedEphemeral: [Int64] = []
    /// Agent tokens the operator issued (and perhaps revoked) during load phases.
    var tokens: [TokenModel] = []

    init(tenants: Int, workers: Int, subjectsPerWorker: Int, ephemeralPerWorker: Int, bucketWidthMs: Int64, epoch: Int) {
        self.tenants = tenants
        self.ephemeralAllowed = ephemeralPerWorker > 0
        self.bucketWidthMs = bucketWidthMs
        for w in 0..<workers {
            var mine: [SubjectModel] = []
            for s in 0..<(subjectsPerWorker + ephemeralPerWorker) {
                let subject = SubjectModel(name: "e\(epoch)-w\(w)-s\(s)", tenant: w % tenants, ephemeral: s >= subjectsPerWorker)
                mine.append(subject)
                subjects.append(subject)
            }
            owned.append(mine)
        }
    }

    func add(_ record: RecordModel) {
        records.append(record)
        byID[record.id] = record
    }

    /// Live (not acknowledged gone) records: every one must be readable unless it expired.
    var liveCount: Int { records.reduce(0) { $0 + ($1.state == .live ? 1 : 0) } }
}
