import Foundation
import Sodium
import FuzzSupport
import Testing
import VaultAPI
import VaultCore
#if canImport(Glibc)
import Glibc
#endif

// Hostile-input fuzzing of the JSON scanner, its typed readers, the writer and the RFC 3339
// parser (issue 5). Three kinds of input: generated documents (known values, written both by
// `JSONWriter` and by a writer of our own with random whitespace and escapes), mutations of
// them (bit flips, truncations, extensions, splices, inserted brackets, quotes, backslashes,
// invalid UTF-8), and bounded random bytes.
//
// Properties: nothing traps or hangs; every error offset lies inside the input; the entry
// points agree (an object `validate` accepts is one `objectMembers` accepts unless a
// top-level key repeats, likewise for arrays); member ranges are in bounds, trimmed and
// re-validate to their kind; the two string readers agree byte for byte; and where a
// document is valid, what is read is what was written (strings, keys, integers, booleans),
// through the scanner and back through the writer.
//
// SHREDVAULT_FUZZ_SEED replays a run; SHREDVAULT_FUZZ_ITERATIONS sets the inputs per kind.

@Suite struct JSONFuzzTests {
    static let defaultIterations = 5_000

    @Test(.timeLimit(.minutes(3)))
    func scannerNeverTrapsAndRoundTrips() {
        let seed = FuzzEnvironment.seed()
        let iterations = FuzzEnvironment.iterations(default: Self.defaultIterations)
        say("json fuzz: seed \(seed), \(iterations) inputs per kind (replay: SHREDVAULT_FUZZ_SEED=\(seed) SHREDVAULT_FUZZ_ITERATIONS=\(iterations))")
        var fuzz = JSONFuzzer(seed: seed)
        let started = ContinuousClock.now
        fuzz.generated(iterations)
        fuzz.mutated(iterations)
        fuzz.noise(iterations)
        fuzz.writerBytes(iterations)
        fuzz.times(iterations)
        for failure in fuzz.failures.prefix(20) { Issue.record(Comment(rawValue: failure)) }
        say("json fuzz: accepted " + fuzz.accepted.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        say("json fuzz: \(fuzz.passed + fuzz.failed) inputs in \(ContinuousClock.now - started), slowest \(fuzz.slowest)")
        say("json fuzz: \(fuzz.passed) passed, \(fuzz.failed) failed")
        #expect(fuzz.failed == 0, "replay with SHREDVAULT_FUZZ_SEED=\(seed) SHREDVAULT_FUZZ_ITERATIONS=\(iterations)")
    }
}

typealias JSONFuzzRandom = SplitMix64

extension SplitMix64 {

    /// A Unicode scalar from every plane that matters: ASCII (controls included), Latin,
    /// BMP (U+2028 and U+FEFF too), astral; never a surrogate.
    mutating func scalar() -> Unicode.Scalar {
        let v: UInt32 = switch below(8) {
        case 0: UInt32(below(0x20))
        case 1, 2: UInt32(between(0x20, 0x7E))
        case 3: UInt32(between(0x80, 0x7FF))
        case 4: pick([0x2028, 0x2029, 0xFEFF, 0xFFFD, 0xFFFF, 0x22, 0x5C, 0x2F, 0x7F])
        case 5: UInt32(between(0x800, 0xD7FF))
        case 6: UInt32(between(0xE000, 0xFFFF))
        default: UInt32(between(0x10000, 0x10FFFF))
        }
        return Unicode.Scalar(v) ?? "?"
    }

    mutating func string() -> String {
        var s = String.UnicodeScalarView()
        for _ in 0..<pick([0, 1, 3, 8, 20, 200]) { s.append(scalar()) }
        return String(s)
    }
}

/// A generated JSON value whose content is known.
indirect enum Doc {
    case null
    case bool(Bool)
    case int(Int64)
    /// A number that is not an Int64 reading (fraction, exponent, out of range), as text.
    case number(String)
    case string(String)
    case array([Doc])
    case object([(String, Doc)])

    var kind: JSONKind {
        switch self {
        case .null: .null
        case .bool: .bool
        case .int, .number: .number
        case .string: .string
        case .array: .array
        case .object: .object
        }
    }

    /// Writes with `JSONWriter`.
    func write(_ w: inout JSONWriter) {
        switch self {
        case .null: w.null()
        case .bool(let b): w.bool(b)
        case .int(let v): w.int(v)
        case .number(let text): Array(text.utf8).withUnsafeBytes { w.raw($0) }
        case .string(let s): w.string(s)
        case .array(let a):
            w.beginArray()
            for v in a { v.write(&w) }
            w.endArray()
        case .object(let o):
            w.beginObject()
            for (k, v) in o {
                w.key(k)
                v.write(&w)
            }
            w.endObject()
        }
    }

    /// Writes with random whitespace and random (valid) escapes.
    func fancy(_ out: inout [UInt8], _ rng: inout JSONFuzzRandom) {
        func ws(_ out: inout [UInt8], _ rng: inout JSONFuzzRandom) {
            if rng.chance(0.3) { out += (0..<rng.between(1, 3)).map { _ in rng.pick([0x20, 0x09, 0x0A, 0x0D]) } }
        }
        ws(&out, &rng)
        switch self {
        case .null: out += Array("null".utf8)
        case .bool(let b): out += Array((b ? "true" : "false").utf8)
        case .int(let v): out += Array(String(v).utf8)
        case .number(let text): out += Array(text.utf8)
        case .string(let s): Doc.fancyString(s, &out, &rng)
        case .array(let a):
            out.append(UInt8(ascii: "["))
            for (i, v) in a.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                v.fancy(&out, &rng)
            }
            ws(&out, &rng)
            out.append(UInt8(ascii: "]"))
        case .object(let o):
            out.append(UInt8(ascii: "{"))
            for (i, (k, v)) in o.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                ws(&out, &rng)
                Doc.fancyString(k, &out, &rng)
                ws(&out, &rng)
                out.append(UInt8(ascii: ":"))
                v.fancy(&out, &rng)
            }
            ws(&out, &rng)
            out.append(UInt8(ascii: "}"))
        }
        ws(&out, &rng)
    }

    static func fancyString(_ s: String, _ out: inout [UInt8], _ rng: inout JSONFuzzRandom) {
        let hex = Array("0123456789abcdefABCDEF".utf8)
        func u(_ unit: UInt16, _ out: inout [UInt8], _ rng: inout JSONFuzzRandom) {
            out += Array("\\u".utf8)
            for shift in stride(from: 12, through: 0, by: -4) {
                let nibble = Int((unit >> UInt16(shift)) & 0xF)
                out.append(nibble >= 10 && rng.chance(0.5) ? hex[nibble + 6] : hex[nibble])
            }
        }
        out.append(UInt8(ascii: "\""))
        for scalar in s.unicodeScalars {
            let v = scalar.value
            if v < 0x20 || v == 0x22 || v == 0x5C || rng.chance(0.1) {
                switch v {
                case 0x22: out += Array("\\\"".utf8)
                case 0x5C: out += Array("\\\\".utf8)
                case 0x2F where rng.chance(0.5): out += Array("\\/".utf8)
                case 0x08 where rng.chance(0.5): out += Array("\\b".utf8)
                case 0x0A where rng.chance(0.5): out += Array("\\n".utf8)
                default:
                    if v >= 0x10000 {
                        let w = v - 0x10000
                        u(UInt16(0xD800 + (w >> 10)), &out, &rng)
                        u(UInt16(0xDC00 + (w & 0x3FF)), &out, &rng)
                    } else {
                        u(UInt16(v), &out, &rng)
                    }
                }
            } else {
                out += Array(String(scalar).utf8)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}

struct JSONFuzzer {
    var rng: JSONFuzzRandom
    var passed = 0
    var failed = 0
    var failures: [String] = []
    var slowest = Duration.zero
    /// How many inputs each entry point accepted (the checks bite only on what is accepted).
    var accepted: [String: Int] = [:]
    /// Valid documents seen, to mutate and splice.
    var corpus: [[UInt8]] = []

    init(seed: UInt64) { rng = JSONFuzzRandom(seed: seed) }

    mutating func record(_ kind: String, _ input: [UInt8], _ violations: [String], took: Duration) {
        slowest = max(slowest, took)
        input.withUnsafeBytes { b in
            if (try? JSONScanner.validate(b)) != nil { accepted["\(kind): validate", default: 0] += 1 }
            if (try? JSONScanner.objectMembers(b)) != nil { accepted["\(kind): objectMembers", default: 0] += 1 }
        }
        var violations = violations
        if took > .milliseconds(500) { violations.append("took \(took)") }
        if violations.isEmpty {
            passed += 1
            return
        }
        failed += 1
        if failures.count < 50 {
            let shown = String(decoding: input.prefix(200), as: UTF8.self).debugDescription
            failures.append("\(kind): " + violations.joined(separator: "; ") + " — input (\(input.count) bytes): \(shown)")
        }
    }

    // MARK: Generated documents

    mutating func doc(depth: Int) -> Doc {
        switch rng.below(depth > 4 ? 5 : 8) {
        case 0: return .null
        case 1: return .bool(rng.chance(0.5))
        case 2: return .int(rng.pick([0, 1, -1, Int64.max, Int64.min, Int64(bitPattern: rng.next()), Int64(rng.below(1000))]))
        case 3: return .number(rng.pick(["0.5", "-0.0", "1e10", "1E-7", "-12.25e+3", "9223372036854775808", "-9223372036854775809",
                                          "123456789012345678901234567890", "1e999", "0e0", "-0"]))
        case 4: return .string(rng.string())
        case 5: return .array((0..<rng.below(5)).map { _ in doc(depth: depth + 1) })
        default:
            var keys = Set<String>()
            var members: [(String, Doc)] = []
            for _ in 0..<rng.below(6) {
                let key = rng.chance(0.5) ? rng.pick(["subject", "data", "category", "channel", "retention", "k", ""]) : rng.string()
                // Keys distinct as Swift Strings (the scanner's notion of a duplicate).
                guard keys.insert(key).inserted else { continue }
                members.append((key, doc(depth: depth + 1)))
            }
            return .object(members)
        }
    }

    mutating func generated(_ n: Int) {
        say("json fuzz: generated documents…")
        for _ in 0..<n {
            let d = doc(depth: rng.chance(0.3) ? 0 : 1)
            var bytes: [UInt8]
            if rng.chance(0.5) {
                var w = JSONWriter()
                d.write(&w)
                bytes = w.bytes
            } else {
                bytes = []
                d.fancy(&bytes, &rng)
            }
            if corpus.count < 512 { corpus.append(bytes) } else { corpus[rng.below(corpus.count)] = bytes }
            let began = ContinuousClock.now
            var v = check(bytes)
            v += expectValues(d, bytes)
            record("generated", bytes, v, took: ContinuousClock.now - began)
        }
    }

    /// What was written is what is read.
    func expectValues(_ d: Doc, _ bytes: [UInt8]) -> [String] {
        var v: [String] = []
        bytes.withUnsafeBytes { b in
            switch Result(catching: { () throws(JSONError) in try JSONScanner.validate(b) }) {
            case .success(let kind): if kind != d.kind { v.append("validate says \(kind), wrote \(d.kind)") }
            case .failure(let e): v.append("a valid document was refused: \(e)")
            }
            switch d {
            case .object(let members):
                guard let scanned = try? JSONScanner.objectMembers(b) else {
                    v.append("objectMembers refused a valid object")
                    return
                }
                guard scanned.map(\.key) == members.map(\.0) else {
                    v.append("keys differ")
                    return
                }
                for (m, (_, value)) in zip(scanned, members) {
                    let raw = UnsafeRawBufferPointer(rebasing: b[m.range])
                    if m.kind != value.kind { v.append("member \(m.key.debugDescription) kind \(m.kind), wrote \(value.kind)") }
                    v += expectScalar(value, raw)
                }
            case .array(let elements):
                guard let scanned = try? JSONScanner.arrayElements(b), scanned.count == elements.count else {
                    v.append("arrayElements refused or miscounted a valid array")
                    return
                }
                for (e, value) in zip(scanned, elements) {
                    if e.kind != value.kind { v.append("element kind \(e.kind), wrote \(value.kind)") }
                    v += expectScalar(value, UnsafeRawBufferPointer(rebasing: b[e.range]))
                }
            default:
                v += expectScalar(d, b)
            }
        }
        return v
    }

    func expectScalar(_ d: Doc, _ raw: UnsafeRawBufferPointer) -> [String] {
        var v: [String] = []
        switch d {
        case .string(let s):
            if (try? JSONRead.string(raw)) != s { v.append("string read back differently") }
            if (try? JSONRead.sensitiveString(raw))?.withUnsafeBytes({ Array($0) }) != Array(s.utf8) { v.append("sensitive string read back differently") }
        case .int(let i):
            if (try? JSONRead.int64(raw)) != i { v.append("integer \(i) read back differently") }
        case .bool(let b):
            if (try? JSONRead.bool(raw)) != b { v.append("boolean read back differently") }
        case .null:
            if !JSONRead.isNull(raw) { v.append("null not seen") }
        case .array(let elements):
            let strings = elements.compactMap { if case .string(let s) = $0 { s } else { nil } }
            if strings.count == elements.count, (try? JSONRead.stringArray(raw)) != strings { v.append("string array read back differently") }
        default:
            break
        }
        return v
    }

    // MARK: Mutations and noise

    mutating func mutate(_ valid: [UInt8]) -> [UInt8] {
        var b = valid
        let other = corpus.isEmpty ? [] : rng.pick(corpus)
        for _ in 0..<rng.between(1, 3) {
            switch rng.below(14) {
            case 0: if !b.isEmpty { b[rng.below(b.count)] ^= UInt8(1) << UInt8(rng.below(8)) }
            case 1: b = Array(b.prefix(rng.below(b.count + 1)))
            case 2: b += rng.bytes(rng.between(1, 8))
            case 3: b = Array(b.prefix(rng.below(b.count + 1))) + Array(other.suffix(rng.below(other.count + 1)))
            case 4: b.insert(contentsOf: [UInt8](repeating: rng.pick(Array("[{".utf8)), count: rng.pick([1, 63, 64, 65, 1_000, 100_000])), at: rng.below(b.count + 1))
            case 5: b.insert(rng.pick(Array("\"\\,:]}".utf8)), at: rng.below(b.count + 1))
            case 6: b.insert(contentsOf: rng.pick([[0xC0, 0x80], [0xED, 0xA0, 0x80], [0xFF], [0xE2, 0x82], [0xF4, 0x90, 0x80, 0x80], [0x00], [0xF0, 0x9F, 0x98]]), at: rng.below(b.count + 1))
            case 7: b.insert(contentsOf: Array(rng.pick(["\\ud800", "\\udc00", "\\u12", "\\uZZZZ", "\\x", "\\", "\\ud800\\u0041", "\\uD83D\\uDE00"]).utf8), at: rng.below(b.count + 1))
            case 8: if !b.isEmpty { b.remove(at: rng.below(b.count)) }
            case 9: if !b.isEmpty { b[rng.below(b.count)] = UInt8(truncatingIfNeeded: rng.next()) }
            case 10: b.insert(contentsOf: Array(rng.pick(["1e999", "-0", "01", "-", "1.", ".5", "+1", "NaN", "1e", "tru", "nul"]).utf8), at: rng.below(b.count + 1))
            case 11:
                if b.count > 2 {
                    let lo = rng.below(b.count), hi = min(b.count, lo + rng.between(1, 32))
                    b.insert(contentsOf: b[lo..<hi], at: rng.below(b.count + 1))
                }
            case 12: b = Array("{\"subject\":".utf8) + b + Array("}".utf8)
            default: b = [0xEF, 0xBB, 0xBF] + b
            }
        }
        return b
    }

    mutating func mutated(_ n: Int) {
        say("json fuzz: mutated documents…")
        for _ in 0..<n {
            let input = mutate(corpus.isEmpty ? Array("{}".utf8) : rng.pick(corpus))
            let began = ContinuousClock.now
            let v = check(input)
            record("mutated", input, v, took: ContinuousClock.now - began)
        }
    }

    mutating func noise(_ n: Int) {
        say("json fuzz: random bytes…")
        let alphabet = Array("{}[]\":,\\ 0123456789-+.eEtrufalsn\t\nu".utf8) + [0x00, 0x80, 0xC3, 0xA9, 0xFF, 0xED]
        for _ in 0..<n {
            let count = rng.pick([0, 1, 2, 5, 20, 100, 2_000])
            let input = rng.chance(0.5) ? rng.bytes(count) : (0..<count).map { _ in rng.pick(alphabet) }
            let began = ContinuousClock.now
            let v = check(input)
            record("noise", input, v, took: ContinuousClock.now - began)
        }
    }

    // MARK: The checks every input gets

    func check(_ input: [UInt8]) -> [String] {
        var v: [String] = []
        input.withUnsafeBytes { b in
            func inBounds(_ e: JSONError, _ what: String) {
                if e.offset < 0 || e.offset > b.count { v.append("\(what): error offset \(e.offset) outside 0...\(b.count)") }
            }
            let validated = Result(catching: { () throws(JSONError) in try JSONScanner.validate(b) })
            let members = Result(catching: { () throws(JSONError) in try JSONScanner.objectMembers(b) })
            let elements = Result(catching: { () throws(JSONError) in try JSONScanner.arrayElements(b) })
            _ = Result(catching: { () throws(JSONError) in try JSONScanner.validate(b, maxDepth: 0) })
            _ = Result(catching: { () throws(JSONError) in try JSONScanner.objectMembers(b, maxDepth: 1) })
            if case .failure(let e) = validated { inBounds(e, "validate") }
            if case .failure(let e) = members { inBounds(e, "objectMembers") }
            if case .failure(let e) = elements { inBounds(e, "arrayElements") }

            // The entry points agree.
            let kind = try? validated.get()
            switch members {
            case .success:
                if kind != .object { v.append("objectMembers accepted what validate calls \(String(describing: kind))") }
            case .failure(let e):
                if kind == .object && !e.reason.hasPrefix("duplicate key") { v.append("validate accepted an object objectMembers refused: \(e)") }
            }
            switch elements {
            case .success: if kind != .array { v.append("arrayElements accepted what validate calls \(String(describing: kind))") }
            case .failure(let e): if kind == .array { v.append("validate accepted an array arrayElements refused: \(e)") }
            }

            // Ranges: in bounds, trimmed, and each re-validates to its kind.
            var ranges: [(Range<Int>, JSONKind)] = []
            if case .success(let ms) = members { ranges += ms.map { ($0.range, $0.kind) } }
            if case .success(let es) = elements { ranges += es.map { ($0.range, $0.kind) } }
            for (range, k) in ranges {
                guard range.lowerBound >= 0, range.upperBound <= b.count, !range.isEmpty else {
                    v.append("range \(range) outside the input")
                    continue
                }
                let raw = UnsafeRawBufferPointer(rebasing: b[range])
                if [0x20, 0x09, 0x0A, 0x0D].contains(raw[0]) || [0x20, 0x09, 0x0A, 0x0D].contains(raw[raw.count - 1]) {
                    v.append("range \(range) not trimmed")
                }
                if (try? JSONScanner.validate(raw)) != k { v.append("range \(range) does not re-validate as \(k)") }
                v += readers(raw, at: range.lowerBound, total: b.count)
            }
            // The readers on the whole input.
            v += readers(b, at: 0, total: b.count)

            // Whitespace around a valid value changes nothing; wrapped in an array it is one element.
            if let kind {
                let padded = [0x20, 0x0A] + input + [0x09, 0x0D]
                if (padded.withUnsafeBytes { try? JSONScanner.validate($0) }) != kind { v.append("padding changed the verdict") }
                let wrapped = Array("[".utf8) + input + Array("]".utf8)
                let inner = wrapped.withUnsafeBytes { try? JSONScanner.arrayElements($0, maxDepth: 65) }
                if inner?.count != 1 || inner?.first?.kind != kind { v.append("wrapped in an array it is not one \(kind)") }
            }
        }
        return v
    }

    /// The typed readers on one value: offsets inside, the two string readers agree, integers
    /// and literals match their text, and decoded strings survive the writer and back.
    func readers(_ raw: UnsafeRawBufferPointer, at base: Int, total: Int) -> [String] {
        var v: [String] = []
        func inBounds(_ r: Result<some Any, JSONError>, _ what: String) {
            if case .failure(let e) = r, e.offset < base || e.offset > base + raw.count {
                v.append("\(what): error offset \(e.offset) outside \(base)...\(base + raw.count)")
            }
        }
        let string = Result(catching: { () throws(JSONError) in try JSONRead.string(raw, at: base) })
        let sensitive = Result(catching: { () throws(JSONError) in try JSONRead.sensitiveString(raw, at: base) })
        let int = Result(catching: { () throws(JSONError) in try JSONRead.int64(raw, at: base) })
        let bool = Result(catching: { () throws(JSONError) in try JSONRead.bool(raw, at: base) })
        let strings = Result(catching: { () throws(JSONError) in try JSONRead.stringArray(raw, at: base) })
        _ = JSONRead.isNull(raw)
        inBounds(string, "string")
        inBounds(sensitive, "sensitiveString")
        inBounds(int, "int64")
        inBounds(bool, "bool")
        inBounds(strings, "stringArray")

        switch (string, sensitive) {
        case (.success(let s), .success(let b)):
            if Array(s.utf8) != b.withUnsafeBytes({ Array($0) }) { v.append("the string readers disagree") }
            // Written and read again.
            var w = JSONWriter()
            w.string(s)
            if (w.bytes.withUnsafeBytes { try? JSONRead.string($0) }) != s { v.append("a decoded string does not survive the writer") }
        case (.failure, .failure): break
        default: v.append("one string reader accepted what the other refused")
        }
        let text = String(decoding: raw, as: UTF8.self).trimmingCharacters(in: .init(charactersIn: " \t\n\r"))
        if case .success(let i) = int, Int64(text) != i { v.append("int64 read \(i) from \(text.prefix(40).debugDescription)") }
        if case .success(let b) = bool, text != (b ? "true" : "false") { v.append("bool read \(b) from \(text.prefix(40).debugDescription)") }
        if case .success(let list) = strings, (try? JSONScanner.validate(raw)) != .array || list.count > raw.count { v.append("stringArray accepted a non-array") }
        return v
    }

    // MARK: The writer on arbitrary bytes

    mutating func writerBytes(_ n: Int) {
        say("json fuzz: writer on arbitrary bytes…")
        for _ in 0..<n {
            var input = rng.bytes(rng.pick([0, 1, 3, 16, 100]))
            if rng.chance(0.5) { input = Array(rng.string().utf8) + input.prefix(2) }
            let began = ContinuousClock.now
            var v: [String] = []
            var w = JSONWriter(capacity: 4)
            w.beginArray()
            input.withUnsafeBytes { w.string(bytes: $0) }
            w.endArray()
            let elements = w.bytes.withUnsafeBytes { try? JSONScanner.arrayElements($0) }
            if elements?.count != 1 || elements?.first?.kind != .string {
                v.append("the writer's output is not one JSON string")
            } else if let e = elements?.first {
                let back = w.bytes.withUnsafeBytes { try? JSONRead.sensitiveString(UnsafeRawBufferPointer(rebasing: $0[e.range])) }
                let decoded = back?.withUnsafeBytes { Array($0) }
                if let decoded {
                    if String(validating: decoded, as: UTF8.self) == nil { v.append("read back invalid UTF-8") }
                    if String(validating: input, as: UTF8.self) != nil && decoded != input { v.append("valid UTF-8 did not round-trip") }
                } else {
                    v.append("cannot read back what the writer wrote")
                }
            }
            w.wipe()
            if !w.bytes.isEmpty { v.append("wipe left bytes") }
            record("writer", input, v, took: ContinuousClock.now - began)
        }
    }

    // MARK: RFC 3339

    mutating func times(_ n: Int) {
        say("json fuzz: RFC 3339 times…")
        let valid = ["2026-11-29T17:55:07.123Z", "1970-01-01T00:00:00Z", "9999-12-31T23:59:59.999Z", "2000-02-29T12:00:00+05:30",
                     "2024-06-30T23:59:60Z", "0001-01-01T00:00:00-23:59", "2099-01-01t00:00:00.123456789z"].map { Array($0.utf8) }
        for _ in 0..<n {
            let base = rng.pick(valid)
            var input = base
            switch rng.below(4) {
            case 0: input = rng.bytes(rng.below(40))
            case 1:
                if !input.isEmpty { input[rng.below(input.count)] = rng.pick(Array("0123456789-:+TZtz. x".utf8) + [0xC3, 0xFF]) }
            case 2: input = Array(input.prefix(rng.below(input.count + 1))) + Array(rng.pick(valid).suffix(rng.below(30)))
            default: input.insert(rng.pick(Array("0123456789-:.".utf8)), at: rng.below(input.count + 1))
            }
            let began = ContinuousClock.now
            var v: [String] = []
            let text = String(decoding: input, as: UTF8.self)
            if let ms = RFC3339.parse(text), ms >= 0, ms <= 253_402_300_799_999 {
                let formatted = RFC3339.format(milliseconds: ms)
                if RFC3339.parse(formatted) != ms { v.append("\(ms) does not round-trip through \(formatted)") }
            }
            record("rfc3339", input, v, took: ContinuousClock.now - began)
        }
    }
}
