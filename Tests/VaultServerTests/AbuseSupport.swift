import Foundation
import Synchronization
import Testing
import VaultClient
import VaultCore
import VaultServer

// Helpers of AbuseMatrixTests: tenants with known token ids, unknown ids shaped like real
// ones, response comparison "byte for byte modulo request-specific fields", a check
// counter, and robust statistics for the timing tests.

/// Counts checks and records each failed one as an issue, so a matrix of hundreds of
/// checks can close with one "N passed, N failed" line.
final class CheckTally: Sendable {
    private let counts = Mutex((passed: 0, failed: 0))

    func check(_ ok: Bool, _ what: @autoclosure () -> String, sourceLocation: SourceLocation = #_sourceLocation) {
        counts.withLock { ok ? ($0.passed += 1) : ($0.failed += 1) }
        if !ok { Issue.record(Comment(rawValue: what()), sourceLocation: sourceLocation) }
    }

    var passed: Int { counts.withLock { $0.passed } }
    var failed: Int { counts.withLock { $0.failed } }
}

/// A tenant made through the API, with what the abuse tests need to know about it.
struct AbuseTenant: Sendable {
    let slug: String
    let agent: VaultHTTPClient
    let admin: VaultHTTPClient
    let agentToken: [UInt8]
    let adminToken: [UInt8]
    let agentTokenID: String
    let adminTokenID: String

    var tokenIDs: Set<String> { [agentTokenID, adminTokenID] }
}

extension ServerHarness {
    /// Creates a tenant with an agent and an admin token (like `tenant(_:)`, keeping the token ids).
    func abuseTenant(_ slug: String) async throws -> AbuseTenant {
        let op = operatorClient
        let created = try await op.send("POST", "/v1/admin/tenants", body: json(["id": slug]))
        precondition(created.status == 201, "tenant create: \(created.status)")
        let agent = try await issueToken(tenant: slug, role: "agent")
        let admin = try await issueToken(tenant: slug, role: "admin")
        return AbuseTenant(slug: slug, agent: client(agent.token), admin: client(admin.token), agentToken: agent.token,
                           adminToken: admin.token, agentTokenID: agent.id, adminTokenID: admin.id)
    }

    /// Issues a token through the operator API: its id and secret.
    func issueToken(tenant: String?, role: String, name: String = "abuse") async throws -> (id: String, token: [UInt8]) {
        var body: [String: Any] = ["role": role, "name": name]
        if let tenant { body["tenant"] = tenant }
        let r = try await operatorClient.send("POST", "/v1/admin/tokens", body: json(body))
        precondition(r.status == 201, "token issue: \(r.status) \(r.text)")
        let o = try r.object()
        return (o["id"] as! String, Array((o["token"] as! String).utf8))
    }
}

/// Ids nobody has: 26-character Crockford base32 like record, hold and extension ids (ULID
/// layout: 48-bit milliseconds, 80 random bits), so they take the same parsing path as real ones.
enum UnknownID {
    static let alphabet = Array("0123456789ABCDEFGHJKMNPQRSTVWXYZ".utf8)

    /// A fresh id with the current time in front, as a real id made now would have.
    static func record() -> String {
        let ms = UInt64(Date().timeIntervalSince1970 * 1000)
        var bits: [UInt8] = (0..<6).map { UInt8(truncatingIfNeeded: ms >> (40 - 8 * UInt64($0))) }
        bits += (0..<10).map { _ in UInt8.random(in: 0...255) }
        return encode(bits)
    }

    /// Same time prefix as `like` (so it lands next to it in any time-ordered index), new random tail.
    static func sibling(of like: String) -> String {
        var out = Array(like.utf8.prefix(10))
        while out.count < 26 { out.append(alphabet.randomElement()!) }
        let s = String(decoding: out, as: UTF8.self)
        return s == like ? sibling(of: like) : s
    }

    /// 16 bytes → 26 characters (the first carries the top 3 bits of 130; the top 2 are zero).
    static func encode(_ bytes: [UInt8]) -> String {
        precondition(bytes.count == 16)
        var hi = UInt64(0), lo = UInt64(0)
        for b in bytes[0..<8] { hi = hi << 8 | UInt64(b) }
        for b in bytes[8..<16] { lo = lo << 8 | UInt64(b) }
        var chars: [UInt8] = []
        for i in (0..<26).reversed() {
            let shift = i * 5
            let digit: UInt64
            if shift >= 64 { digit = (hi >> UInt64(shift - 64)) & 31 }
            else if shift + 5 <= 64 { digit = (lo >> UInt64(shift)) & 31 }
            else { digit = ((lo >> UInt64(shift)) | (hi << UInt64(64 - shift))) & 31 }
            chars.append(alphabet[Int(digit)])
        }
        return String(decoding: chars, as: UTF8.self)
    }

    static func token() -> String { "tok_" + record() }
    static func tenant() -> String { "nobody-" + UUID().uuidString.prefix(8).lowercased() }
    static func subject() -> String { "nobody-" + UUID().uuidString.lowercased() }
}

/// Fields whose values differ from one request to the next whatever the ids asked about:
/// new ids, times, audit positions, a subject's tag (a function of the subject sent), a new
/// token. Normalizing them is the "modulo request-specific fields" of the comparison.
let requestSpecificFields = ["id", "created_at", "expires_at", "at", "audit_seq", "audit_hash", "subject_tag",
                             "generated_at", "token"]

/// Headers that differ per response whatever was asked (`Date`), and the length, which
/// follows the body (compared itself).
let requestSpecificHeaders: Set<String> = ["date", "content-length"]

extension HTTPResponse {
    /// The body with the values of `requestSpecificFields` replaced by a placeholder; every
    /// other byte is kept, so the comparison stays byte for byte outside those values.
    var normalizedBody: String {
        var text = String(decoding: body, as: UTF8.self)
        for field in requestSpecificFields {
            let key = "\"\(field)\":"
            var out = ""
            var rest = Substring(text)
            while let r = rest.range(of: key) {
                out += rest[..<r.upperBound]
                rest = rest[r.upperBound...]
                // The value: a string (no escapes in these fields) or a number.
                if rest.first == "\"", let end = rest.dropFirst().firstIndex(of: "\"") {
                    rest = rest[rest.index(after: end)...]
                } else {
                    rest = rest.drop(while: { $0.isNumber || $0 == "-" })
                }
                out += "\"…\""
            }
            text = out + rest
        }
        return text
    }

    /// Header fields other than the request-specific ones, in order received.
    var comparableHeaders: [String] {
        headers.filter { !requestSpecificHeaders.contains($0.name.lowercased()) }.map { "\($0.name.lowercased()): \($0.value)" }
    }

    /// Nil when `self` and `other` answer the same (status, headers, normalized body), else
    /// what differs.
    func difference(from other: HTTPResponse) -> String? {
        if status != other.status { return "status \(status) vs \(other.status)" }
        if comparableHeaders != other.comparableHeaders { return "headers \(comparableHeaders) vs \(other.comparableHeaders)" }
        if normalizedBody != other.normalizedBody { return "body \(normalizedBody) vs \(other.normalizedBody)" }
        return nil
    }

    /// Nil when `self` and `other` are identical byte for byte (status, headers but `Date`, body).
    func exactDifference(from other: HTTPResponse) -> String? {
        if status != other.status { return "status \(status) vs \(other.status)" }
        let mine = headers.filter { $0.name.lowercased() != "date" }.map { "\($0.name.lowercased()): \($0.value)" }
        let theirs = other.headers.filter { $0.name.lowercased() != "date" }.map { "\($0.name.lowercased()): \($0.value)" }
        if mine != theirs { return "headers \(mine) vs \(theirs)" }
        if body != other.body { return "body \(text) vs \(other.text)" }
        return nil
    }
}

/// Robust summaries of latency samples (microseconds).
struct LatencySample {
    let values: [Double]

    var sorted: [Double] { values.sorted() }
    var median: Double { Self.median(sorted) }

    /// Mean of the middle 80 %.
    var trimmedMean: Double {
        let s = sorted
        let cut = s.count / 10
        let middle = s[cut..<(s.count - cut)]
        return middle.reduce(0, +) / Double(middle.count)
    }

    /// Median absolute deviation (unscaled).
    var mad: Double {
        let m = median
        return Self.median(values.map { abs($0 - m) }.sorted())
    }

    static func median(_ sorted: [Double]) -> Double {
        guard !sorted.isEmpty else { return .nan }
        let n = sorted.count
        return n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2
    }
}

/// Whether two interleaved latency samples are indistinguishable, and the figures.
///
/// The criterion: |median(x) − median(y)| ≤ max(25 % of the smaller median, 4 standard errors
/// of a difference of medians). The standard error comes from the pooled MAD (robust to the
/// long tail of fsync and scheduler stalls): SE(median) ≈ 1.253 · 1.4826 · MAD / √n, and a
/// difference of two independent medians has √2 times that. The samples are taken
/// alternately in random order, so drift and bursts from other processes fall on both.
struct TimingComparison: CustomStringConvertible {
    let label: String
    let x: LatencySample, y: LatencySample
    let xName: String, yName: String
    let unit: String

    var difference: Double { abs(x.median - y.median) }
    var pooledMAD: Double { LatencySample(values: x.values + y.values).mad }
    var standardError: Double { 2.0.squareRoot() * 1.2533 * 1.4826 * pooledMAD / Double(min(x.values.count, y.values.count)).squareRoot() }
    var bound: Double { max(0.25 * min(x.median, y.median), 4 * standardError) }
    var indistinguishable: Bool { difference <= bound }

    /// Median of the paired differences (x_i − y_i, taken next to each other in time).
    var pairedMedian: Double {
        LatencySample.median(zip(x.values, y.values).map { $0 - $1 }.sorted())
    }

    var description: String {
        func f(_ v: Double) -> String { String(format: "%.1f", v) }
        return "\(label): \(xName) median \(f(x.median)) \(unit) (trimmed mean \(f(x.trimmedMean)), MAD \(f(x.mad))), "
            + "\(yName) median \(f(y.median)) \(unit) (trimmed mean \(f(y.trimmedMean)), MAD \(f(y.mad))); "
            + "|Δ median| \(f(difference)) \(unit), paired median Δ \(f(pairedMedian)) \(unit), bound \(f(bound)) \(unit) "
            + "(n = \(x.values.count) each) → \(indistinguishable ? "indistinguishable" : "DISTINGUISHABLE")"
    }
}

extension Duration {
    var inMicroseconds: Double {
        Double(components.seconds) * 1e6 + Double(components.attoseconds) / 1e12
    }
}
