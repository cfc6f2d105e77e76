import Foundation
import VaultAPI
import Sodium
import VaultCore

/// The checks of `scripts/verify-audit`, in Swift, with its messages word for word, so either
/// tool can be handed the same directory: key ids; each head's tenant, signature, size and root;
/// entries numbered 1, 2, 3...; each head's root within the entries against them; heads of one
/// size agree and none is smaller than one signed before it; consistency and inclusion proofs.
/// Needs no vault, socket or key: only the saved answers and libsodium.
struct OfflineAuditCheck {
    struct Problem { let check: String, where_: String, message: String }

    var problems: [Problem] = []
    var notes: [String] = []
    /// Whose log the heads are of (nil: the operator's).
    var tenant: String?
    var entriesChecked = 0
    /// The pruned entries the saved ones start after (0: they start at 1).
    var prunedBase: Int128 = 0

    typealias Hash = [UInt8]
    private struct GoodHead { let head: AuditDirectory.Head; let root: Hash }

    static func who(_ tenant: String?) -> String { tenant.map { "tenant \($0)" } ?? "the operator's log" }
    static func span(_ a: Int128, _ b: Int128) -> String { a == b ? "entry \(a)" : "entries \(a) to \(b)" }

    /// The bytes of base64 `text` when they are `count` bytes, else nil.
    static func b64(_ text: String, _ count: Int) -> Hash? {
        guard text.utf8.allSatisfy({ $0 < 0x80 }), let d = Data(base64Encoded: text), d.count == count else { return nil }
        return Array(d)
    }

    static func hex(_ b: [UInt8]) -> String { b.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() }

    /// Ed25519 works: RFC 8032's first test vector verifies, and fails with a flipped bit.
    static func ed25519Works() -> Bool {
        func bytes(_ h: String) -> [UInt8] {
            var out: [UInt8] = [], it = h.makeIterator()
            while let a = it.next(), let b = it.next() { out.append(UInt8(String([a, b]), radix: 16)!) }
            return out
        }
        let pk = bytes("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        var sig = bytes("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555f"
                        + "b8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")
        guard SigningKey.verify(signature: sig, of: [], publicKey: pk) else { return false }
        sig[0] ^= 1
        return !SigningKey.verify(signature: sig, of: [], publicKey: pk)
    }

    mutating func broken(_ check: String, _ where_: String, _ message: String) {
        problems.append(Problem(check: check, where_: where_, message: message))
    }

    init(_ d: AuditDirectory) {
        // 1. Every key_id is that of its key.
        var byID: [String: Hash] = [:], badIDs: Set<String> = []
        for k in d.keys {
            let pk = Self.b64(k.publicKey, 32)
            let kid = pk.map { Self.hex(Array(SHA256.hash($0).prefix(8))) }
            if kid != k.keyID {
                badIDs.insert(k.keyID)
                broken("keys", k.where_, pk == nil ? "key \(k.keyID): public_key is not base64 of 32 bytes"
                                                   : "key_id \(k.keyID) is not that of its public key (\(kid!))")
            } else {
                byID[kid!] = pk
            }
        }

        // 2. Every head: one tenant, a signature by a saved key, a size, a root. Failing heads are left out.
        var order: [String?] = [], count: [String?: Int] = [:]
        for h in d.heads {
            if count[h.tenant] == nil { order.append(h.tenant) }
            count[h.tenant, default: 0] += 1
        }
        // The most heads' tenant; a tie goes to the entries'.
        let hint: String?
        if d.entries.contains(where: { $0.chain }) { hint = nil } else if let first = d.entries.first { hint = first.tenant } else { hint = order[0] }
        func rank(_ t: String?) -> (Int, Int) { (count[t]!, t == hint ? 1 : 0) }
        var best = order[0]
        for t in order.dropFirst() where rank(t) > rank(best) { best = t }
        tenant = best
        let tenant = best, isOperator = best == nil
        var good: [GoodHead] = []
        for h in d.heads {
            let root = Self.b64(h.root, 32), sig = Self.b64(h.signature, 64), pk = byID[h.keyID]
            var fails: [String] = []
            if h.tenant != tenant { fails.append("is of \(Self.who(h.tenant)), not of \(Self.who(tenant)) like the other heads") }
            if h.size < 0 { fails.append("has a negative size") }
            if root == nil { fails.append("has a root that is not base64 of 32 bytes") }
            if sig == nil { fails.append("has a signature that is not base64 of 64 bytes") }
            if pk == nil {
                fails.append("is signed by key \(h.keyID), which " + (badIDs.contains(h.keyID) ? "failed its key_id check" : "is not in keys.json"))
            } else if let sig, !SigningKey.verify(signature: sig, of: Self.signedBytes(h), publicKey: pk!) {
                fails.append("has a signature that does not verify with key \(h.keyID) (forged or altered)")
            }
            for f in fails { broken("heads", h.where_, "\(h.label) \(f)") }
            if fails.isEmpty { good.append(GoodHead(head: h, root: root!)) }
        }
        good = Self.stableSorted(good) { a, b in
            a.head.size != b.head.size ? a.head.size < b.head.size : Self.less(a.head.at, b.head.at)
        }
        var bySize: [Int128: [GoodHead]] = [:], sizeOrder: [Int128] = []
        for h in good {
            if bySize[h.head.size] == nil { sizeOrder.append(h.head.size) }
            bySize[h.head.size, default: []].append(h)
        }
        let allSizes = Set(d.heads.map(\.size))

        // 3. Entries numbered 1, 2, 3, ... or, when the log is pruned and no entry 1 is saved, from the
        // first after the pruned ones: the leaves are those of the unbroken run.
        var base: Int128 = 0, prefix: [Hash] = [], cross: (Int128, [Hash])?
        if let pruned = d.pruned {
            let p = pruned.size, subs = pruned.subtrees.map { Self.b64($0, 32) }
            if p < 0 || subs.contains(where: { $0 == nil }) || subs.count != Self.heights(p).count {
                broken("pruned", pruned.where_, "\(p) pruned entries are not covered by \(subs.count) subtree hashes "
                       + "(one per bit of the size, base64 of 32 bytes): not used")
            } else if p > 0 && d.entries.contains(where: { $0.seq == 1 }) {
                cross = (p, subs.map { $0! })
            } else if p > 0 {
                (base, prefix) = (p, subs.map { $0! })
            }
        }
        prunedBase = base
        var leaves: [Hash] = [], bySeq: [Int128: Hash] = [:], stop = false
        var firstAt: [Int128: Int] = [:]
        for (i, e) in d.entries.enumerated() where firstAt[e.seq] == nil { firstAt[e.seq] = i }
        for (i, e) in d.entries.enumerated() {
            let seq = e.seq, expected = base + Int128(leaves.count + 1)
            var lh: Hash?
            switch Self.leaf(e, isOperator: isOperator) {
            case .success(let bytes):
                lh = MerkleTree.leafHash(bytes)
                if bySeq[seq] == nil { bySeq[seq] = lh }
            case .failure(let x):
                broken("entries", e.where_, "entry \(seq): \(x.description)")
            }
            if !isOperator && e.tenant != tenant {
                broken("entries", e.where_, "entry \(seq) is of \(Self.who(e.tenant)), not \(Self.who(tenant))")
            }
            if stop || seq == expected {
                stop = stop || lh == nil
                if !stop { leaves.append(lh!) }
                continue
            }
            let msg: String
            if 1 <= seq && seq <= base {
                msg = "entry \(seq) is among the \(base) pruned entries (pruned.json)"
            } else if 1 <= seq && seq < expected {
                msg = "entry \(seq) is repeated (after entry \(expected - 1))"
            } else if seq > expected && (firstAt[expected] ?? -1) > i {
                msg = "entries out of order: entry \(seq) comes before entry \(expected)"
            } else if seq > expected {
                msg = "entry \(expected) is missing: entry \(seq) follows "
                    + (expected > base + 1 ? "entry \(expected - 1)" : base > 0 ? "the \(base) pruned entries" : "nothing")
            } else {
                msg = "entry \(seq) has a seq below 1"
            }
            broken("entries", e.where_, msg + "; entries from \(expected) on are not checked against the heads")
            stop = true
        }
        let usable = base + Int128(leaves.count)
        entriesChecked = leaves.count
        if let (p, subs) = cross {
            if usable < p {
                notes.append("\(d.pruned!.where_): not checked: \(p) entries are pruned, \(usable) saved from entry 1")
            } else if Self.subtrees(of: leaves, Int(p)) != subs {
                broken("history", d.pruned!.where_, "history rewritten: the subtrees of the \(p) pruned entries are not "
                       + "those of the saved entries 1 to \(p)")
            }
        }

        // 4. The root of every head within the entries is that of the entries (after the pruned ones' subtrees).
        let roots = Self.roots(at: Set(good.map(\.head.size).filter { base <= $0 && $0 <= usable }), leaves: leaves,
                               base: base, prefix: prefix)
        var anchored: Set<Int128> = []
        for h in good where base <= h.head.size && h.head.size <= usable {
            let s = h.head.size
            if roots[s] == h.root {
                anchored.insert(s)
                continue
            }
            let below = anchored.filter { $0 < s }.max() ?? 0
            let place = below > 0 ? "the head of size \(below) matches, so the rewrite lies in \(Self.span(below + 1, s))"
                                  : "no smaller head matches: the rewrite lies somewhere in \(Self.span(1, s))"
            let what = base == 0 ? "the saved entries 1 to \(s)"
                : "the pruned entries' subtrees" + (s > base ? " and the saved entries \(base + 1) to \(s)" : "")
            broken("history", h.head.where_, "history rewritten: \(h.head.label) does not match \(what) (\(place))")
        }
        let within = Set(good.map(\.head.size).filter { $0 < base }).sorted()
        if !within.isEmpty {
            notes.append("heads of size \(within.map(String.init).joined(separator: ", ")) lie within the \(base) pruned entries: "
                         + "checked by signature only")
        }
        if let largest = good.map(\.head.size).max(), usable > largest {
            notes.append("\(Self.span(largest + 1, usable)): in no saved head yet")
        }

        // 5. Heads of one size agree, no head is smaller than one signed before it, every consistency proof verifies.
        var largest: GoodHead?
        // RFC 3339 times of one width sort as times.
        let byTime = Self.stableSorted(good) { a, b in
            a.head.at != b.head.at ? Self.less(a.head.at, b.head.at) : a.head.size < b.head.size
        }
        for h in byTime {
            if let l = largest, h.head.size < l.head.size {
                broken("consistency", h.head.where_, "the log shrank: \(h.head.label) was signed after \(l.head.label) "
                       + "(\(l.head.where_)): \(Self.span(h.head.size + 1, l.head.size)) were taken out (unless the "
                       + "vault's clock went back)")
            }
            if largest == nil || h.head.size > largest!.head.size { largest = h }
        }
        for s in sizeOrder {
            let hs = bySize[s]!
            if let other = hs.first(where: { $0.root != hs[0].root }) {
                broken("consistency", other.head.where_, "\(other.head.label) and \(hs[0].head.label) (\(hs[0].head.where_)) "
                       + "have different roots: a forked or rewritten log")
            }
        }
        /// The first good head of `size`, or nil after a problem (none saved) or a note (all failed).
        func headOf(_ size: Int128, _ kind: String, _ where_: String, _ me: inout OfflineAuditCheck) -> GoodHead? {
            if let h = bySize[size]?.first { return h }
            if allSizes.contains(size) {
                me.notes.append("\(where_): not checked: every saved head of size \(size) failed its checks")
            } else {
                me.broken(kind, where_, "no saved head of size \(size) to check this \(kind) proof against")
            }
            return nil
        }
        var proven: [(Int128, Int128)] = []
        for c in d.consistency {
            let (a, b) = (c.from, c.to), path = c.path.map { Self.b64($0, 32) }
            if !(0 <= a && a <= b) {
                broken("consistency", c.where_, "from \(a) to \(b) is not a range of tree sizes")
            } else if path.contains(where: { $0 == nil }) {
                broken("consistency", c.where_, "the path has an element that is not base64 of 32 bytes")
            } else if a == 0 || headOf(a, "consistency", c.where_, &self) != nil, let new = headOf(b, "consistency", c.where_, &self) {
                let old = a == 0 ? nil : bySize[a]![0]
                if b <= Int128(UInt64.max), MerkleTree.verifyConsistency(old: UInt64(a), new: UInt64(b), oldRoot: old?.root ?? MerkleTree.emptyRoot,
                                                                        newRoot: new.root, proof: path.map { $0! }) {
                    proven.append((a, b))
                } else {
                    broken("consistency", c.where_, "the consistency proof from \(a) to \(b) does not verify against "
                           + "\(old?.head.label ?? "the empty tree") and \(new.head.label): the proof is wrong, "
                           + "or the later head does not extend the earlier one")
                }
            }
        }
        var covered = anchored, grown = true  // sizes tied to the entries, directly or through proofs
        while grown {
            grown = false
            for (a, b) in proven where a != 0 && covered.contains(a) != covered.contains(b) {
                covered.formUnion([a, b])
                grown = true
            }
        }
        let past = Set(good.map(\.head.size).filter { $0 > usable }).sorted()
        let beyond = base > 0 ? "past the \(base) pruned and \(leaves.count) saved entries checked"
            : "past the \(usable) entries checked" + (usable < Int128(d.entries.count) ? " (\(d.entries.count) saved)" : "")
        let unproven = past.filter { !covered.contains($0) }, provenPast = past.filter { covered.contains($0) }
        if !unproven.isEmpty {
            notes.append("heads of size \(unproven.map(String.init).joined(separator: ", ")) go \(beyond): checked by signature only")
        }
        if !provenPast.isEmpty {
            notes.append("heads of size \(provenPast.map(String.init).joined(separator: ", ")) go \(beyond): checked by signature and by "
                         + "consistency proofs from heads that match the entries")
        }

        // 6. Every inclusion proof verifies, and its leaf is that of the saved entry.
        for p in d.inclusion {
            let (n, m) = (p.seq, p.size), lh = Self.b64(p.leafHash, 32), path = p.path.map { Self.b64($0, 32) }
            if lh == nil || path.contains(where: { $0 == nil }) {
                broken("inclusion", p.where_, "leaf_hash or a path element is not base64 of 32 bytes")
            } else if !(1 <= n && n <= m) {
                broken("inclusion", p.where_, "entry \(n) is not in a tree of \(m) entries")
            } else if let h = headOf(m, "inclusion", p.where_, &self) {
                if let saved = bySeq[n], saved != lh {
                    broken("inclusion", p.where_, "the proof's leaf hash is not that of the saved entry \(n)")
                }
                if !(m <= Int128(UInt64.max) && MerkleTree.verifyInclusion(leaf: lh!, index: UInt64(n - 1), size: UInt64(m),
                                                                         proof: path.map { $0! }, root: h.root)) {
                    broken("inclusion", p.where_, "the inclusion proof of entry \(n) does not verify against \(h.head.label)")
                }
            }
        }
    }

    /// Python's order of strings: by code point.
    static func less(_ a: String, _ b: String) -> Bool {
        a.unicodeScalars.map(\.value).lexicographicallyPrecedes(b.unicodeScalars.map(\.value))
    }

    /// Python's `sorted`: stable.
    static func stableSorted<T>(_ a: [T], by less: (T, T) -> Bool) -> [T] {
        a.enumerated().sorted { less($0.element, $1.element) || (!less($1.element, $0.element) && $0.offset < $1.offset) }.map(\.element)
    }

    /// What a head's signature covers: `json.dumps({"at","root","size","tenant"}, sort_keys=True,
    /// separators=(",", ":"))`, as the vault and the script write it.
    /// The heights of the complete subtrees of a tree of `n` leaves, largest first (the bits of `n`).
    static func heights(_ n: Int128) -> [Int] {
        guard n > 0 else { return [] }
        return (0..<128).reversed().filter { n >> $0 & 1 == 1 }
    }

    /// The MTH of the first `s` leaves for every `s` of `sizes` (`base <= s <= base + leaves.count`),
    /// in one pass: a tree is its complete subtrees for the bits of its size, folded from the
    /// right. The first `base` leaves are given by their complete subtrees (`prefix`, largest first).
    static func roots(at sizes: Set<Int128>, leaves: [Hash], base: Int128, prefix: [Hash]) -> [Int128: Hash] {
        var stack = Array(zip(heights(base), prefix))
        func fold() -> Hash {
            guard var acc = stack.last?.1 else { return MerkleTree.emptyRoot }
            for (_, left) in stack.dropLast().reversed() { acc = MerkleTree.nodeHash(left, acc) }
            return acc
        }
        var out: [Int128: Hash] = [:]
        if sizes.contains(base) { out[base] = fold() }
        for (i, leaf) in leaves.enumerated() {
            var h = leaf, height = 0
            while let top = stack.last, top.0 == height {
                h = MerkleTree.nodeHash(stack.removeLast().1, h)
                height += 1
            }
            stack.append((height, h))
            if sizes.contains(base + Int128(i + 1)) { out[base + Int128(i + 1)] = fold() }
        }
        return out
    }

    /// The hashes of the complete subtrees covering the first `n` leaves, largest first.
    static func subtrees(of leaves: [Hash], _ n: Int) -> [Hash] {
        var out: [Hash] = [], lo = 0
        for b in heights(Int128(n)) {
            var level = Array(leaves[lo..<lo + (1 << b)])
            while level.count > 1 { level = stride(from: 0, to: level.count, by: 2).map { MerkleTree.nodeHash(level[$0], level[$0 + 1]) } }
            out.append(level[0])
            lo += 1 << b
        }
        return out
    }

    static func signedBytes(_ h: AuditDirectory.Head) -> [UInt8] {
        Array(("{\"at\":\(pyJSON(h.at)),\"root\":\(pyJSON(h.root)),\"size\":\(h.size),\"tenant\":"
               + (h.tenant.map(pyJSON) ?? "null") + "}").utf8)
    }

    /// A JSON string as Python's `json.dumps` writes it (`ensure_ascii`: \uXXXX beyond ASCII).
    static func pyJSON(_ s: String) -> String {
        var out = "\""
        for u in s.utf16 {
            switch u {
            case 0x22: out += "\\\""
            case 0x5C: out += "\\\\"
            case 0x0A: out += "\\n"
            case 0x0D: out += "\\r"
            case 0x09: out += "\\t"
            case 0x08: out += "\\b"
            case 0x0C: out += "\\f"
            case 0x20..<0x7F: out.unicodeScalars.append(Unicode.Scalar(u)!)
            default:
                let h = String(u, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - h.count) + h
            }
        }
        return out + "\""
    }

    struct LeafError: Error { let description: String }

    /// The leaf bytes of an entry, as `AuditEntry.leaf` writes them (docs/api.md).
    static func leaf(_ e: AuditDirectory.Entry, isOperator: Bool) -> Result<[UInt8], LeafError> {
        guard let at = millis(e.at) else {
            return .failure(LeafError(description: "\"at\" \(pyRepr(e.at)) is not of the form YYYY-MM-DDTHH:MM:SS.fffZ"))
        }
        let hexDigits = Set("0123456789abcdef".utf8)
        guard e.hash.utf8.count == 64, e.hash.utf8.allSatisfy(hexDigits.contains) else {
            return .failure(LeafError(description: "\"hash\" is not 64 lowercase hex digits"))
        }
        let range = Int128(0)..<(Int128(1) << 64)
        guard range.contains(e.seq), range.contains(e.count) else {
            return .failure(LeafError(description: "\"seq\" or \"count\" is not an unsigned 64-bit integer"))
        }
        var out: [UInt8] = [1]
        out += bigEndian(UInt64(e.seq)) + bigEndian(UInt64(bitPattern: at))
        for s in [e.tenant, e.actor, e.action, isOperator ? nil : e.target, e.outcome] as [String?] {
            guard let b = str(s) else { return .failure(LeafError(description: "a string is longer than 65535 bytes")) }
            out += b
        }
        out += bigEndian(UInt64(e.count))
        guard let r = str(isOperator ? nil : e.reference) else {
            return .failure(LeafError(description: "a string is longer than 65535 bytes"))
        }
        out += r
        var it = e.hash.utf8.makeIterator()
        while let a = it.next(), let b = it.next() { out.append(UInt8(hexValue(a) << 4 | hexValue(b))) }
        return .success(out)
    }

    private static func hexValue(_ c: UInt8) -> UInt8 { c <= 0x39 ? c - 0x30 : c - 0x61 + 10 }
    private static func bigEndian(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (56 - 8 * $0)) } }
    private static func str(_ s: String?) -> [UInt8]? {
        let b = Array((s ?? "").utf8)
        guard b.count <= 0xFFFF else { return nil }
        return [UInt8(b.count >> 8), UInt8(b.count & 0xFF)] + b
    }

    /// Milliseconds since the epoch of `YYYY-MM-DDTHH:MM:SS.fffZ`; nil for any other shape or a
    /// date that does not exist.
    static func millis(_ text: String) -> Int64? {
        let b = Array(text.utf8)
        guard b.count == 24 else { return nil }
        let digitsAt = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22]
        guard digitsAt.allSatisfy({ (0x30...0x39).contains(b[$0]) }), b[4] == 0x2D, b[7] == 0x2D, b[10] == 0x54,
              b[13] == 0x3A, b[16] == 0x3A, b[19] == 0x2E, b[23] == 0x5A else { return nil }
        func n(_ r: Range<Int>) -> Int64 { r.reduce(0) { $0 * 10 + Int64(b[$1] - 0x30) } }
        let (y, mo, d, h, mi, s, ms) = (n(0..<4), n(5..<7), n(8..<10), n(11..<13), n(14..<16), n(17..<19), n(20..<23))
        let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
        let days: [Int64] = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
        guard y >= 1, (1...12).contains(mo), d >= 1, d <= days[Int(mo - 1)], h < 24, mi < 60, s < 60 else { return nil }
        // Days from 1970-01-01 (proleptic Gregorian, as calendar.timegm counts).
        let yy = mo <= 2 ? y - 1 : y
        let era = (yy >= 0 ? yy : yy - 399) / 400
        let yoe = yy - era * 400
        let doy = (153 * (mo > 2 ? mo - 3 : mo + 9) + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let epochDays = era * 146_097 + doe - 719_468
        return ((epochDays * 24 + h) * 60 + mi) * 60_000 + s * 1000 + ms
    }

    /// Python's `repr` of a string, for the one message that quotes a value.
    static func pyRepr(_ s: String) -> String {
        let quote: Character = s.contains("'") && !s.contains("\"") ? "\"" : "'"
        var out = String(quote)
        for u in s.unicodeScalars {
            switch u {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where Character(u) == quote: out += "\\" + String(quote)
            case _ where u.value < 0x20 || u.value == 0x7F:
                let h = String(u.value, radix: 16)
                out += "\\x" + (h.count == 1 ? "0" : "") + h
            default: out.unicodeScalars.append(u)
            }
        }
        out.append(quote)
        return out
    }
}

extension OfflineAuditCheck {
    /// `shredvault audit verify --offline DIR`: prints the problems, the notes and a summary
    /// (or, with `json`, one report), and answers the exit status of `scripts/verify-audit`.
    static func run(_ dir: String, json: Bool) -> Int32 {
        let saved: AuditDirectory
        do {
            saved = try AuditDirectory.load(dir)
        } catch {
            if json { Terminal.out("{\"ok\": false, \"error\": \(pyJSON("\(error)"))}") }
            Terminal.error("shredvault: audit verify --offline: \(error)")
            return 2
        }
        guard ed25519Works() else {
            Terminal.error("shredvault: audit verify --offline: libsodium fails the RFC 8032 Ed25519 test vector; refusing to trust it")
            return 3
        }
        let report = OfflineAuditCheck(saved)
        let proofs = saved.consistency.count + saved.inclusion.count
        let n = report.problems.count
        let summary = "audit verify --offline: \(saved.heads.count) heads, \(saved.entries.count) entries, \(proofs) proofs: "
            + (n == 0 ? "ok" : "\(n) problems")
        if json {
            var w = JSONWriter(capacity: 1024)
            w.beginObject()
            w.field("ok", n == 0)
            w.field("log", who(report.tenant))
            w.key("tenant")
            if let t = report.tenant { w.string(t) } else { w.null() }
            w.field("entries_checked", Int64(report.entriesChecked))
            w.field("pruned", Int64(report.prunedBase))
            w.key("problems")
            w.beginArray()
            for p in report.problems {
                w.beginObject()
                w.field("check", p.check)
                w.field("where", p.where_)
                w.field("message", p.message)
                w.endObject()
            }
            w.endArray()
            w.key("notes")
            w.beginArray()
            for note in report.notes { w.string(note) }
            w.endArray()
            w.field("ed25519", "libsodium")
            w.field("heads", Int64(saved.heads.count))
            w.field("entries", Int64(saved.entries.count))
            w.field("proofs", Int64(proofs))
            w.field("summary", summary)
            w.endObject()
            Terminal.outBytes(w.bytes + [0x0A])
        } else {
            for p in report.problems { Terminal.out("BROKEN: \(p.where_): \(p.message)") }
            for note in report.notes { Terminal.out("note: \(note)") }
            Terminal.out(summary)
        }
        return n == 0 ? 0 : 1
    }
}
