import Foundation
import FuzzSupport
import Testing
import LMDB
import Sodium
@testable import VaultCore
#if canImport(Glibc)
import Glibc
#endif

// Hostile-input fuzzing of every decoder of stored bytes (issue 5): keystore rows, wrapped
// keys, sealed records and hold texts (after authentication too: the plaintext parsers),
// audit entries and the chain verifier, the held-target index, the master key file, and
// the text forms read back from storage or requests (record ids, tenant slugs, durations,
// tokens). Inputs are bounded random bytes and mutations of valid encodings (bit flips,
// byte sets, truncations, extensions, splices, insertions, deletions, maxed length fields).
//
// Property: a decoder returns a value or throws a `VaultError` (a trap — index out of
// range, overflow, force unwrap — crashes this process: the seed printed first replays
// it); no input takes longer than 0.5 s; what decodes re-encodes to something that decodes
// to the same value; a mutated sealed blob never opens; a mutated audit chain never verifies.
//
// A bounded random test, not coverage-guided: Swift's libFuzzer mode (`-sanitize=fuzzer`)
// needs a toolchain build of its own and a `LLVMFuzzerTestOneInput` entry point.
//
// SHREDVAULT_FUZZ_SEED replays a run; SHREDVAULT_FUZZ_ITERATIONS sets the inputs per decoder.

@Suite struct DecoderFuzzTests {
    static let defaultIterations = 10_000

    @Test(.timeLimit(.minutes(3)))
    func storedFormatsNeverTrap() throws {
        let seed = FuzzEnvironment.seed()
        let iterations = FuzzEnvironment.iterations(default: Self.defaultIterations)
        say("decoder fuzz: seed \(seed), \(iterations) inputs per decoder (replay: SHREDVAULT_FUZZ_SEED=\(seed) SHREDVAULT_FUZZ_ITERATIONS=\(iterations))")
        var fuzz = DecoderFuzzer(seed: seed, iterations: iterations)
        let started = ContinuousClock.now
        try fuzz.rows()
        try fuzz.sealed()
        try fuzz.inTransactions()
        try fuzz.masterKeyFiles()
        try fuzz.texts()
        for failure in fuzz.failures.prefix(20) { Issue.record(Comment(rawValue: failure)) }
        say("decoder fuzz: \(fuzz.passed + fuzz.failed) inputs over \(fuzz.targets) decoders in \(ContinuousClock.now - started)")
        say("decoder fuzz: \(fuzz.passed) passed, \(fuzz.failed) failed")
        #expect(fuzz.failed == 0, "replay with SHREDVAULT_FUZZ_SEED=\(seed) SHREDVAULT_FUZZ_ITERATIONS=\(iterations)")
    }
}

typealias FuzzRandom = SplitMix64

extension SplitMix64 {

    /// Integers that find edges: 0, 1, maxima, sign boundaries, or anything.
    mutating func edgy64() -> UInt64 {
        pick([0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFF_FFFF, 0xFFFF_FFFF, UInt64(Int64.max), UInt64(bitPattern: Int64.min), .max, next(), next()])
    }

    /// Text for stored strings: ASCII, multi-byte, empty, long.
    mutating func text() -> String {
        pick(["", "acme", "tok_01J0000000000000000000000A", "Zoë ☃ 😀", "ticket-42", String(repeating: "x", count: between(0, 300)),
              "a\u{0}b", "\u{10FFFF}", "subject.erase", "system:sweeper"])
    }

    /// A mutation of `valid`: one to three edits, sometimes a splice with another valid encoding.
    mutating func mutate(_ valid: [UInt8], other: [UInt8]) -> [UInt8] {
        var b = valid
        for _ in 0..<between(1, 3) {
            switch below(11) {
            case 0:
                if !b.isEmpty { b[below(b.count)] ^= UInt8(1) << UInt8(below(8)) }
            case 1:
                if !b.isEmpty { b[below(b.count)] = pick([0, 1, 2, 3, 0x7F, 0x80, 0xFE, 0xFF, UInt8(truncatingIfNeeded: next())]) }
            case 2: b = Array(b.prefix(below(b.count + 1)))
            case 3: b += bytes(between(1, 40))
            case 4: b = Array(b.prefix(below(b.count + 1))) + Array(other.suffix(below(other.count + 1)))
            case 5: b.insert(contentsOf: bytes(between(1, 8)), at: below(b.count + 1))
            case 6:
                if b.count > 1 {
                    let lo = below(b.count)
                    b.removeSubrange(lo..<min(b.count, lo + between(1, 16)))
                }
            case 7:
                // A length prefix (u16) at its maximum, or one more than what follows.
                if b.count > 2 {
                    let i = below(b.count - 1)
                    let v = pick([0xFFFF, b.count - i - 1, b.count - i - 3, 0])
                    b[i] = UInt8(truncatingIfNeeded: v >> 8)
                    b[i + 1] = UInt8(truncatingIfNeeded: v)
                }
            case 8:
                if !b.isEmpty { b[0] = pick([0, 1, 2, 0xFF]) }
            case 9:
                if b.count > 2 {
                    let lo = below(b.count), hi = min(b.count, lo + between(1, 24))
                    b.insert(contentsOf: b[lo..<hi], at: below(b.count + 1))
                }
            default:
                b = []
            }
        }
        return b
    }

    /// Pure noise: `n` random bytes, or mostly one value.
    mutating func noise(upTo n: Int) -> [UInt8] {
        let count = below(n + 1)
        return chance(0.8) ? bytes(count) : [UInt8](repeating: pick([0, 0xFF, 1]), count: count)
    }
}

// MARK: - The fuzzer

struct DecoderFuzzer {
    var rng: FuzzRandom
    let iterations: Int
    var passed = 0
    var failed = 0
    var targets = 0
    var failures: [String] = []

    init(seed: UInt64, iterations: Int) {
        rng = FuzzRandom(seed: seed)
        self.iterations = iterations
    }

    static let slow = Duration.milliseconds(500)

    mutating func fail(_ target: String, _ why: String, _ input: [UInt8]) {
        failed += 1
        if failures.count < 50 {
            failures.append("\(target): \(why); input (\(input.count) bytes) \(input.prefix(96).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined())")
        }
    }

    /// Runs `decode` on `count` inputs from `make`; `decode` returns nil when the property holds,
    /// or what went wrong. Thrown errors must be `VaultError`s (or Sodium's, for crypto), and
    /// no input may take longer than `slow`.
    mutating func run(_ name: String, count: Int? = nil, allowSodium: Bool = false,
                      make: (inout FuzzRandom) -> [UInt8], decode: ([UInt8]) throws -> String?) {
        say("decoder fuzz: \(name)…")
        targets += 1
        let n = count ?? iterations
        var decoded = 0, refused = 0
        var longest = Duration.zero
        for _ in 0..<n {
            let input = make(&rng)
            let began = ContinuousClock.now
            do {
                if let problem = try decode(input) {
                    fail(name, problem, input)
                    continue
                }
                decoded += 1
            } catch is VaultError {
                refused += 1
            } catch let error as SodiumError where allowSodium {
                _ = error
                refused += 1
            } catch {
                fail(name, "threw \(type(of: error)) instead of VaultError: \(error)", input)
                continue
            }
            let took = ContinuousClock.now - began
            longest = max(longest, took)
            if took > Self.slow {
                fail(name, "took \(took)", input)
                continue
            }
            passed += 1
        }
        say("decoder fuzz: \(name): \(n) inputs, \(decoded) returned, \(refused) refused, slowest \(longest)")
    }

    /// Valid encodings to mutate, and the mutation or noise drawn from them.
    static func fuzzInput(_ samples: [[UInt8]], _ rng: inout FuzzRandom) -> [UInt8] {
        let valid = rng.pick(samples)
        switch rng.below(10) {
        case 0: return rng.noise(upTo: valid.count * 2 + 8)
        case 1: return valid
        default: return rng.mutate(valid, other: rng.pick(samples))
        }
    }

    // MARK: Keystore rows

    mutating func rows() throws {
        func buffer<R>(_ b: [UInt8], _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R { try b.withUnsafeBytes(body) }

        let tenants = (0..<16).map { _ in
            TenantRow(number: UInt32(truncatingIfNeeded: rng.edgy64()), status: rng.chance(0.5) ? .active : .offboarded,
                      createdAt: Int64(bitPattern: rng.edgy64()), trkGeneration: UInt32(truncatingIfNeeded: rng.next()),
                      wrappedTRK: rng.bytes(rng.pick([0, 73, 300])), wrappedSBK: rng.bytes(rng.pick([0, 73]))).encode()
        }
        run("TenantRow", make: { r in Self.fuzzInput(tenants, &r) }) { b in
            let row = try buffer(b) { try TenantRow.decode($0) }
            return try buffer(row.encode()) { try TenantRow.decode($0) } == row ? nil : "re-encoding decodes differently"
        }

        let buckets = try (0..<16).map { i in
            var row = BucketRow(version: UInt32(truncatingIfNeeded: rng.next() >> 33), dirty: rng.chance(0.5),
                                wrappedBK: rng.bytes(rng.pick([0, 73, 100])))
            // Half of them mid-rotation: a key ring of two versions (format 2).
            if i % 2 == 1 { try row.add(.init(number: row.current.number + 1, wrappedBK: rng.bytes(rng.pick([0, 73])))) }
            return row.encode()
        }
        run("BucketRow", make: { r in Self.fuzzInput(buckets, &r) }) { b in
            let row = try buffer(b) { try BucketRow.decode($0) }
            return try buffer(row.encode()) { try BucketRow.decode($0) } == row ? nil : "re-encoding decodes differently"
        }

        let metas = (0..<16).map { _ in
            RecordMeta(category: rng.pick(DataCategory.allCases), channel: rng.pick(Channel.allCases),
                       createdAt: Int64(bitPattern: rng.edgy64()), expiresAt: Int64(bitPattern: rng.edgy64()),
                       version: UInt32(truncatingIfNeeded: rng.edgy64()), tag: rng.bytes(16), bucket: rng.edgy64(),
                       bucketVersion: UInt32(truncatingIfNeeded: rng.next()), ciphertextCount: UInt32(truncatingIfNeeded: rng.next()),
                       wrappedDEK: rng.bytes(rng.pick([0, 73]))).encode()
        }
        run("RecordMeta", make: { r in Self.fuzzInput(metas, &r) }) { b in
            let m = try buffer(b) { try RecordMeta.decode($0) }
            guard m.tag.count == 16 else { return "tag of \(m.tag.count) bytes" }
            _ = m.digest(tenant: 1, id: RecordID(bytes: [UInt8](repeating: 1, count: 16)))
            return try buffer(m.encode()) { try RecordMeta.decode($0) } == m ? nil : "re-encoding decodes differently"
        }

        let policies = (0..<16).map { _ in
            var p = RetentionPolicy(defaultSeconds: Int64(bitPattern: rng.edgy64()), categories: [:])
            for c in DataCategory.allCases where rng.chance(0.5) { p.categories[c] = Int64(bitPattern: rng.edgy64()) }
            return p.encode()
        }
        run("RetentionPolicy", make: { r in Self.fuzzInput(policies, &r) }) { b in
            let p = try buffer(b) { try RetentionPolicy.decode($0) }
            return try buffer(p.encode()) { try RetentionPolicy.decode($0) } == p ? nil : "re-encoding decodes differently"
        }

        let extensionID = RecordID.generate(milliseconds: 1_800_000_000_000)
        let extensions = (0..<16).map { _ in
            RetentionExtension(id: extensionID.description, purpose: rng.pick(RetentionExtension.Purpose.allCases), reference: rng.text(),
                               retentionSeconds: Int64(bitPattern: rng.edgy64()),
                               categories: (0..<rng.below(5)).map { _ in rng.pick(DataCategory.allCases) },
                               until: Int64(bitPattern: rng.edgy64()), createdAt: Int64(bitPattern: rng.next()),
                               endedAt: rng.chance(0.5) ? nil : Int64(bitPattern: rng.edgy64()) | 1).encode()
        }
        run("RetentionExtension", make: { r in Self.fuzzInput(extensions, &r) }) { b in
            let e = try buffer(b) { try RetentionExtension.decode($0, id: extensionID) }
            _ = e.isActive(at: 1_800_000_000_000)
            return try buffer(e.encode()) { try RetentionExtension.decode($0, id: extensionID) } == e ? nil : "re-encoding decodes differently"
        }

        let holds = (0..<16).map { _ in
            LegalHoldRow(kind: rng.chance(0.5) ? .subject : .record, target: rng.bytes(16), createdAt: Int64(bitPattern: rng.edgy64()),
                         sealedText: rng.bytes(rng.pick([0, 1, 41, 120]))).encode()
        }
        run("LegalHoldRow", make: { r in Self.fuzzInput(holds, &r) }) { b in
            let h = try buffer(b) { try LegalHoldRow.decode($0) }
            guard h.target.count == 16 else { return "target of \(h.target.count) bytes" }
            return try buffer(h.encode()) { try LegalHoldRow.decode($0) } == h ? nil : "re-encoding decodes differently"
        }

        let tokens = (0..<16).map { _ in
            TokenInfo(id: rng.text(), tenant: rng.chance(0.3) ? nil : rng.text().prefix(63).description, role: rng.pick(Role.allCases),
                      name: rng.text(), createdAt: Int64(bitPattern: rng.edgy64()),
                      revokedAt: rng.chance(0.5) ? nil : Int64(bitPattern: rng.edgy64()) | 1).encode()
        }
        run("TokenInfo", make: { r in Self.fuzzInput(tokens, &r) }) { b in
            let t = try buffer(b) { try TokenInfo.decode($0) }
            return try buffer(t.encode()) { try TokenInfo.decode($0) } == t ? nil : "re-encoding decodes differently"
        }

        let heads = (0..<8).map { _ in AuditHead(seq: rng.edgy64(), hash: rng.bytes(32)).encode() }
        run("AuditHead", make: { r in Self.fuzzInput(heads, &r) }) { b in
            let h = try buffer(b) { try AuditHead.decode($0) }
            guard h.hash.count == 32 else { return "hash of \(h.hash.count) bytes" }
            return try buffer(h.encode()) { try AuditHead.decode($0) } == h ? nil : "re-encoding decodes differently"
        }

        let entries = (0..<16).map { _ in
            AuditEntry.canonical(seq: rng.edgy64(), at: Int64(bitPattern: rng.edgy64()), tenant: rng.chance(0.3) ? nil : rng.text(),
                                 actor: rng.text(), action: rng.text(), target: rng.chance(0.5) ? nil : rng.text(), outcome: rng.text(),
                                 count: rng.edgy64(), reference: rng.chance(0.5) ? nil : rng.text()) + rng.bytes(64)
        }
        run("AuditEntry", make: { r in Self.fuzzInput(entries, &r) }) { b in
            let (e, canonical) = try buffer(b) { try AuditEntry.decode($0) }
            guard e.prev.count == 32, e.hash.count == 32, canonical.count + 64 == b.count, Array(b.prefix(canonical.count)) == canonical else {
                return "decoded parts do not tile the input"
            }
            let again = AuditEntry.canonical(seq: e.seq, at: e.at, tenant: e.tenant, actor: e.actor, action: e.action, target: e.target,
                                             outcome: e.outcome, count: e.count, reference: e.reference) + e.prev + e.hash
            return try buffer(again) { try AuditEntry.decode($0).entry } == e ? nil : "re-encoding decodes differently"
        }
    }

    // MARK: Sealed formats (authenticated, then parsed)

    mutating func sealed() throws {
        let id = RecordID.generate(milliseconds: 1_800_000_000_000)
        let kek = try Key.random()
        let ad = KeyHierarchy.dekAD(tenant: 7, id: id, version: 3, bucket: 20_000, bucketVersion: 2)

        // Wrapped keys: mutated blobs never open; secrets of any length wrap, only 32 bytes unwrap.
        var blobs: [[UInt8]] = []
        for length in [0, 1, 16, 31, 32, 32, 32, 33, 64] {
            let secret = try SecretBytes.random(count: length)
            blobs.append(try KeyHierarchy.wrap(secret, under: kek.bytes, ad: ad))
        }
        let validBlob = blobs[5]
        run("KeyHierarchy.unwrap", allowSodium: true, make: { r in Self.fuzzInput(blobs, &r) }) { b in
            let key = try KeyHierarchy.unwrap(b, under: kek.bytes, ad: ad, what: "fuzz key")
            guard key.bytes.count == AEAD.keyCount else { return "unwrapped a \(key.bytes.count)-byte key" }
            return blobs.contains(b) ? nil : "a mutated blob opened"
        }
        let cache = try KeyCache()
        run("KeyCache.withUnwrapped", allowSodium: true, make: { r in Self.fuzzInput(blobs, &r) }) { b in
            let count = try cache.withUnwrapped(b, under: kek.bytes, ad: ad, what: "fuzz data key") { $0.count }
            guard count == AEAD.keyCount else { return "lent a \(count)-byte key" }
            return b == validBlob || blobs.contains(b) ? nil : "a mutated blob opened"
        }

        // Sealed records: mutated ciphertexts never open; authenticated plaintexts of any shape parse or are refused.
        let dek = try Key.random()
        let recordAD = KeyHierarchy.recordAD(tenant: 7, id: id, version: 1, digest: rng.bytes(32))
        var records: [[UInt8]] = []
        for _ in 0..<8 {
            let subject = SensitiveBytes(copying: Array(rng.text().utf8.prefix(1_024)) + [0x41])
            let data = SensitiveBytes(copying: Array(#"{"n":\#(rng.below(1000)),"t":"\#(rng.text())"}"#.utf8))
            records.append(try SealedRecord.seal(subject: subject, data: data, dek: dek.bytes, ad: recordAD))
        }
        run("SealedRecord.open (ciphertext)", allowSodium: true, make: { r in Self.fuzzInput(records, &r) }) { b in
            _ = try b.withUnsafeBytes { try SealedRecord.open($0, dek: dek.bytes, ad: recordAD, what: "fuzz record") }
            return records.contains(b) ? nil : "a mutated sealed record opened"
        }
        let plaintexts: [[UInt8]] = (0..<8).map { _ in
            let subject = Array(rng.text().utf8.prefix(1_024))
            return [1, UInt8(subject.count >> 8), UInt8(subject.count & 0xFF)] + subject + Array(#"{"a":[1,2]}"#.utf8)
        }
        run("SealedRecord.open (plaintext)", allowSodium: true, make: { r in Self.fuzzInput(plaintexts, &r) }) { p in
            var sealed: [UInt8] = [SealedRecord.format]
            sealed += try p.withUnsafeBytes { pt in try recordAD.withUnsafeBytes { a in try AEAD.seal(pt, key: dek.bytes, associatedData: a) } }
            let expectOpen = p.count >= 3 && p[0] == SealedRecord.plaintextFormat && 3 + (Int(p[1]) << 8 | Int(p[2])) <= p.count
            do {
                let (s, d) = try sealed.withUnsafeBytes { try SealedRecord.open($0, dek: dek.bytes, ad: recordAD, what: "fuzz record") }
                guard expectOpen else { return "opened a malformed plaintext" }
                let n = Int(p[1]) << 8 | Int(p[2])
                let subject = s.withUnsafeBytes { Array($0) }, data = d.withUnsafeBytes { Array($0) }
                return subject == Array(p[3..<(3 + n)]) && data == Array(p[(3 + n)...]) ? nil : "opened to other bytes"
            } catch let e as VaultError {
                return expectOpen ? "refused a well-formed plaintext: \(e)" : nil
            }
        }

        // Legal hold texts: sealed reason and reference.
        let textKey = try Key.random()
        let holdID = RecordID.generate(milliseconds: 1_800_000_000_123)
        let holdAD = KeyHierarchy.holdTextAD(tenant: 7, hold: holdID)
        func sealText(_ text: [UInt8]) throws -> [UInt8] {
            [1] + (try text.withUnsafeBytes { p in try holdAD.withUnsafeBytes { a in try AEAD.seal(p, key: textKey.bytes, associatedData: a) } })
        }
        let texts: [[UInt8]] = (0..<8).map { _ in
            var w = ByteWriter()
            w.string(rng.text())
            w.string(rng.text())
            return w.bytes
        }
        let sealedTexts = try texts.map(sealText)
        let target = rng.bytes(16)
        run("Vault.decodeHold (sealed text)", allowSodium: true, make: { r in Self.fuzzInput(sealedTexts, &r) }) { b in
            let row = LegalHoldRow(kind: .record, target: target, createdAt: 1, sealedText: b)
            _ = try Vault.decodeHold(row, id: holdID, tenant: 7, key: textKey)
            return sealedTexts.contains(b) ? nil : "a mutated hold text opened"
        }
        run("Vault.decodeHold (plaintext)", allowSodium: true, make: { r in Self.fuzzInput(texts, &r) }) { p in
            let row = LegalHoldRow(kind: .subject, target: target, createdAt: 1, sealedText: try sealText(p))
            let hold = try Vault.decodeHold(row, id: holdID, tenant: 7, key: textKey)
            return hold.id == holdID.description ? nil : "hold id changed"
        }

        // Token rows: the fields and a MAC over them and the token's hash; a mutated row never opens.
        let rowKey = try Key.random()
        let tokenHash = rng.bytes(32)
        var rows: [[UInt8]] = []
        for _ in 0..<8 {
            let info = TokenInfo(id: "tok_" + RecordID.generate(milliseconds: 1_800_000_000_000).description, tenant: rng.chance(0.3) ? nil : "acme",
                                 role: rng.pick(Role.allCases), name: rng.text(), createdAt: Int64(bitPattern: rng.edgy64()),
                                 revokedAt: rng.chance(0.5) ? nil : Int64(bitPattern: rng.edgy64()) | 1)
            rows.append(try TokenRow.seal(info, hash: tokenHash, key: rowKey))
        }
        run("TokenRow.open", allowSodium: true, make: { r in Self.fuzzInput(rows, &r) }) { b in
            let info = try b.withUnsafeBytes { try TokenRow.open($0, hash: tokenHash, key: rowKey, indexedID: nil) }
            guard rows.contains(b) else { return "a mutated token row opened" }
            return try TokenRow.seal(info, hash: tokenHash, key: rowKey) == b ? nil : "re-sealing gives another row"
        }

        // Bearer tokens as presented: only the issued one authenticates.
        let table = TokenTable()
        table.load(key: try Key.random(), tokens: [:])
        let token = Array("svt_".utf8) + (0..<43).map { _ in Base64URL.alphabet[rng.below(64)] }
        let info = TokenInfo(id: "tok_fuzz", tenant: "acme", role: .agent, name: "fuzz", createdAt: 1, revokedAt: nil)
        guard let hash = try token.withUnsafeBytes({ try table.hash($0) }) else { throw VaultError.io("token key not loaded") }
        table.add(hash: hash, info: info)
        run("TokenTable.authenticate", make: { r in Self.fuzzInput([token, Array("svt_".utf8), Array(token.dropFirst(4))], &r) }) { b in
            let who = b.withUnsafeBytes { table.authenticate($0) }
            return (who != nil) == (b == token) ? nil : "authentication answered \(who == nil ? "no" : "yes") wrongly"
        }
    }

    // MARK: Decoders that read inside a transaction

    mutating func inTransactions() throws {
        let dir = FileManager.default.temporaryDirectory.path + "/shredvault-fuzz-" + UUID().uuidString.prefix(8).lowercased()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let env = try Environment(path: dir + "/keystore", options: .init(mapSize: 256 << 20), databases: Layout.keystoreDatabases)
        defer { env.close() }
        let dbs = KeystoreDatabases(env)

        // The held-target index entry.
        let heldKey = Layout.tenantKey(7) + [1] + rng.bytes(16)
        let held = (0..<8).map { _ in HeldTarget(count: UInt32(truncatingIfNeeded: rng.edgy64()), since: Int64(bitPattern: rng.edgy64())).encode() }
        var inputs: [[UInt8]] = []
        for _ in 0..<iterations { inputs.append(Self.fuzzInput(held, &rng)) }
        var results: [Result<HeldTarget?, any Error>] = []
        try env.write { txn in
            for value in inputs {
                if value.isEmpty {
                    _ = try txn.delete(key: heldKey, in: dbs.heldTargets)
                } else {
                    try txn.put(value, forKey: heldKey, in: dbs.heldTargets)
                }
                results.append(Result { try HeldTarget.load(heldKey, in: txn, dbs: dbs) })
            }
            _ = try txn.delete(key: heldKey, in: dbs.heldTargets)
        }
        var index = 0
        run("HeldTarget.load", count: inputs.count, make: { _ in
            defer { index += 1 }
            return inputs[index]
        }) { value in
            let loaded = try results[index - 1].get()
            if value.isEmpty { return loaded == nil ? nil : "found a deleted entry" }
            guard let loaded else { return "lost an entry" }
            return loaded.encode() == value ? nil : "decoded a non-canonical entry"
        }

        // The recorded bucket width.
        let widths = [1, 3_600, 86_400, Int(ISODuration.maximumSeconds)].map { Vault.encodeBucketWidth(Int64($0)) }
        var widthInputs: [[UInt8]] = []
        for _ in 0..<max(1, iterations / 5) { widthInputs.append(Self.fuzzInput(widths, &rng)) }
        var widthResults: [Result<Int64?, any Error>] = []
        try env.write { txn in
            for value in widthInputs {
                if value.isEmpty {
                    _ = try txn.delete(key: Vault.metaBucketWidth, in: dbs.meta)
                } else {
                    try txn.put(value, forKey: Vault.metaBucketWidth, in: dbs.meta)
                }
                widthResults.append(Result { try Vault.storedBucketWidth(in: txn, meta: dbs.meta) })
            }
            _ = try txn.delete(key: Vault.metaBucketWidth, in: dbs.meta)
        }
        var widthIndex = 0
        run("Vault.storedBucketWidth", count: widthInputs.count, make: { _ in
            defer { widthIndex += 1 }
            return widthInputs[widthIndex]
        }) { value in
            guard let width = try widthResults[widthIndex - 1].get() else { return value.isEmpty ? nil : "lost the recorded width" }
            guard width >= 1, width <= ISODuration.maximumSeconds else { return "accepted \(width) s" }
            return Vault.encodeBucketWidth(width) == value ? nil : "decoded a non-canonical width"
        }

        // The audit chain: any change to any stored entry, key or the head is detected.
        var chain: [(key: [UInt8], value: [UInt8])] = []
        var prev = AuditHead.genesis.hash
        for seq in UInt64(1)...6 {
            let canonical = AuditEntry.canonical(seq: seq, at: 1_800_000_000_000 + Int64(seq), tenant: seq % 2 == 0 ? "acme" : nil,
                                                 actor: "tok_fuzz", action: "record.write", target: "record:\(seq)", outcome: "ok",
                                                 count: seq, reference: seq == 3 ? "ticket-42" : nil)
            let hash = KeyedHash.hash(prev + canonical, outputCount: 32)
            chain.append((Layout.auditKey(seq), canonical + prev + hash))
            prev = hash
        }
        let head = AuditHead(seq: 6, hash: prev).encode()
        struct Case { var chain: [(key: [UInt8], value: [UInt8])]; var head: [UInt8]?; var changed: Bool }
        var cases: [Case] = []
        for _ in 0..<max(1, iterations / 5) {
            var c = Case(chain: chain, head: head, changed: false)
            switch rng.below(6) {
            case 0, 1, 2:
                let i = rng.below(c.chain.count)
                let mutated = rng.mutate(c.chain[i].value, other: rng.pick(chain).value)
                if mutated.isEmpty {
                    c.chain.remove(at: i)
                    c.changed = true
                } else {
                    c.changed = mutated != c.chain[i].value
                    c.chain[i].value = mutated
                }
            case 3:
                let i = rng.below(c.chain.count)
                c.chain[i].key = rng.mutate(c.chain[i].key, other: rng.pick(chain).key)
                c.changed = c.chain[i].key != chain[i].key
                if c.chain[i].key.isEmpty || c.chain[i].key.count > 511 { c.chain.remove(at: i) }
            case 4:
                let mutated = rng.mutate(head, other: rng.pick(chain).value)
                c.head = mutated.isEmpty ? nil : mutated
                c.changed = c.head != head
            default:
                break
            }
            cases.append(c)
        }
        var verdicts: [Result<AuditVerification, any Error>] = []
        try env.write { txn in
            for c in cases {
                try txn.removeAll(in: dbs.audit)
                _ = try txn.delete(key: AuditLog.headKey, in: dbs.meta)
                for (k, v) in c.chain { try txn.put(v, forKey: k, in: dbs.audit) }
                if let h = c.head { try txn.put(h, forKey: AuditLog.headKey, in: dbs.meta) }
                // Nothing archived (no mark): the chain is the keystore's tail alone.
                verdicts.append(Result { try AuditLog.verify(in: txn, txn, dbs: dbs, audit: AuditDatabases(keystore: env, records: env)) })
            }
        }
        var caseIndex = 0
        run("AuditLog.verify", count: cases.count, make: { _ in
            defer { caseIndex += 1 }
            return cases[caseIndex].chain.flatMap(\.value)
        }) { _ in
            let c = cases[caseIndex - 1]
            let verdict = try verdicts[caseIndex - 1].get()
            if verdict.isIntact && c.changed { return "a changed chain verifies" }
            if !verdict.isIntact && !c.changed { return "an intact chain does not verify: \(verdict.reason ?? "")" }
            return nil
        }
    }

    // MARK: The master key file

    mutating func masterKeyFiles() throws {
        let dir = FileManager.default.temporaryDirectory.path + "/shredvault-fuzz-mk-" + UUID().uuidString.prefix(8).lowercased()
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/master.key"
        let samples: [[UInt8]] = (0..<4).map { _ in MasterKeyFile.magic + [MasterKeyFile.format] + .be(rng.edgy64()) + rng.bytes(32) }
        run("MasterKeyFile.load", count: max(1, iterations / 5), make: { r in Self.fuzzInput(samples, &r) }) { b in
            unlink(path)
            let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
            guard fd >= 0 else { return "cannot write the test file" }
            _ = b.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            close(fd)
            let wellFormed = b.count == MasterKeyFile.length && Array(b.prefix(4)) == MasterKeyFile.magic && b[4] == MasterKeyFile.format
            do {
                let loaded = try MasterKeyFile.load(path)
                guard wellFormed else { return "loaded a malformed file" }
                let generation = b[5..<13].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                let key = loaded.key.withUnsafeBytes { Array($0) }
                return loaded.generation == generation && key == Array(b[13..<45]) ? nil : "loaded other values"
            } catch let e as VaultError {
                return wellFormed ? "refused a well-formed file: \(e)" : nil
            }
        }
    }

    // MARK: Texts read back from storage or requests

    mutating func texts() throws {
        let ids = (0..<8).map { i in Array(RecordID.generate(milliseconds: Int64(i) * 1_000_000_007).description.utf8) }
            + [Array("7ZZZZZZZZZZZZZZZZZZZZZZZZZ".utf8), Array("00000000000000000000000000".utf8), Array("01j0000000000000000000000a".utf8)]
        run("RecordID(text)", make: { r in Self.fuzzInput(ids, &r) }) { b in
            let text = String(decoding: b, as: UTF8.self)
            guard let id = RecordID(text) else { return nil }
            guard id.bytes.count == 16 else { return "\(id.bytes.count) bytes" }
            guard RecordID(id.description) == id else { return "does not round-trip through its text form" }
            return id.description == text.uppercased() || b.contains(where: { "ILOilo".utf8.contains($0) }) ? nil : "text form differs"
        }

        let slugs = ["acme", "a", String(repeating: "z", count: 63), "globex-2", "x-y-z"].map { Array($0.utf8) }
        run("TenantID", make: { r in Self.fuzzInput(slugs, &r) }) { b in
            let slug = String(decoding: b, as: UTF8.self)
            let t = try TenantID(slug)
            let again = try TenantID(t.slug)
            return t.slug == slug && again == t ? nil : "slug changed"
        }

        let durations = ["P92D", "PT2S", "P1DT12H", "P1W", "PT1H30M5S", "P36500D", "P2W3DT4H5M6S", "PT86400S"].map { Array($0.utf8) }
        run("ISODuration.seconds", make: { r in Self.fuzzInput(durations, &r) }) { b in
            let seconds = try ISODuration.seconds(String(decoding: b, as: UTF8.self), field: "fuzz")
            guard seconds > 0, seconds <= ISODuration.maximumSeconds else { return "accepted \(seconds) s" }
            return try ISODuration.seconds(ISODuration.format(seconds: seconds)) == seconds ? nil : "does not round-trip through format"
        }

        // Every one-byte code.
        let codes = (0...255).map { [UInt8($0)] }
        var next = 0
        run("Role/DataCategory/Channel(code:)", count: 256, make: { _ in
            defer { next += 1 }
            return codes[next]
        }) { b in
            for decode in [{ _ = try Role(code: b[0]) }, { _ = try DataCategory(code: b[0]) }, { _ = try Channel(code: b[0]) }] {
                do { try decode() } catch is VaultError {}
            }
            if let role = try? Role(code: b[0]), role.code != b[0] { return "role code changed" }
            if let c = try? DataCategory(code: b[0]), c.code != b[0] { return "category code changed" }
            if let c = try? Channel(code: b[0]), c.code != b[0] { return "channel code changed" }
            return nil
        }
    }
}
