import Foundation
import Logging
import FuzzSupport
import Testing
import VaultAPI
import VaultClient
import VaultCore
import VaultServer
#if canImport(Glibc)
import Glibc
#endif

// Hostile-input fuzzing of the HTTP API (issue 5): the real daemon (ServerHarness) on its
// real Unix socket, spoken to in raw bytes so that requests can be malformed at every layer:
// request line, headers, framing (Content-Length, chunked), JSON bodies, pipelining, slow
// writers, half-closed and abandoned connections.
//
// Every exchange must end in well-formed HTTP/1.1 responses or a clean close within a
// timeout; every error answer is problem+json; there is no 500 (that status is for integrity
// failures, which no request may cause); no answer carries a bearer token, and none carries
// the subject or payload bytes its request sent (except the listing of a subject's records,
// whose job that is); nothing of the protected tenant ever comes out. After the run the
// daemon is healthy, the protected tenant's records read back byte-identical and the audit
// chain verifies.
//
// Tolerated and counted, not failed: the HTTP parser's bodiless `400` + `Connection: close`
// (Hummingbird answers malformed HTTP before any route); an answer to CONNECT without framing
// or body on a connection left open (NIO treats any answer to CONNECT as opening a tunnel);
// answers cut for a half-closed client are failures (HTTPLargeAnswerTests pins the fix).
//
// Seeded: SHREDVAULT_FUZZ_SEED replays a run (the requests are drawn from the seed alone, never
// from answers); SHREDVAULT_FUZZ_ITERATIONS sets the number of exchanges; SHREDVAULT_FUZZ_ONLY=i,j
// sends only those exchanges of the sequence, SHREDVAULT_FUZZ_DUMP=DIR writes their bytes there,
// SHREDVAULT_FUZZ_TRACE=1 turns the daemon's log up to trace.

@Suite struct HTTPFuzzTests {
    /// About 40 s in a debug build on 2 cores.
    static let defaultIterations = 6_000

    @Test(.timeLimit(.minutes(5)))
    func hostileRequests() async throws {
        let seed = FuzzEnvironment.seed()
        let iterations = FuzzEnvironment.iterations(default: Self.defaultIterations)
        say("http fuzz: seed \(seed), \(iterations) exchanges (replay: SHREDVAULT_FUZZ_SEED=\(seed) SHREDVAULT_FUZZ_ITERATIONS=\(iterations))")

        var serverLogger = Logger(label: "fuzz-server")
        serverLogger.logLevel = ProcessInfo.processInfo.environment["SHREDVAULT_FUZZ_TRACE"] != nil ? .trace : .error
        // The per-peer back-off for bad tokens is off: every request here comes from this one
        // process, and bad tokens are a tenth of them (the back-off has tests of its own).
        try await ServerHarness.with(configure: { $0.authBackoff = nil }, logger: serverLogger) { (h: ServerHarness) async throws in
            let setup = try await FuzzSetup.make(h, seed: seed)
            let started = ContinuousClock.now
            let targets = setup.targets
            let report = await fuzzOffPool {
                var fuzzer = HTTPFuzzer(targets: targets, seed: seed)
                return fuzzer.run(count: iterations)
            }
            let seconds = Double((ContinuousClock.now - started).components.seconds)

            // The daemon is well, the protected tenant's records are untouched, the chain verifies.
            let health = try await h.client(nil).send("GET", "/healthz")
            #expect(health.status == 200, "healthz after the run")
            #expect(try health.object()["status"] as? String == "ok")
            for (id, before) in setup.keepBodies {
                let after = try await setup.keepClient.send("GET", "/v1/records/\(id)")
                #expect(after.status == 200, "protected record \(id) after the run: \(after.status)")
                #expect(after.body == before, "protected record \(id) changed")
            }
            let verify = try await h.operatorClient.send("GET", "/v1/admin/audit/verify")
            #expect(verify.status == 200)
            #expect(try verify.object()["intact"] as? Bool == true, "audit chain after the run: \(verify.text)")

            for failure in report.failures.prefix(20) { Issue.record(Comment(rawValue: failure)) }
            // Once a known issue (fixed by FlushBeforeCloseHandler): a half-closed client got large
            // answers cut short.
            for k in report.knownIssues.prefix(5) { Issue.record(Comment(rawValue: "answer cut for a half-closed client: " + k)) }
            say("http fuzz: \(report.summary) in \(Int(seconds)) s")
            for label in report.unanswered { say("http fuzz: closed without an answer: \(label)") }
            for (took, label) in report.slow.sorted(by: { $0.0 > $1.0 }).prefix(3) { say("http fuzz: slow \(took): \(label.prefix(260))") }
            say("http fuzz: \(report.passed) passed, \(report.failed) failed")
            #expect(report.failed == 0, "replay with SHREDVAULT_FUZZ_SEED=\(seed) SHREDVAULT_FUZZ_ITERATIONS=\(iterations)")
        }
    }
}

/// What the fuzzer found, pinned: each request once, with the answer it must get.
@Suite struct HTTPFuzzRegressionTests {
    @Test func findingsStayFixed() async throws {
        try await ServerHarness.with(maxBody: 4_096) { (h: ServerHarness) async throws in
            let t = try await h.tenant("acme")
            let head = Array("POST /v1/records HTTP/1.1\r\nHost: vault\r\nAuthorization: Bearer ".utf8) + t.agentToken + Array("\r\n".utf8)
            let record = Array(#"{"subject":"cust-0042","category":"personal","channel":"web","data":{"n":1}}"#.utf8)
            let overLimit = Array(#"{"subject":"cust-0042","category":"personal","channel":"web","data":""#.utf8)
                + [UInt8](repeating: UInt8(ascii: "x"), count: 5_000) + Array(#""}"#.utf8)
            func chunk(_ b: [UInt8]) -> [UInt8] { Array(String(b.count, radix: 16).utf8) + [13, 10] + b + [13, 10] }
            // (name, bytes, whole framing, status wanted)
            let cases: [(String, [UInt8], Bool, Int)] = [
                // Was 500: the body reader's HTTPParserError fell through to "internal error".
                ("bad chunk size", head + Array("Transfer-Encoding: chunked\r\n\r\nzz\r\n".utf8) + record + Array("\r\n0\r\n\r\n".utf8), true, 400),
                ("chunk size past 64 bits", head + Array("Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n".utf8) + record, false, 400),
                ("body shorter than Content-Length, then FIN", head + Array("Content-Length: \(record.count + 10)\r\n\r\n".utf8) + record, false, 400),
                // Was 500: NIOTooManyBytesError (a chunked body has no length to refuse up front).
                ("chunked body over the limit", head + Array("Transfer-Encoding: chunked\r\n\r\n".utf8)
                    + stride(from: 0, to: overLimit.count, by: 1_000).flatMap { chunk(Array(overLimit[$0..<min($0 + 1_000, overLimit.count)])) }
                    + Array("0\r\n\r\n".utf8), true, 413),
                ("declared length over the limit", head + Array("Content-Length: \(overLimit.count)\r\n\r\n".utf8) + overLimit, true, 413),
                // Was an echo: "duplicate key \"cust-0042\"" quoted a subject-like key.
                ("duplicate subject-like key", head + Array("Content-Length: 48\r\n\r\n".utf8) + Array(#"{"subject":"a","cust-0042":1,"cust-0042":2,"x":1}"#.utf8), true, 400),
            ]
            let socket = h.socket
            let outcomes = await fuzzOffPool { () -> [(String, Int?, [UInt8])] in
                cases.map { (name, bytes, whole, _) in
                    let ex = Exchange(requests: [WireRequest(bytes: bytes, method: "POST", label: name, complete: whole)])
                    let out = RawExchange.run(ex, socket: socket)
                    return (name, out.responses.first?.status, out.responses.first?.raw ?? [])
                }
            }
            for ((name, status, raw), (_, _, _, wanted)) in zip(outcomes, cases) {
                #expect(status == wanted, "\(name): \(status.map(String.init) ?? "no answer")")
                let text = String(decoding: raw, as: UTF8.self)
                #expect(text.contains("application/problem+json"), "\(name): \(text.prefix(200))")
                #expect(!text.contains("cust-0042"), "\(name) echoed the subject")
            }
        }
    }
}

/// An answer larger than the socket buffer (a 1000-entry audit page) arrives whole, also to a
/// client that reads it slowly, and also to one that shut its write side after the request
/// (`shutdown(SHUT_WR)`, as `nc -N` and some HTTP/1.1 clients do).
///
/// Known issue (found by the fuzzer): to a half-closed client, the answer is cut after what
/// fits in the socket buffer (~214 KB). Hummingbird ends the connection as soon as the input
/// ends, with `close(mode: .output)`; NIO 2.101 escalates that to a full close when the input
/// is already shut, failing the writes still pending (`BaseStreamSocketChannel.close0`).
@Suite struct HTTPLargeAnswerTests {
    @Test func largeAnswersArriveWhole() async throws {
        try await ServerHarness.with { (h: ServerHarness) async throws in
            let t = try await h.tenant("big")
            let created = try await t.agent.send("POST", "/v1/records", body: json(["subject": "s", "category": "personal", "channel": "web", "data": ["a": 1]]))
            let id = try #require(try created.object()["id"] as? String)
            for _ in 0..<1_050 { _ = try await t.agent.send("GET", "/v1/records/\(id)") }
            let socket = h.socket
            let token = t.adminToken
            // (pause before reading in µs, half-close after the request)
            let cases: [(UInt32, Bool)] = [(0, false), (200_000, false), (1_500_000, false), (500_000, true), (1_500_000, true)]
            let outcomes = await fuzzOffPool { () -> [(halfClosed: Bool, result: String)] in
                var results: [(halfClosed: Bool, result: String)] = []
                for (pause, halfClose) in cases {
                    let request = Array("GET /v1/audit?after=1&limit=1000 HTTP/1.1\r\nHost: vault\r\nAuthorization: Bearer ".utf8) + token + Array("\r\n\r\n".utf8)
                    var failure: String?
                    guard let fd = RawExchange.connectUnix(socket, failure: &failure) else { return [(halfClose, "connect: \(failure ?? "")")] }
                    defer { close(fd) }
                    _ = RawExchange.sendSome(fd, request, from: 0)
                    if halfClose { shutdown(fd, Int32(SHUT_WR)) }
                    usleep(pause)
                    var received: [UInt8] = []
                    var buffer = [UInt8](repeating: 0, count: 65_536)
                    let label = "pause \(pause / 1000) ms" + (halfClose ? ", half-closed" : "")
                    while true {
                        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                        guard poll(&pfd, 1, 5_000) > 0 else {
                            results.append((halfClose, "\(label): timed out after \(received.count) bytes"))
                            break
                        }
                        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                        if n <= 0 {
                            results.append((halfClose, "\(label): closed after \(received.count) bytes"))
                            break
                        }
                        received += buffer[0..<n]
                        if case .response(let r, _) = RawExchange.parseResponse(received, from: 0, bodiless: nil, atEOF: false) {
                            results.append((halfClose, "\(label): \(r.status), \(r.body.count) bytes"))
                            break
                        }
                    }
                }
                return results
            }
            for o in outcomes { say("large answer: \(o.result)") }
            // Half-closed clients too: Hummingbird closes its output on the client's end of input and
            // NIO escalates that to a full close dropping queued bytes, unless FlushBeforeCloseHandler
            // holds the close until they are written (before it, answers over ~214 KB were cut).
            for o in outcomes { #expect(o.result.contains(": 200,"), "\(o.result)") }
        }
    }
}

// MARK: - Environment

extension FuzzEnvironment {
    /// SHREDVAULT_FUZZ_ONLY=i,j: run only those exchanges of the seeded sequence (the others are
    /// still drawn, so the PRNG stays in step); SHREDVAULT_FUZZ_DUMP=DIR writes their bytes there.
    static let only: Set<Int>? = ProcessInfo.processInfo.environment["SHREDVAULT_FUZZ_ONLY"]
        .map { Set($0.split(separator: ",").compactMap { Int($0) }) }
}

/// Runs blocking socket code on a thread of its own, off the cooperative pool the daemon's
/// handlers need.
private func fuzzOffPool<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        let thread = Thread { continuation.resume(returning: body()) }
        thread.stackSize = 8 << 20
        thread.start()
    }
}

typealias FuzzRandom = SplitMix64

extension SplitMix64 {
    mutating func hex(_ n: Int) -> String {
        let digits = Array("0123456789abcdef")
        return String((0..<n).map { _ in digits[below(16)] })
    }
    mutating func weighted<T>(_ options: [(Double, T)]) -> T {
        let total = options.reduce(0) { $0 + $1.0 }
        var x = Double(next() >> 11) / Double(UInt64(1) << 53) * total
        for (w, v) in options {
            if x < w { return v }
            x -= w
        }
        return options[options.count - 1].1
    }
}

// MARK: - Setup

/// What the fuzzer aims at: tokens, ids of existing records, the protected tenant's markers.
struct FuzzTargets: Sendable {
    let socket: String
    let maxBody: Int
    let agent: [UInt8]
    let admin: [UInt8]
    let op: [UInt8]
    /// Every token's secret part: never in any answer.
    let secrets: [[UInt8]]
    let fuzzRecords: [String]
    let keepRecords: [String]
    /// Subject and payload strings of the protected tenant: never in any answer.
    let keepMarkers: [[UInt8]]
    let subjectPool: [String]
    let routes: [FuzzRoute]
}

struct FuzzRoute: Sendable, Hashable {
    let method: String
    let path: String
}

struct FuzzSetup {
    let targets: FuzzTargets
    let keepClient: VaultHTTPClient
    let keepBodies: [(String, [UInt8])]
    let keepRecords: [(String, (subject: [UInt8], data: [UInt8]))]

    static func make(_ h: ServerHarness, seed: UInt64) async throws -> FuzzSetup {
        var rng = FuzzRandom(seed: seed ^ 0x0123_4567_89AB_CDEF)
        let fuzz = try await h.tenant("fuzz-main")
        let keep = try await h.tenant("keep-safe")
        for slug in ["sac-1", "sac-2", "sac-3"] {
            let r = try await h.operatorClient.send("POST", "/v1/admin/tenants", body: json(["id": slug]))
            precondition(r.status == 201, "tenant \(slug): \(r.status)")
        }
        let pool = (0..<4).map { _ in "cust-" + rng.hex(10) }
        var fuzzIDs: [String] = []
        for i in 0..<4 {
            let body = json(["subject": pool[i], "category": "personal", "channel": "chat",
                             "data": ["note": "fuzz-existing-\(i)", "n": i]])
            let r = try await fuzz.agent.send("POST", "/v1/records", body: body)
            precondition(r.status == 201, "fuzz record: \(r.status)")
            fuzzIDs.append(try r.object()["id"] as! String)
        }
        var keepIDs: [String] = []
        var markers: [[UInt8]] = []
        var records: [(String, (subject: [UInt8], data: [UInt8]))] = []
        for i in 0..<3 {
            let subject = "keep-subject-" + rng.hex(12)
            let note = "keep-note-" + rng.hex(12)
            let data = Array(#"{"note":"\#(note)","n":\#(i),"text":"Zoë ☃ \u00e9 😀","nested":[1,2.5,-0,true,null]}"#.utf8)
            let body = Array(#"{"subject":"\#(subject)","category":"privacy_related","channel":"email","data":"#.utf8) + data + [UInt8(ascii: "}")]
            let r = try await keep.agent.send("POST", "/v1/records", body: body)
            precondition(r.status == 201, "keep record: \(r.status)")
            let id = try r.object()["id"] as! String
            keepIDs.append(id)
            markers += [Array(subject.utf8), Array(note.utf8)]
            records.append((id, (Array(subject.utf8), data)))
        }
        var bodies: [(String, [UInt8])] = []
        for id in keepIDs {
            let r = try await keep.agent.send("GET", "/v1/records/\(id)")
            precondition(r.status == 200, "keep read: \(r.status)")
            bodies.append((id, r.body))
        }
        let tokens = [fuzz.agentToken, fuzz.adminToken, h.operatorToken, keep.agentToken, keep.adminToken]
        // Not the audit stream: it stays open, and the fuzzer reads whole answers (AuditStreamTests).
        let routes = VaultServer(vault: h.vault, configuration: .init(socketPath: h.socket)).routes
            .filter { $0.path != "/v1/audit/stream" }
            .map { FuzzRoute(method: $0.method, path: $0.path) }
        let targets = FuzzTargets(
            socket: h.socket, maxBody: 1 << 20, agent: fuzz.agentToken, admin: fuzz.adminToken, op: h.operatorToken,
            secrets: tokens.map { Array($0.dropFirst(4)) }, fuzzRecords: fuzzIDs, keepRecords: keepIDs,
            keepMarkers: markers, subjectPool: pool, routes: routes)
        return FuzzSetup(targets: targets, keepClient: keep.agent, keepBodies: bodies, keepRecords: records)
    }
}

// MARK: - JSON values to mutate

/// A JSON value kept as raw bytes where it matters, so that mutations can make it malformed.
indirect enum JV {
    case null
    case bool(Bool)
    case number(String)
    /// The bytes between the quotes, already escaped (or deliberately not).
    case string([UInt8])
    case array([JV])
    /// Raw key bytes (between the quotes) and values.
    case object([([UInt8], JV)])
    /// Emitted verbatim.
    case raw([UInt8])

    static func str(_ s: String) -> JV { .string(jsonEscape(Array(s.utf8))) }
    static func obj(_ members: [(String, JV)]) -> JV { .object(members.map { (jsonEscape(Array($0.0.utf8)), $0.1) }) }

    var nodeCount: Int {
        switch self {
        case .array(let a): 1 + a.reduce(0) { $0 + $1.nodeCount }
        case .object(let o): 1 + o.reduce(0) { $0 + $1.1.nodeCount }
        default: 1
        }
    }

    /// The node at pre-order `index`.
    func node(at index: Int) -> JV {
        var i = index
        return find(&i) ?? self
    }

    private func find(_ i: inout Int) -> JV? {
        if i == 0 { return self }
        i -= 1
        switch self {
        case .array(let a): for v in a { if let f = v.find(&i) { return f } }
        case .object(let o): for (_, v) in o { if let f = v.find(&i) { return f } }
        default: break
        }
        return nil
    }

    /// A copy with the node at pre-order `index` replaced.
    func replacing(at index: Int, with new: JV) -> JV {
        var i = index
        return replace(&i, new)
    }

    private func replace(_ i: inout Int, _ new: JV) -> JV {
        if i == 0 {
            i = -1
            return new
        }
        i -= 1
        switch self {
        case .array(let a):
            var out: [JV] = []
            for v in a { out.append(i >= 0 ? v.replace(&i, new) : v) }
            return .array(out)
        case .object(let o):
            var out: [([UInt8], JV)] = []
            for (k, v) in o { out.append((k, i >= 0 ? v.replace(&i, new) : v)) }
            return .object(out)
        default:
            return self
        }
    }

    func emit(into out: inout [UInt8], spaced: Bool) {
        switch self {
        case .null: out += Array("null".utf8)
        case .bool(let b): out += Array((b ? "true" : "false").utf8)
        case .number(let n): out += Array(n.utf8)
        case .string(let s):
            out.append(UInt8(ascii: "\""))
            out += s
            out.append(UInt8(ascii: "\""))
        case .array(let a):
            out.append(UInt8(ascii: "["))
            for (i, v) in a.enumerated() {
                if i > 0 { out += spaced ? Array(", ".utf8) : [UInt8(ascii: ",")] }
                v.emit(into: &out, spaced: spaced)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let o):
            out.append(UInt8(ascii: "{"))
            if spaced { out += Array("\n  ".utf8) }
            for (i, (k, v)) in o.enumerated() {
                if i > 0 { out += spaced ? Array(",\n  ".utf8) : [UInt8(ascii: ",")] }
                out.append(UInt8(ascii: "\""))
                out += k
                out += spaced ? Array("\": ".utf8) : Array("\":".utf8)
                v.emit(into: &out, spaced: spaced)
            }
            if spaced { out += Array("\n".utf8) }
            out.append(UInt8(ascii: "}"))
        case .raw(let r): out += r
        }
    }

    func bytes(spaced: Bool = false) -> [UInt8] {
        var out: [UInt8] = []
        emit(into: &out, spaced: spaced)
        return out
    }
}

func jsonEscape(_ bytes: [UInt8]) -> [UInt8] {
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count)
    let hex = Array("0123456789abcdef".utf8)
    for b in bytes {
        switch b {
        case UInt8(ascii: "\""), UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), b]
        case 0..<0x20: out += Array("\\u00".utf8) + [hex[Int(b >> 4)], hex[Int(b & 15)]]
        default: out.append(b)
        }
    }
    return out
}

// MARK: - Exchanges

/// One request as bytes on the wire, and what the checks need to know about it.
struct WireRequest {
    var bytes: [UInt8]
    var method: String
    var label: String
    /// Subject and payload strings it sent: never echoed, unless `echoAllowed` and 2xx.
    var markers: [[UInt8]] = []
    var echoAllowed = false
    /// Token-like bytes it sent in Authorization (other than the real tokens): never echoed.
    var sentSecrets: [[UInt8]] = []
    /// Whether the framing is whole (else the connection is half-closed at once).
    var complete = true
}

struct Exchange {
    var requests: [WireRequest]
    /// Bytes sent one at a time, with `pauseMicros` between them (slow writer).
    var slowPrefix = 0
    var pauseMicros: UInt32 = 1_000
    /// Shut the write side after sending.
    var halfClose = false
    /// Close right after sending part of it, reading nothing.
    var abandonAfter: Int?
    var label: String {
        var mode: [String] = []
        if requests.count > 1 { mode.append("pipelined ×\(requests.count)") }
        if slowPrefix > 0 { mode.append("slow writer") }
        if halfClose { mode.append("half-closed") }
        if let cut = abandonAfter { mode.append("abandoned after \(cut) bytes") }
        return (mode.isEmpty ? "" : "(" + mode.joined(separator: ", ") + ") ") + requests.map(\.label).joined(separator: " | ")
    }
}

/// What a run found.
struct FuzzReport: Sendable {
    var passed = 0
    var failed = 0
    var failures: [String] = []
    var statuses: [Int: Int] = [:]
    var closedWithoutAnswer = 0
    var parserRejects = 0
    var idleHalfCloses = 0
    var rateLimited = 0
    var abandoned = 0
    var connectAnswers = 0
    var knownIssues: [String] = []
    /// Labels of the first exchanges closed without any answer (for a look, not a failure).
    var unanswered: [String] = []
    var slow: [(Duration, String)] = []

    var summary: String {
        let s = statuses.keys.sorted().map { "\($0)×\(statuses[$0]!)" }.joined(separator: " ")
        return "statuses [\(s)], \(closedWithoutAnswer) closed without an answer, \(parserRejects) parser 400s, "
            + "\(abandoned) abandoned, \(idleHalfCloses) idle half-closes, \(rateLimited) rate-limited, "
            + "\(connectAnswers) CONNECT answers without framing, \(knownIssues.count) known issues"
    }
}

// MARK: - The fuzzer

struct HTTPFuzzer {
    let t: FuzzTargets
    var rng: FuzzRandom
    var report = FuzzReport()

    init(targets: FuzzTargets, seed: UInt64) {
        t = targets
        rng = FuzzRandom(seed: seed)
    }

    mutating func run(count: Int) -> FuzzReport {
        var recent: [String] = []
        for i in 0..<count {
            let ex = exchange()
            if let only = FuzzEnvironment.only {
                guard only.contains(i) else { continue }
                if let dir = ProcessInfo.processInfo.environment["SHREDVAULT_FUZZ_DUMP"] {
                    FileManager.default.createFile(atPath: "\(dir)/exchange-\(i).bin", contents: Data(ex.requests.flatMap(\.bytes)))
                }
                say("http fuzz: exchange \(i): \(ex.label.prefix(300))")
            }
            let began = ContinuousClock.now
            let outcome = RawExchange.run(ex, socket: t.socket)
            let took = ContinuousClock.now - began
            if took > .milliseconds(500) {
                report.slow.append((took, "exchange \(i): " + ex.label + " → \(outcome.responses.map(\.status))"))
                report.slow.sort { $0.0 > $1.0 }
                if report.slow.count > 5 { report.slow.removeLast() }
            }
            tally(ex, outcome)
            var violations = check(ex, outcome)
            // The one known issue (HTTPLargeAnswerTests): a client that half-closed gets a large
            // answer cut at the socket buffer. Counted and reported apart, not hidden.
            if let only = violations.first, violations.count == 1, only.hasPrefix("malformed response stream: body shorter than Content-Length"),
               ex.halfClose || outcome.idleHalfClose || ex.requests.contains(where: { !$0.complete }) {
                report.knownIssues.append("exchange \(i): \(ex.label.prefix(120)) — \(only)")
                violations = []
            }
            if violations.isEmpty {
                report.passed += 1
            } else {
                report.failed += 1
                if report.failures.count < 50 {
                    report.failures.append("exchange \(i): \(ex.label)\n  " + violations.joined(separator: "\n  ")
                        + "\n  sent: \(excerpt(ex.requests.flatMap(\.bytes)))\n  got: \(excerpt(outcome.received))"
                        + "\n  after: " + recent.joined(separator: "\n         "))
                }
            }
            recent.append("\(i): \(ex.label.prefix(140))")
            if recent.count > 4 { recent.removeFirst() }
        }
        return report
    }

    mutating func tally(_ ex: Exchange, _ outcome: RawOutcome) {
        if ex.abandonAfter != nil { report.abandoned += 1 }
        if outcome.idleHalfClose { report.idleHalfCloses += 1 }
        if outcome.responses.isEmpty && outcome.closedByServer && ex.abandonAfter == nil {
            report.closedWithoutAnswer += 1
            if report.unanswered.count < 8 { report.unanswered.append(ex.label.prefix(160).description) }
        }
        for r in outcome.responses {
            report.statuses[r.status, default: 0] += 1
            if r.status == 429 { report.rateLimited += 1 }
            if r.status == 400 && r.body.isEmpty && !r.bodiless { report.parserRejects += 1 }
            if r.bodiless && r.method == "CONNECT" { report.connectAnswers += 1 }
        }
    }

    /// The first bytes of `b`, escaped, with real tokens blanked.
    func excerpt(_ b: [UInt8]) -> String {
        var text = String(decoding: b.prefix(400).map { $0 < 0x20 && $0 != 0x0A ? UInt8(ascii: "~") : $0 }, as: UTF8.self)
        for s in t.secrets { text = text.replacingOccurrences(of: String(decoding: s, as: UTF8.self), with: "<token>") }
        return text.replacingOccurrences(of: "\n", with: "⏎") + (b.count > 400 ? "… (\(b.count) bytes)" : "")
    }

    // MARK: Exchanges

    mutating func exchange() -> Exchange {
        switch rng.weighted([(86.0, 0), (6, 1), (2, 2), (2.5, 3), (2, 4), (1.5, 5)]) {
        case 1:  // pipelined
            let n = rng.between(2, 4)
            return Exchange(requests: (0..<n).map { _ in request(pipelined: true) })
        case 2:  // slow writer
            var ex = Exchange(requests: [request(pipelined: false)])
            ex.slowPrefix = rng.between(5, 40)
            ex.pauseMicros = UInt32(rng.between(500, 3_000))
            return ex
        case 3:  // half-closed after a whole request
            var ex = Exchange(requests: [request(pipelined: false)])
            ex.halfClose = true
            return ex
        case 4:  // abandoned part-way
            var ex = Exchange(requests: [request(pipelined: false)])
            ex.abandonAfter = rng.below(max(1, ex.requests[0].bytes.count))
            return ex
        case 5:
            return Exchange(requests: [garbageConnection()])
        default:
            return Exchange(requests: [request(pipelined: false)])
        }
    }

    /// Not HTTP at all, or HTTP broken before any route is reached.
    mutating func garbageConnection() -> WireRequest {
        let options: [(String, [UInt8])] = [
            ("random bytes", rng.bytes(rng.between(1, 300))),
            ("HTTP/2 preface", Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)),
            ("TLS hello", [0x16, 0x03, 0x01, 0x00, 0xA5, 0x01, 0x00, 0x00, 0xA1, 0x03, 0x03] + rng.bytes(40)),
            ("empty lines", Array("\r\n\r\n\r\n".utf8)),
            ("long request line", Array("GET /".utf8) + [UInt8](repeating: UInt8(ascii: "a"), count: 100_000) + Array(" HTTP/1.1\r\n\r\n".utf8)),
            ("endless header", Array("GET /healthz HTTP/1.1\r\nX-A: ".utf8) + [UInt8](repeating: UInt8(ascii: "b"), count: 200_000)),
            ("many headers", Array("GET /healthz HTTP/1.1\r\n".utf8) + (0..<3_000).flatMap { Array("X-H\($0): v\r\n".utf8) } + Array("\r\n".utf8)),
            ("NUL request", [0, 0, 0, 0, 13, 10, 13, 10]),
            ("just a method", Array("GET".utf8)),
            ("nothing", []),
            ("HTTP/0.9", Array("GET /healthz\r\n".utf8)),
            ("response sent to the server", Array("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".utf8)),
        ]
        let (name, bytes) = rng.pick(options)
        return WireRequest(bytes: bytes, method: "-", label: "garbage: \(name)", complete: false)
    }

    // MARK: Requests

    enum Who { case none, agent, admin, op }
    enum BodyKind { case none, record, batch, correction, subjects, erase, retention, extensionBody, hold, tenant, token, random }
    enum IDKind { case record, ulid, tenant, token, junk }

    struct Spec {
        var allowed: [Who]
        var body: BodyKind = .none
        var id: IDKind? = nil
        var echo = false
        var query = false
        var weight = 1.0
    }

    static func spec(_ r: FuzzRoute) -> Spec {
        switch (r.method, r.path) {
        case ("GET", "/healthz"): Spec(allowed: [.none], weight: 0.5)
        case ("GET", "/metrics"): Spec(allowed: [.op], weight: 0.3)
        case ("POST", "/v1/records"): Spec(allowed: [.agent, .admin], body: .record, weight: 6)
        case ("POST", "/v1/records/batch"): Spec(allowed: [.agent, .admin], body: .batch, weight: 2.5)
        case ("GET", "/v1/records/{id}"): Spec(allowed: [.agent, .admin], id: .record, weight: 3)
        case ("PUT", "/v1/records/{id}"): Spec(allowed: [.agent, .admin], body: .correction, id: .record, weight: 3)
        case ("DELETE", "/v1/records/{id}"): Spec(allowed: [.admin], id: .record, weight: 1.5)
        case ("POST", "/v1/subjects/records"): Spec(allowed: [.agent, .admin], body: .subjects, echo: true, weight: 2)
        case ("POST", "/v1/subjects/erase"): Spec(allowed: [.admin], body: .erase, weight: 1.5)
        case ("GET", "/v1/retention"): Spec(allowed: [.admin], weight: 0.5)
        case ("PUT", "/v1/retention"): Spec(allowed: [.admin], body: .retention, weight: 2)
        case ("POST", "/v1/retention/extensions"): Spec(allowed: [.admin], body: .extensionBody, weight: 2)
        case ("DELETE", "/v1/retention/extensions/{id}"): Spec(allowed: [.admin], id: .ulid)
        case ("POST", "/v1/holds"): Spec(allowed: [.admin], body: .hold, weight: 2)
        case ("GET", "/v1/holds"): Spec(allowed: [.admin], weight: 0.5)
        case ("DELETE", "/v1/holds/{id}"): Spec(allowed: [.admin], id: .ulid)
        case ("GET", "/v1/audit"): Spec(allowed: [.admin], query: true)
        case ("GET", "/v1/report"): Spec(allowed: [.admin], weight: 0.5)
        case ("POST", "/v1/admin/tenants"): Spec(allowed: [.op], body: .tenant, weight: 1.5)
        case ("GET", "/v1/admin/tenants"): Spec(allowed: [.op], weight: 0.5)
        case ("DELETE", "/v1/admin/tenants/{id}"): Spec(allowed: [.op], id: .tenant)
        case ("POST", "/v1/admin/tokens"): Spec(allowed: [.op], body: .token, weight: 1.5)
        case ("DELETE", "/v1/admin/tokens/{id}"): Spec(allowed: [.op], id: .token)
        case ("POST", "/v1/admin/rotate"), ("POST", "/v1/admin/compact"): Spec(allowed: [.op], weight: 0.08)
        case ("POST", "/v1/admin/sweep"): Spec(allowed: [.op], weight: 0.2)
        case ("GET", "/v1/admin/stats"): Spec(allowed: [.op], weight: 0.5)
        case ("POST", "/v1/admin/snapshot"), ("GET", "/v1/admin/journal"), ("POST", "/v1/admin/promote"):
            Spec(allowed: [.op], weight: 0.2)
        case ("GET", "/v1/admin/audit"): Spec(allowed: [.op], query: true, weight: 0.5)
        case ("GET", "/v1/admin/audit/verify"): Spec(allowed: [.op], weight: 0.3)
        default:
            // A route this table does not know yet: any token, a random JSON body.
            Spec(allowed: [.agent, .admin, .op], body: r.method == "POST" || r.method == "PUT" ? .random : .none,
                 id: r.path.contains("{") ? .junk : nil)
        }
    }

    func token(_ who: Who) -> [UInt8]? {
        switch who {
        case .none: nil
        case .agent: t.agent
        case .admin: t.admin
        case .op: t.op
        }
    }

    mutating func request(pipelined: Bool) -> WireRequest {
        let route = rng.weighted(t.routes.map { (Self.spec($0).weight, $0) })
        let spec = Self.spec(route)
        var notes: [String] = []

        // Who asks.
        var who: Who = rng.chance(0.85) ? rng.pick(spec.allowed) : rng.pick([.agent, .admin, .op])
        if who == .none { who = rng.pick([.agent, .admin, .op]) }

        // Method.
        var method = route.method
        if rng.chance(0.1) {
            method = rng.pick(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT", "get", "Post",
                               "FOO", "M-SEARCH", "PROPFIND", "GET GET", "G\u{0}T", "", String(repeating: "A", count: 300), "ÄÖÜ"])
            if pipelined && (method == "HEAD" || method == "CONNECT") { method = "GET" }
            notes.append("method \(method.prefix(12))")
        }

        // Target.
        var target = Array(route.path.utf8)
        if let idKind = spec.id {
            let segment = pathSegment(idKind, notes: &notes)
            target = Array(route.path.replacingOccurrences(of: "{id}", with: "\u{1}").utf8)
            if let slot = target.firstIndex(of: 1) { target.replaceSubrange(slot...slot, with: segment) }
        }
        if spec.query { target += auditQuery(notes: &notes) }
        if rng.chance(0.07) { target = mutateTarget(target, route: route, notes: &notes) }

        // Version.
        var version = "HTTP/1.1"
        if rng.chance(0.03) {
            version = rng.pick(["HTTP/1.0", "HTTP/2.0", "HTTP/1.2", "HTTP/1.1 x", "http/1.1", "HTTP/1", "", "HTTP/9.9"])
            notes.append("version \(version)")
        }

        // Body.
        var markers: [[UInt8]] = []
        var body: [UInt8]? = nil
        let kind: BodyKind = spec.body != .none ? spec.body : (rng.chance(0.05) ? .random : .none)
        if kind != .none {
            body = makeBody(kind, markers: &markers, notes: &notes)
        }

        // Headers.
        var headers: [[UInt8]] = []
        var sentSecrets: [[UInt8]] = []
        if !rng.chance(0.03) { headers.append(Array("Host: vault".utf8)) } else { notes.append("no Host") }
        switch rng.weighted([(88.0, 0), (9, 1), (3, 2)]) {
        case 0: if let tok = token(who) { headers.append(Array("Authorization: Bearer ".utf8) + tok) }
        case 1: headers += authorizationVariant(token(who) ?? t.agent, sent: &sentSecrets, notes: &notes)
        default: notes.append("no Authorization")
        }
        if body != nil {
            if rng.chance(0.9) { headers.append(Array("Content-Type: application/json".utf8)) }
            else {
                let ct = rng.pick(["text/plain", "application/json; charset=utf-16", "application/problem+json",
                                   "multipart/form-data; boundary=x", "", "application/x-www-form-urlencoded",
                                   String(repeating: "a/b;", count: 2_000)])
                headers.append(Array("Content-Type: \(ct)".utf8))
                notes.append("content-type \(ct.prefix(20))")
            }
        }
        if rng.chance(0.08) { headers += junkHeaders(notes: &notes) }
        if rng.chance(0.02), !pipelined { headers.append(Array("Connection: close".utf8)) }

        var requestLine = Array(method.utf8) + [UInt8(ascii: " ")] + target
        if !version.isEmpty { requestLine += [UInt8(ascii: " ")] + Array(version.utf8) }
        let framed = frame(requestLine: requestLine, headers: headers, body: body, allowBadFraming: !pipelined, notes: &notes)
        return WireRequest(bytes: framed.bytes, method: method,
                           label: "\(method.prefix(12)) \(route.path) as \(who)" + (notes.isEmpty ? "" : " [" + notes.joined(separator: ", ") + "]"),
                           markers: markers, echoAllowed: spec.echo && method == route.method, sentSecrets: sentSecrets,
                           complete: framed.complete)
    }

    // MARK: Paths

    mutating func ulid() -> String {
        let alphabet = Array("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
        return String(alphabet[below(8)]) + String((0..<25).map { _ in alphabet[below(32)] })
    }

    mutating func below(_ n: Int) -> Int { rng.below(n) }

    mutating func pathSegment(_ kind: IDKind, notes: inout [String]) -> [UInt8] {
        var base: String
        switch kind {
        case .record:
            let (f, k, u, x) = (rng.pick(t.fuzzRecords), rng.pick(t.keepRecords), ulid(), rng.hex(26))
            base = rng.weighted([(4.0, f), (2, k), (2, u), (1, x)])
        case .ulid:
            let (u, k, f) = (ulid(), rng.pick(t.keepRecords), rng.pick(t.fuzzRecords))
            base = rng.weighted([(3.0, u), (1, k), (1, f)])
        case .tenant:
            // Never a live tenant the run depends on (fuzz-main, keep-safe).
            let nope = "nope-" + rng.hex(4)
            base = rng.pick(["sac-1", "sac-2", "sac-3", nope, "Not-A-Slug", String(repeating: "a", count: 64), "-", "x"])
        case .token:
            let (u1, u2, h64, h8) = (ulid(), ulid(), rng.hex(64), rng.hex(8))
            base = rng.pick(["tok_" + u1, "tok_", u2, "h" + h64, h8])
        case .junk:
            base = rng.hex(rng.between(1, 40))
        }
        var segment = Array(base.utf8)
        if rng.chance(0.45) {
            let choice = rng.below(16)
            switch choice {
            case 0: segment = Array(base.lowercased().utf8)
            case 1:
                if !segment.isEmpty { segment[rng.below(segment.count)] = rng.pick(Array("ILOUilou0".utf8)) }
            case 2: segment = Array(segment.dropLast())
            case 3: segment += Array(rng.pick(["A", "0", "Z", "é"]).utf8)
            case 4: segment = segment.flatMap { Array("%".utf8) + fuzzHexByte($0) }
            case 5: segment += Array(rng.pick(["%00", "%2F", "%2e%2e", "%zz", "%", "%C3%A9", "%FF"]).utf8)
            case 6: segment += Array(rng.pick(["é", "０", "😀", "\u{202E}", "\u{FEFF}", "ß"]).utf8)
            case 7: segment += [0xFF, 0xC3]
            case 8: segment = [UInt8](repeating: UInt8(ascii: "A"), count: rng.pick([300, 600, 5_000, 70_000]))
            case 9: segment = Array(rng.pick(["..", ".", "../admin/stats", "./" + base, "%2e%2e/%2e%2e/healthz"]).utf8)
            case 10: segment = []
            case 11: segment += Array(rng.pick(["/", "?x=1", "#frag", ";p=1", "/extra"]).utf8)
            case 12: segment = Array(rng.pick(t.keepRecords).lowercased().utf8)
            case 13: segment += [UInt8(ascii: " "), UInt8(ascii: "x")]
            case 14: segment.insert(UInt8(ascii: "\t"), at: rng.below(segment.count + 1))
            default: segment = Array(String(repeating: base, count: 3).utf8)
            }
            notes.append("segment mutation \(choice)")
        }
        return segment
    }

    mutating func auditQuery(notes: inout [String]) -> [UInt8] {
        let q = rng.pick(["", "?limit=2", "?after=1&limit=1000", "?after=-1", "?limit=0", "?limit=1001", "?limit=abc",
                          "?after=18446744073709551615", "?after=18446744073709551614&limit=5", "?after=99999999999999999999999",
                          "?limit=1&limit=2", "?after=%31", "?after=1e3", "?limit=%", "?after", "?=&&=", "?limit=5#x",
                          "?after=\u{00e9}", "?limit=" + String(repeating: "9", count: 500)])
        if !q.isEmpty { notes.append("query \(q.prefix(20))") }
        return Array(q.utf8)
    }

    mutating func mutateTarget(_ target: [UInt8], route: FuzzRoute, notes: inout [String]) -> [UInt8] {
        let options: [[UInt8]] = [
            Array("/v1/records/../admin/stats".utf8), Array("/v1//records".utf8), Array("//v1/records".utf8),
            Array("/V1/RECORDS".utf8), target + [UInt8(ascii: "/")], Array(target.dropFirst()), Array("*".utf8),
            Array("http://vault".utf8) + target, Array("http://other-host:99".utf8) + target, target + Array("?%".utf8),
            Array("/v1/rec ords".utf8), target + [0x00], target + Array("/%2e%2e/%2e%2e/v1/admin/stats".utf8),
            Array("/v1/./records/.".utf8), Array("/v1/records%2Fbatch".utf8), target + [0xC3, 0x28],
            Array("/\u{00e9}t\u{00e9}".utf8), Array("/v1/admin/audit/verify/../../admin/stats".utf8),
            [UInt8](repeating: UInt8(ascii: "/"), count: 5_000), Array("".utf8),
        ]
        let pick = rng.below(options.count)
        notes.append("target mutation \(pick)")
        return options[pick]
    }

    // MARK: Authorization

    mutating func authorizationVariant(_ token: [UInt8], sent: inout [[UInt8]], notes: inout [String]) -> [[UInt8]] {
        let header = Array("Authorization: ".utf8)
        let choice = rng.below(22)
        notes.append("auth variant \(choice)")
        func bearer(_ v: [UInt8]) -> [UInt8] { header + Array("Bearer ".utf8) + v }
        let randomSecret = rng.hex(43)
        let cut = rng.between(1, token.count - 1)
        let flip = rng.between(4, token.count - 1)
        let padding = rng.pick([100, 1_000, 60_000])
        let lines: [[UInt8]]
        switch choice {
        case 0: lines = [header + Array("Bearer".utf8)]
        case 1: lines = [header + Array("Bearer ".utf8)]
        case 2: lines = [header + Array("Basic ".utf8) + Array(Data(token).base64EncodedString().utf8)]
        case 3: lines = [header + Array("Token ".utf8) + token]
        case 4: lines = [header + Array("bearer ".utf8) + token]
        case 5: lines = [header + Array("BEARER ".utf8) + token]
        case 6: lines = [header + Array("Bearer  ".utf8) + token]
        case 7: lines = [bearer(Array(token.prefix(cut)))]
        case 8: lines = [bearer(token + Array("x".utf8))]
        case 9: lines = [bearer(token + [UInt8](repeating: UInt8(ascii: "A"), count: padding))]
        case 10: lines = [bearer(token + token)]
        case 11:
            var t2 = token
            t2[flip] = t2[flip] == UInt8(ascii: "A") ? UInt8(ascii: "B") : UInt8(ascii: "A")
            lines = [bearer(t2)]
        case 12: lines = [bearer(Array(token.prefix(20)) + Array("é".utf8) + Array(token.dropFirst(22)))]
        case 13: lines = [bearer(Array(token.prefix(30)) + [0xFF, 0xFE] + Array(token.dropFirst(32)))]
        case 14: lines = [bearer(Array(token.prefix(10)) + [0] + Array(token.dropFirst(11)))]
        case 15: lines = [bearer(Array("svt_".utf8) + Array(randomSecret.utf8))]
        case 16: lines = [bearer(token), bearer(Array("svt_".utf8) + Array(randomSecret.utf8))]
        case 17: lines = [bearer(token), bearer(token)]
        case 18: lines = [header]
        case 19: lines = [header + [UInt8](repeating: UInt8(ascii: "B"), count: 70_000)]
        case 20: lines = [Array("authorization: Bearer ".utf8) + token + [UInt8(ascii: " "), UInt8(ascii: "\t")]]
        default: lines = [bearer(Array(token.reversed()))]
        }
        // What this request sent that is not one of the real tokens: long enough to search for.
        for line in lines {
            let value = Array(line.dropFirst(header.count))
            if value.count >= 19 { sent.append(Array(value.suffix(from: 7).prefix(40))) }
        }
        return lines
    }

    // MARK: Headers and framing

    mutating func junkHeaders(notes: inout [String]) -> [[UInt8]] {
        let choice = rng.below(16)
        notes.append("header junk \(choice)")
        switch choice {
        case 0: return [Array("X-Junk: ".utf8) + [UInt8](repeating: UInt8(ascii: "j"), count: 8_000)]
        case 1: return (0..<200).map { Array("X-Many-\($0): \($0)".utf8) }
        case 2: return [Array("X Bad Name: 1".utf8)]
        case 3: return [Array("Bad\u{0}Name: x".utf8)]
        case 4: return [Array("X-Value: ".utf8) + [0xC3, 0xA9, 0xFF, 0x80]]
        case 5: return [Array("X-Folded: a".utf8), Array(" continued".utf8)]
        case 6: return [Array("no colon here".utf8)]
        case 7: return [Array(": empty name".utf8)]
        case 8: return [Array("Expect: 100-continue".utf8)]
        case 9: return [Array("Connection: keep-alive, Upgrade".utf8), Array("Upgrade: h2c".utf8)]
        case 10: return [Array("Upgrade: websocket".utf8), Array("Connection: Upgrade".utf8), Array("Sec-WebSocket-Key: x".utf8)]
        case 11: return [Array("Content-Encoding: gzip".utf8)]
        case 12: return [Array("Host: second".utf8)]
        case 13: return [Array("X-Nul: a\u{0}b".utf8)]
        case 14: return [Array("X-Space : 1".utf8)]
        default: return [Array("Content-Type: text/plain".utf8)]
        }
    }

    struct Framed {
        var bytes: [UInt8]
        var complete: Bool
    }

    mutating func frame(requestLine: [UInt8], headers: [[UInt8]], body: [UInt8]?, allowBadFraming: Bool,
                        notes: inout [String]) -> Framed {
        let eol: [UInt8] = rng.chance(0.03) ? [10] : [13, 10]
        if eol.count == 1 { notes.append("LF line ends") }
        var framingHeaders: [[UInt8]] = []
        var payload: [UInt8] = []
        var complete = true
        let maxBody = t.maxBody

        func chunked(_ b: [UInt8], rng: inout FuzzRandom) -> [UInt8] {
            var out: [UInt8] = []
            var i = 0
            while i < b.count {
                let n = min(b.count - i, rng.pick([1, 7, 100, 4_096, 65_536, 1 << 20]))
                out += Array(String(n, radix: 16).utf8)
                if rng.chance(0.05) { out += Array(";ext=1".utf8) }
                out += [13, 10] + b[i..<(i + n)] + [13, 10]
                i += n
            }
            out += Array("0\r\n".utf8)
            if rng.chance(0.05) { out += Array("X-Trailer: t\r\n".utf8) }
            out += [13, 10]
            return out
        }

        if let body {
            let mode = allowBadFraming ? rng.weighted([(78.0, 0), (10, 1), (12, 2)]) : rng.weighted([(85.0, 0), (15, 1)])
            switch mode {
            case 1:
                framingHeaders.append(Array("Transfer-Encoding: chunked".utf8))
                payload = chunked(body, rng: &rng)
                notes.append("chunked")
            case 2:
                let bad = rng.below(18)
                notes.append("bad framing \(bad)")
                switch bad {
                case 0:
                    framingHeaders.append(Array("Content-Length: \(body.count + rng.between(1, 100))".utf8))
                    payload = body
                    complete = false
                case 1:
                    framingHeaders.append(Array("Content-Length: \(max(0, body.count - rng.between(1, 20)))".utf8))
                    payload = body
                case 2:
                    framingHeaders += [Array("Content-Length: \(body.count)".utf8), Array("Content-Length: \(body.count)".utf8)]
                    payload = body
                case 3:
                    framingHeaders += [Array("Content-Length: \(body.count)".utf8), Array("Content-Length: \(body.count + 1)".utf8)]
                    payload = body
                case 4:
                    framingHeaders.append(Array("Content-Length: \(rng.pick(["99999999999999999999", "18446744073709551616", "9223372036854775807"]))".utf8))
                    payload = body
                    complete = false
                case 5:
                    framingHeaders.append(Array("Content-Length: \(rng.pick(["-1", "+5", " 5 ", "5 5", "0x10", "", "1e3", "٣"]))".utf8))
                    payload = body
                case 6:
                    framingHeaders.append(Array("Content-Length: \(maxBody + rng.between(1, 1 << 20))".utf8))
                    payload = Array(body.prefix(100))
                    complete = false
                case 7:
                    payload = body  // no length at all: the body reads as the next request
                case 8:
                    framingHeaders.append(Array("Transfer-Encoding: chunked".utf8))
                    payload = Array("zz\r\n".utf8) + body + Array("\r\n0\r\n\r\n".utf8)
                case 9:
                    framingHeaders.append(Array("Transfer-Encoding: chunked".utf8))
                    payload = Array(String(body.count + 50, radix: 16).utf8) + [13, 10] + body + Array("\r\n0\r\n\r\n".utf8)
                    complete = false
                case 10:
                    framingHeaders.append(Array("Transfer-Encoding: chunked".utf8))
                    payload = Array("ffffffffffffffffff\r\n".utf8) + body
                    complete = false
                case 11:
                    framingHeaders.append(Array("Transfer-Encoding: chunked".utf8))
                    payload = Array(String(body.count, radix: 16).utf8) + [13, 10] + body  // no CRLF, no last chunk
                    complete = false
                case 12:
                    framingHeaders.append(Array("Transfer-Encoding: chunked".utf8))
                    payload = Array("-1\r\n".utf8) + body + Array("\r\n0\r\n\r\n".utf8)
                case 13:
                    framingHeaders += [Array("Content-Length: \(body.count)".utf8), Array("Transfer-Encoding: chunked".utf8)]
                    payload = chunked(body, rng: &rng)
                case 14:
                    framingHeaders.append(Array("Transfer-Encoding: \(rng.pick(["gzip", "identity", "gzip, chunked", "Chunked", "chunked, chunked", "x"]))".utf8))
                    payload = chunked(body, rng: &rng)
                case 15:
                    framingHeaders += [Array("Transfer-Encoding: chunked".utf8), Array("Transfer-Encoding: chunked".utf8)]
                    payload = chunked(body, rng: &rng)
                case 16:
                    // A chunked body over the limit, small chunks.
                    framingHeaders.append(Array("Transfer-Encoding: chunked".utf8))
                    let filler = [UInt8](repeating: UInt8(ascii: " "), count: maxBody + 10)
                    payload = chunked(body + filler, rng: &rng)
                default:
                    framingHeaders.append(Array("Transfer-Encoding: chunked".utf8))
                    payload = Array(String(body.count, radix: 16).utf8) + Array(" \n".utf8) + body + Array("\n0\n\n".utf8)
                }
            default:
                framingHeaders.append(Array("Content-Length: \(body.count)".utf8))
                payload = body
            }
        } else if rng.chance(0.04) {
            framingHeaders.append(Array("Content-Length: 0".utf8))
        }

        var out = requestLine + eol
        var all = headers + framingHeaders
        if rng.chance(0.05), all.count > 1 { all.shuffle(using: &rng) }
        for h in all { out += h + eol }
        out += eol
        out += payload
        return Framed(bytes: out, complete: complete)
    }

    // MARK: Bodies

    mutating func subject(markers: inout [[UInt8]]) -> JV {
        let (fresh, pooled, named, emoji) = ("cust-" + rng.hex(10), rng.pick(t.subjectPool),
                                             "Zoë Ångström +49 151 " + rng.hex(8), "\u{1F600}" + rng.hex(12))
        let s: String = rng.weighted([(6.0, fresh), (2, pooled), (1, named), (0.5, emoji)])
        markers.append(Array(s.utf8))
        if rng.chance(0.03) { return .str("") }
        if rng.chance(0.02) { return .str(String(repeating: "s", count: 1_025)) }
        return .str(s)
    }

    mutating func randomData(markers: inout [[UInt8]], depth: Int = 0) -> JV {
        let marker = "note-" + rng.hex(12)
        markers.append(Array(marker.utf8))
        var members: [(String, JV)] = [("note", .str(marker))]
        for _ in 0..<rng.below(4) {
            members.append((rng.pick(["n", "text", "list", "nested", "flag", "empty", "käse", "a b"]), randomValue(depth: depth + 1)))
        }
        return .obj(members)
    }

    mutating func randomValue(depth: Int) -> JV {
        let choice = rng.below(depth > 3 ? 5 : 7)
        switch choice {
        case 0: return .null
        case 1: return .bool(rng.chance(0.5))
        case 2: return .number(rng.pick(["0", "-0", "1", "-17", "3.25", "1e3", "6.02E+23", "1e-7", "9007199254740993", "-9223372036854775808"]))
        case 3: return .str(rng.pick(["", "plain", "Zoë", "日本語", "\u{1F600}", "tab\there", "quote\"back\\slash", "\u{2028}", "\u{0}", "\u{10FFFF}"]))
        case 4: return .string(Array(rng.pick(["\\u00e9", "\\ud83d\\ude00", "\\n\\r\\t\\b\\f\\/", "\\u0000"]).utf8))
        case 5: return .array((0..<rng.below(4)).map { _ in randomValue(depth: depth + 1) })
        default: return .obj((0..<rng.below(4)).map { i in ("k\(i)", randomValue(depth: depth + 1)) })
        }
    }

    mutating func duration() -> JV {
        .str(rng.pick(["P30D", "PT5S", "P1D", "P92D", "P93D", "P365D", "P1Y", "P1M", "PT", "P", "", "P1DT", "P0D", "-P1D",
                       "P99999999999999D", "P1W", "PT1H30M", "P1DT12H", "P1D1D", "p1d", "P1.5D", "P１D", "PT0S", "P36500D", "P36501D"]))
    }

    mutating func recordBody(markers: inout [[UInt8]]) -> JV {
        var members: [(String, JV)] = [
            ("subject", subject(markers: &markers)),
            ("category", .str(rng.chance(0.93) ? rng.pick(["personal", "non_personal", "privacy_related"]) : rng.pick(["secret", "Personal", ""]))),
            ("channel", .str(rng.chance(0.93) ? rng.pick(["phone", "email", "chat", "sms", "web", "other"]) : rng.pick(["pigeon", "PHONE", ""]))),
            ("data", randomData(markers: &markers)),
        ]
        if rng.chance(0.25) { members.append(("retention", duration())) }
        if rng.chance(0.3) { members.shuffle(using: &rng) }
        return .obj(members)
    }

    mutating func makeBody(_ kind: BodyKind, markers: inout [[UInt8]], notes: inout [String]) -> [UInt8] {
        // Sizes around the body limit: a whole record body of exactly that many bytes.
        if kind == .record, rng.chance(0.012) {
            let size = t.maxBody + rng.pick([-1, 0, 1, 4_096, -4_096])
            notes.append("body of \(size) bytes")
            let marker = "note-" + rng.hex(12)
            let subject = "cust-" + rng.hex(10)
            markers += [Array(marker.utf8), Array(subject.utf8)]
            let head = Array(#"{"subject":"\#(subject)","category":"personal","channel":"web","data":{"note":"\#(marker)","blob":""#.utf8)
            let tail = Array(#""}}"#.utf8)
            return head + [UInt8](repeating: UInt8(ascii: "x"), count: max(0, size - head.count - tail.count)) + tail
        }
        var value: JV
        switch kind {
        case .none, .random: value = randomData(markers: &markers)
        case .record: value = recordBody(markers: &markers)
        case .batch:
            let n = rng.chance(0.02) ? 1_001 : rng.between(0, 4)
            value = .obj([("records", .array((0..<n).map { _ in rng.chance(0.9) ? recordBody(markers: &markers) : randomValue(depth: 2) }))])
        case .correction: value = .obj([("data", rng.chance(0.9) ? randomData(markers: &markers) : randomValue(depth: 1))])
        case .subjects:
            var m: [(String, JV)] = [("subject", subject(markers: &markers))]
            if rng.chance(0.4) { m.append(("export", rng.chance(0.8) ? .bool(rng.chance(0.5)) : .str("true"))) }
            value = .obj(m)
        case .erase:
            var m: [(String, JV)] = [("subject", subject(markers: &markers))]
            if rng.chance(0.6) { m.append(("reference", .str(rng.pick(["ticket-42", "", String(repeating: "r", count: 201)])))) }
            value = .obj(m)
        case .retention:
            var m: [(String, JV)] = []
            if rng.chance(0.8) { m.append(("default", duration())) }
            if rng.chance(0.6) {
                m.append(("categories", .obj((0..<rng.below(4)).map { _ in
                    (rng.pick(["personal", "non_personal", "privacy_related", "nope", ""]), duration())
                })))
            }
            value = .obj(m)
        case .extensionBody:
            value = .obj([
                ("purpose", .str(rng.pick(["quality", "legal", "other", "fun", ""]))),
                ("reference", .str(rng.pick(["contract-7", "", String(repeating: "c", count: 201)]))),
                ("retention", duration()),
                ("categories", rng.chance(0.8) ? .array((0..<rng.below(4)).map { _ in .str(rng.pick(["personal", "non_personal", "privacy_related", "x"])) }) : .null),
                ("until", .str(rng.pick(["2099-01-01T00:00:00Z", "2000-01-01T00:00:00Z", "2099-13-01T00:00:00Z", "2099-02-30T00:00:00Z",
                                         "9999-12-31T23:59:60.999999Z", "0000-01-01T00:00:00Z", "2099-01-01T00:00:00+25:00",
                                         "2099-01-01 00:00:00Z", "", "x", "2099-01-01T00:00:00.123456789+05:30"]))),
            ])
        case .hold:
            var m: [(String, JV)] = []
            let target = rng.below(4)
            if target == 0 || target == 2 { m.append(("subject", subject(markers: &markers))) }
            let someID = ulid()
            if target == 1 || target == 2 { m.append(("record", .str(rng.pick(t.fuzzRecords + t.keepRecords + ["x", someID])))) }
            if rng.chance(0.7) { m.append(("reason", .str(rng.pick(["lawsuit", "", String(repeating: "w", count: 1_001)])))) }
            if rng.chance(0.7) { m.append(("reference", .str(rng.pick(["case-1", String(repeating: "c", count: 201)])))) }
            value = .obj(m)
        case .tenant:
            let fresh = "t-" + rng.hex(6)
            value = .obj([("id", .str(rng.pick([fresh, "Not A Slug", "", String(repeating: "a", count: 64), "keep-safe", "fuzz-main", "ä"])))])
        case .token:
            value = .obj([
                ("tenant", rng.chance(0.8) ? .str(rng.pick(["fuzz-main", "sac-1", "nope", "keep-safe", "Bad"])) : .null),
                ("role", .str(rng.pick(["agent", "admin", "operator", "root", ""]))),
                ("name", .str(rng.pick(["app", "", String(repeating: "n", count: 101)]))),
            ])
        }
        // Structural mutations, then byte mutations.
        let structural = rng.chance(0.35) ? rng.between(1, 3) : 0
        for _ in 0..<structural { value = mutateTree(value, markers: &markers, notes: &notes) }
        var bytes = value.bytes(spaced: rng.chance(0.15))
        if rng.chance(0.2) { bytes = mutateBytes(bytes, notes: &notes) }
        return bytes
    }

    mutating func mutateTree(_ value: JV, markers: inout [[UInt8]], notes: inout [String]) -> JV {
        let index = rng.below(value.nodeCount)
        let node = value.node(at: index)
        let choice = rng.below(14)
        notes.append("tree \(choice)")
        var new: JV
        switch choice {
        case 0:  // type swap
            new = rng.pick([.null, .bool(true), .number("1"), .str("s"), .array([]), .obj([]), .array([node]), .obj([("x", node)])])
        case 1:  // deep nesting
            let k = rng.pick([63, 64, 65, 200, 10_000])
            let open = rng.chance(0.5) ? [UInt8](repeating: UInt8(ascii: "["), count: k) : Array(String(repeating: "{\"a\":", count: k).utf8)
            let close = open.first == UInt8(ascii: "[") ? [UInt8](repeating: UInt8(ascii: "]"), count: k) : [UInt8](repeating: UInt8(ascii: "}"), count: k)
            new = .raw(open + Array("1".utf8) + (rng.chance(0.8) ? close : []))
        case 2:  // huge string
            let n = rng.pick([65_536, 300_000, t.maxBody - 200, t.maxBody + 10])
            let marker = "note-" + rng.hex(12)
            markers.append(Array(marker.utf8))
            new = .string(Array(marker.utf8) + [UInt8](repeating: UInt8(ascii: rng.chance(0.5) ? "y" : "\u{7f}"), count: n))
        case 3:  // numbers
            new = .number(rng.pick(["1e999", "-1e999", "-0", "123456789012345678901234567890", "-9223372036854775809", "0.1e-999",
                                    "1E+2", "01", "-", "1.", ".5", "+1", "0x10", "NaN", "Infinity", "1e", "--1", "1.0e+", "٣"]))
        case 4:  // string contents
            new = .string(rng.pick([
                Array("\\ud800".utf8), Array("\\udc00".utf8), Array("\\ud800\\u0041".utf8), Array("\\ud800x".utf8),
                Array("\\x".utf8), Array("\\u12".utf8), Array("\\u12G4".utf8), [1], [0], [0xC0, 0x80], [0xED, 0xA0, 0x80], [0xFF],
                [0xE2, 0x82], [0xF4, 0x90, 0x80, 0x80], [0xF8, 0x88, 0x80, 0x80, 0x80], Array("\u{10FFFF}".utf8), Array("\u{FEFF}".utf8),
                Array("a\\".utf8), Array("\\\\\\".utf8), [0x0A], Array("\\uD834\\uDD1E".utf8),
            ]))
        case 5:  // empty containers
            new = rng.chance(0.5) ? .array([]) : .object([])
        case 6, 7, 8, 9:  // object member mutations
            guard case .object(var members) = node else {
                new = .null
                break
            }
            switch choice {
            case 6:
                if let m = members.randomElement(using: &rng) { members.insert(m, at: rng.below(members.count + 1)) }
            case 7:
                if !members.isEmpty { members.remove(at: rng.below(members.count)) }
            case 8:
                let marker = "cust-" + rng.hex(10)
                markers.append(Array(marker.utf8))
                if !members.isEmpty && rng.chance(0.5) {
                    let i = rng.below(members.count)
                    members[i].0 = Array(marker.utf8)
                    if rng.chance(0.5) { members.append(members[i]) }  // and a duplicate of it
                } else {
                    members.append((Array(marker.utf8), .number("1")))
                }
            default:
                if !members.isEmpty {
                    let i = rng.below(members.count)
                    let key = String(decoding: members[i].0, as: UTF8.self)
                    members[i].0 = rng.pick([
                        Array(key.capitalized.utf8),
                        key.utf8.count > 1 ? Array(key.utf8.dropLast()) + Array("\\u00".utf8) + fuzzHexByte(key.utf8.last!) : Array(key.utf8),
                        Array(key.utf8) + [0],
                        Array(key.utf8) + Array(" ".utf8),
                        Array((key + "\u{0301}").utf8),
                    ])
                }
            }
            new = .object(members)
        case 10:  // array growth
            guard case .array(let a) = node, !a.isEmpty else {
                new = .array([node, node])
                break
            }
            new = .array(Array(repeating: a[0], count: rng.pick([2, 100, 1_001])))
        case 11:
            new = .null
        case 12:
            new = .raw(Array(rng.pick(["tru", "nul", "True", "undefined", "'single'", "[1,]", "{\"a\":1,}", "[,1]", "{,}", "{\"a\" 1}", "//c", "/*c*/1"]).utf8))
        default:
            new = .str(String(repeating: "\u{1F600}", count: rng.pick([1, 1_000])))
        }
        return value.replacing(at: index, with: new)
    }

    mutating func mutateBytes(_ input: [UInt8], notes: inout [String]) -> [UInt8] {
        var b = input
        let choice = rng.below(10)
        notes.append("bytes \(choice)")
        switch choice {
        case 0: b = Array(b.prefix(rng.below(b.count + 1)))
        case 1: b += Array(rng.pick(["}", "x", "\u{0}", "{}", " {\"a\":1}", "\n\n", ",", "]"]).utf8)
        case 2: b.insert(0, at: rng.below(b.count + 1))
        case 3:
            for _ in 0..<rng.between(1, 4) where !b.isEmpty {
                let i = rng.below(b.count)
                b[i] ^= UInt8(1) << UInt8(rng.below(8))
            }
        case 4:
            if b.count > 2 {
                let a = rng.below(b.count), c = rng.below(b.count)
                let (lo, hi) = (min(a, c), max(a, c))
                b.insert(contentsOf: b[lo..<hi], at: rng.below(b.count + 1))
            }
        case 5: b = [0xEF, 0xBB, 0xBF] + b
        case 6: if !b.isEmpty { b[rng.below(b.count)] = UInt8(truncatingIfNeeded: rng.next()) }
        case 7: b = [UInt8](repeating: UInt8(ascii: " "), count: rng.pick([1, 1_000])) + b + [UInt8](repeating: 0x0A, count: 3)
        case 8: if b.count > 4 { b.removeSubrange(rng.below(b.count / 2)..<rng.between(b.count / 2, b.count)) }
        default: b = b.map { $0 == UInt8(ascii: "\"") && rng.chance(0.1) ? UInt8(ascii: "'") : $0 }
        }
        return b
    }

    // MARK: Checks

    func check(_ ex: Exchange, _ out: RawOutcome) -> [String] {
        var violations: [String] = []
        if let failure = out.connectFailure { return ["cannot connect: \(failure)"] }
        if ex.abandonAfter != nil { return [] }
        if out.timedOut { violations.append("no answer and no close within \(Int(RawExchange.hardTimeout)) s") }
        if let malformed = out.malformed { violations.append("malformed response stream: \(malformed) (\(out.ending))") }
        for (i, r) in out.responses.enumerated() {
            let request = ex.requests[min(i, ex.requests.count - 1)]
            let where_ = "response \(i) (\(r.status))"
            if r.version != "HTTP/1.1" && r.version != "HTTP/1.0" { violations.append("\(where_): version \(r.version)") }
            if r.status == 500 { violations.append("\(where_): 500") }
            if r.status > 500 && r.status != 503 { violations.append("\(where_): \(r.status)") }
            if r.status >= 400, !r.bodiless {
                if r.body.isEmpty {
                    if !(r.status == 400 && r.header("connection")?.lowercased() == "close") {
                        violations.append("\(where_): error without a problem body")
                    }
                } else if let problem = problemViolation(r) {
                    violations.append("\(where_): \(problem)")
                }
            }
            if (200..<300).contains(r.status), !r.bodiless, r.header("content-type") == "application/json" {
                if (try? JSONSerialization.jsonObject(with: Data(r.body), options: [.fragmentsAllowed])) == nil,
                   !fuzzIsGrammaticalWithHugeNumber(r.body) {
                    violations.append("\(where_): a 2xx JSON body that does not parse")
                }
            }
            for s in t.secrets where fuzzContains(r.raw, s) || fuzzContains(r.raw, Array(s.prefix(20))) {
                violations.append("\(where_): echoes a bearer token")
            }
            for s in ex.requests.flatMap(\.sentSecrets) where fuzzContains(r.raw, s) {
                violations.append("\(where_): echoes the Authorization value it was sent")
            }
            for m in t.keepMarkers where fuzzContains(r.raw, m) {
                violations.append("\(where_): carries the protected tenant's subject or payload")
            }
            // The markers of the request this answers (a pipelined neighbour may name a subject
            // that an existing record, read here, legitimately carries).
            if !(request.echoAllowed && (200..<300).contains(r.status)) {
                for m in request.markers where fuzzContains(r.raw, m) {
                    violations.append("\(where_): echoes subject or payload bytes of the request (\(String(decoding: m.prefix(24), as: UTF8.self)))")
                }
            }
        }
        return violations
    }

    func problemViolation(_ r: RawResponse) -> String? {
        guard r.header("content-type") == "application/problem+json" else {
            return "error with content-type \(r.header("content-type") ?? "none")"
        }
        guard let object = (try? JSONSerialization.jsonObject(with: Data(r.body))) as? [String: Any] else {
            return "problem body is not a JSON object"
        }
        guard object["type"] is String, object["title"] is String, object["detail"] is String,
              (object["status"] as? Int) == r.status
        else { return "problem body lacks type/title/status/detail" }
        return nil
    }
}

func fuzzHexByte(_ b: UInt8) -> [UInt8] {
    let digits = Array("0123456789ABCDEF".utf8)
    return [digits[Int(b >> 4)], digits[Int(b & 15)]]
}

func fuzzContains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    fuzzSearch(haystack, needle, from: 0) != nil
}

/// The offset of the first `needle` in `haystack` at or after `from` (memchr, then memcmp).
func fuzzSearch(_ haystack: [UInt8], _ needle: [UInt8], from: Int) -> Int? {
    guard !needle.isEmpty, from >= 0, haystack.count - from >= needle.count else { return nil }
    return haystack.withUnsafeBytes { h -> Int? in
        needle.withUnsafeBytes { n -> Int? in
            let base = h.baseAddress!
            var i = from
            let last = h.count - n.count
            while i <= last {
                guard let hit = memchr(base + i, Int32(n[0]), last - i + 1) else { return nil }
                let at = base.distance(to: UnsafeRawPointer(hit))
                if memcmp(base + at, n.baseAddress!, n.count) == 0 { return at }
                i = at + 1
            }
            return nil
        }
    }
}

// MARK: - Raw socket exchange

struct RawResponse {
    var version: String
    var status: Int
    var headers: [(String, String)]
    var body: [UInt8]
    var raw: [UInt8]
    /// Answer to HEAD, or to CONNECT (NIO treats any answer to CONNECT as opening a tunnel:
    /// it sends neither framing nor body, and the connection stays open).
    var bodiless: Bool
    var method: String

    func header(_ name: String) -> String? { headers.first { $0.0 == name }?.1 }
}

struct RawOutcome {
    var responses: [RawResponse] = []
    var received: [UInt8] = []
    var connectFailure: String?
    var timedOut = false
    var malformed: String?
    var closedByServer = false
    var idleHalfClose = false
    /// How the stream ended: "eof", or the errno of the failed recv.
    var ending = ""
}

enum RawExchange {
    static let hardTimeout = 10.0
    static let idleTimeout = 1.0

    static func run(_ ex: Exchange, socket path: String) -> RawOutcome {
        var outcome = RawOutcome()
        guard let fd = connectUnix(path, failure: &outcome.connectFailure) else { return outcome }
        defer { close(fd) }
        let connectedInode = inode(fd)
        let connectedAt = Date()

        var bytes = ex.requests.flatMap(\.bytes)
        if let cut = ex.abandonAfter { bytes = Array(bytes.prefix(cut)) }
        // The slow writer: one byte at a time, blocking (a byte always fits).
        var sent = 0
        while sent < min(ex.slowPrefix, bytes.count) {
            guard sendSome(fd, bytes, from: sent, limit: 1) > 0 else { break }
            sent += 1
            usleep(ex.pauseMicros)
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        if ex.abandonAfter != nil {
            // Whatever fits at once, then gone.
            while sent < bytes.count {
                let n = sendSome(fd, bytes, from: sent)
                if n <= 0 { break }
                sent += n
            }
            return outcome
        }

        let mustHalfClose = ex.halfClose || ex.requests.contains(where: { !$0.complete })
        var sending = sent < bytes.count
        var halfClosed = false
        if !sending && mustHalfClose {
            shutdown(fd, Int32(SHUT_WR))
            halfClosed = true
        }
        let expected = ex.requests.count
        let bodilessMethod = ex.requests.count == 1 && ["HEAD", "CONNECT"].contains(ex.requests[0].method) ? ex.requests[0].method : nil
        let deadline = Date().addingTimeInterval(hardTimeout)
        var lastProgress = Date()
        var parsedUpTo = 0
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            // Parse what is complete.
            while parsedUpTo < outcome.received.count {
                switch parseResponse(outcome.received, from: parsedUpTo, bodiless: outcome.responses.isEmpty ? bodilessMethod : nil, atEOF: false) {
                case .response(let r, let end):
                    if !(100..<200).contains(r.status) { outcome.responses.append(r) }
                    parsedUpTo = end
                    // After an answer to CONNECT the connection is a tunnel: nothing more comes.
                    if r.method == "CONNECT" && !(100..<200).contains(r.status) { return outcome }
                    continue
                case .needMore: break
                case .invalid(let why):
                    outcome.malformed = why
                    return outcome
                }
                break
            }
            if !sending && !halfClosed && outcome.responses.count >= expected { return outcome }
            let remaining = deadline.timeIntervalSinceNow
            if remaining <= 0 {
                outcome.timedOut = true
                return outcome
            }
            // Idle after the last byte went out: the server waits for more, so say there is none.
            if !sending && !halfClosed && Date().timeIntervalSince(lastProgress) >= idleTimeout {
                shutdown(fd, Int32(SHUT_WR))
                halfClosed = true
                outcome.idleHalfClose = true
            }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN) | (sending ? Int16(POLLOUT) : 0), revents: 0)
            let ready = poll(&pfd, 1, Int32(max(1, min(remaining, 0.1) * 1000)))
            if ready < 0 {
                if errno == EINTR { continue }
                outcome.malformed = "poll failed: errno \(errno)"
                return outcome
            }
            if ready == 0 { continue }
            if pfd.revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
                let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if n > 0 {
                    outcome.received += buffer[0..<n]
                    lastProgress = Date()
                    continue
                }
                if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
                // EOF (or a reset: on a Unix socket, the server closing with our bytes unread).
                outcome.closedByServer = true
                outcome.ending = (n == 0 ? "eof" : "errno \(errno)") + (outcome.idleHalfClose ? " after our idle half-close" : "")
                    + ", \(outcome.received.count) bytes received, " + (inode(fd) == connectedInode ? "same socket" : "descriptor now \(inode(fd))")
                    + ", \(Int(-connectedAt.timeIntervalSinceNow * 1000)) ms after connecting"
                    + ", a probe byte " + (send(fd, [UInt8(ascii: "\r")], 1, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) == 1 ? "still goes in" : "fails: errno \(errno)")
                if parsedUpTo < outcome.received.count {
                    switch parseResponse(outcome.received, from: parsedUpTo, bodiless: outcome.responses.isEmpty ? bodilessMethod : nil, atEOF: true) {
                    case .response(let r, let end):
                        outcome.responses.append(r)
                        if end < outcome.received.count { outcome.malformed = "\(outcome.received.count - end) bytes after the last response" }
                    case .needMore: outcome.malformed = "connection closed inside a response"
                    case .invalid(let why): outcome.malformed = why
                    }
                }
                return outcome
            }
            if sending && pfd.revents & Int16(POLLOUT) != 0 {
                let n = sendSome(fd, bytes, from: sent)
                if n > 0 {
                    sent += n
                    lastProgress = Date()
                } else if n < 0 && errno != EAGAIN && errno != EINTR {
                    sending = false  // the server closed its side: read what it said
                    continue
                }
                if sent >= bytes.count {
                    sending = false
                    if mustHalfClose {
                        shutdown(fd, Int32(SHUT_WR))
                        halfClosed = true
                    }
                }
            }
        }
    }

    /// The inode behind a descriptor (to tell whether it still is our socket), or -errno.
    static func inode(_ fd: Int32) -> Int {
        var st = stat()
        return fstat(fd, &st) == 0 ? Int(st.st_ino) : -Int(errno)
    }

    static func connectUnix(_ path: String, failure: inout String?) -> Int32? {
        for attempt in 0..<200 {
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else {
                failure = "socket(): errno \(errno)"
                return nil
            }
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &addr.sun_path) { p in p.copyBytes(from: Array(path.utf8).prefix(p.count - 1)) }
            let rc = withUnsafePointer(to: &addr) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            if rc == 0 { return fd }
            let e = errno
            close(fd)
            // A full listen backlog answers EAGAIN on a Unix socket: wait and retry (10 s at most).
            guard e == EAGAIN || e == EINTR, attempt < 199 else {
                failure = "connect(): errno \(e)"
                return nil
            }
            usleep(50_000)
        }
        return nil
    }

    /// One send of what is left from `offset` (at most `limit` bytes): bytes sent, or -1 (errno set).
    static func sendSome(_ fd: Int32, _ bytes: [UInt8], from offset: Int, limit: Int = 65_536) -> Int {
        guard offset < bytes.count else { return 0 }
        return bytes.withUnsafeBytes { b in send(fd, b.baseAddress! + offset, min(b.count - offset, limit), Int32(MSG_NOSIGNAL)) }
    }

    enum Parse {
        case response(RawResponse, end: Int)
        case needMore
        case invalid(String)
    }

    /// One response starting at `start`: status line, header fields, a body framed by
    /// Content-Length or chunked (or, with `Connection: close`, by the end of the stream).
    static func parseResponse(_ b: [UInt8], from start: Int, bodiless: String?, atEOF: Bool) -> Parse {
        guard let headEnd = find(b, [13, 10, 13, 10], from: start) else {
            if b.count - start > 65_536 { return .invalid("header block over 64 KiB") }
            return .needMore
        }
        let lines = split(Array(b[start..<headEnd]))
        guard let statusLine = lines.first else { return .invalid("empty status line") }
        let parts = statusLine.split(separator: UInt8(ascii: " "), maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count >= 2, parts[1].count == 3, let status = Int(String(decoding: parts[1], as: UTF8.self)),
              (100...599).contains(status)
        else { return .invalid("bad status line \(String(decoding: statusLine.prefix(60), as: UTF8.self))") }
        let version = String(decoding: parts[0], as: UTF8.self)
        var headers: [(String, String)] = []
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > 0 else {
                return .invalid("header line without a name")
            }
            let name = line[..<colon]
            guard name.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: ":") }) else { return .invalid("bad header name") }
            let value = line[(colon + 1)...]
            guard !value.contains(where: { ($0 < 0x20 && $0 != 0x09) || $0 == 0x7F }) else { return .invalid("control byte in a header value") }
            headers.append((String(decoding: name, as: UTF8.self).lowercased(),
                            String(decoding: value, as: UTF8.self).trimmingCharacters(in: .whitespaces)))
        }
        let bodyStart = headEnd + 4
        func make(_ body: [UInt8], end: Int) -> Parse {
            .response(RawResponse(version: version, status: status, headers: headers, body: body, raw: Array(b[start..<end]),
                                  bodiless: bodiless != nil, method: bodiless ?? "-"), end: end)
        }
        if bodiless != nil || (100..<200).contains(status) || status == 204 || status == 304 { return make([], end: bodyStart) }
        let lengths = headers.filter { $0.0 == "content-length" }.map(\.1)
        let chunked = headers.contains { $0.0 == "transfer-encoding" && $0.1.lowercased().contains("chunked") }
        if chunked {
            if !lengths.isEmpty { return .invalid("both Content-Length and chunked") }
            var i = bodyStart
            var body: [UInt8] = []
            while true {
                guard let lineEnd = find(b, [13, 10], from: i) else { return atEOF ? .invalid("truncated chunk size") : .needMore }
                let sizeText = String(decoding: b[i..<lineEnd], as: UTF8.self).split(separator: ";").first.map(String.init) ?? ""
                guard let size = Int(sizeText.trimmingCharacters(in: .whitespaces), radix: 16), size >= 0 else { return .invalid("bad chunk size") }
                i = lineEnd + 2
                if size == 0 {
                    // Trailer fields, then the empty line.
                    while true {
                        guard let end = find(b, [13, 10], from: i) else { return atEOF ? .invalid("truncated trailer") : .needMore }
                        if end == i { return make(body, end: end + 2) }
                        i = end + 2
                    }
                }
                guard b.count >= i + size + 2 else { return atEOF ? .invalid("truncated chunk") : .needMore }
                body += b[i..<(i + size)]
                guard b[i + size] == 13, b[i + size + 1] == 10 else { return .invalid("chunk without CRLF") }
                i += size + 2
            }
        }
        if let first = lengths.first {
            guard lengths.allSatisfy({ $0 == first }), let n = Int(first), n >= 0 else { return .invalid("bad Content-Length \(lengths)") }
            guard b.count >= bodyStart + n else { return atEOF ? .invalid("body shorter than Content-Length") : .needMore }
            return make(Array(b[bodyStart..<(bodyStart + n)]), end: bodyStart + n)
        }
        guard headers.contains(where: { $0.0 == "connection" && $0.1.lowercased() == "close" }) else {
            return .invalid("a \(status) response without Content-Length or chunked framing")
        }
        return atEOF ? make(Array(b[bodyStart...]), end: b.count) : .needMore
    }

    static func find(_ b: [UInt8], _ needle: [UInt8], from: Int) -> Int? { fuzzSearch(b, needle, from: from) }

    static func split(_ head: [UInt8]) -> [ArraySlice<UInt8>] {
        var lines: [ArraySlice<UInt8>] = []
        var i = 0
        var lineStart = 0
        while i + 1 < head.count {
            if head[i] == 13 && head[i + 1] == 10 {
                lines.append(head[lineStart..<i])
                i += 2
                lineStart = i
            } else {
                i += 1
            }
        }
        lines.append(head[lineStart..<head.count])
        return lines
    }
}

/// Record data is stored and returned verbatim, and JSON's grammar puts no bound on numbers:
/// `1e999` written by the fuzzer comes back in listings, and Foundation's parser refuses it
/// (it does not fit a Double). Such a body still has to be valid JSON by the grammar.
func fuzzIsGrammaticalWithHugeNumber(_ body: [UInt8]) -> Bool {
    let grammatical = (try? body.withUnsafeBytes { raw throws(JSONError) in try JSONScanner.validate(raw, maxDepth: 256) }) != nil
    return grammatical && String(decoding: body, as: UTF8.self).contains(/[0-9][eE][+]?[0-9]{3,}/)
}
