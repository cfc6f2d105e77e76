import Foundation

/// Input that cannot be read as what the API returns: exit 2 (as `scripts/verify-audit`).
struct AuditInputError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// What a client company saved of its audit (docs/api.md, "Checking the audit offline"), in the
/// layout `scripts/verify-audit` reads: `keys.json`, `heads/*.json` (or `heads.json`),
/// `entries/*.json`, `consistency/*.json`, `proofs/*.json`, each file one answer or a JSON list
/// of them, files in natural name order. Messages are the script's, word for word.
struct AuditDirectory {
    struct Key { var keyID: String, publicKey: String, where_: String }
    struct Head {
        var size: Int128, root: String, at: String, tenant: String?, signature: String, keyID: String, where_: String
        var label: String { "head of size \(size) (at \(at))" }
    }
    struct Entry {
        var seq: Int128, at: String, tenant: String?, actor: String, action: String, target: String?, outcome: String
        var count: Int128, reference: String?, hash: String, where_: String
        /// The operator's page (it carries `prev`).
        var chain: Bool
    }
    struct Consistency { var from: Int128, to: Int128, path: [String], where_: String }
    struct Inclusion { var seq: Int128, size: Int128, leafHash: String, path: [String], where_: String }
    struct Pruned { var size: Int128, subtrees: [String], where_: String }

    var keys: [Key] = []
    var heads: [Head] = []
    var entries: [Entry] = []
    var consistency: [Consistency] = []
    var inclusion: [Inclusion] = []
    /// `pruned.json` (`GET /v1/audit/pruned`), when saved.
    var pruned: Pruned?

    static func join(_ a: String, _ b: String) -> String { a.hasSuffix("/") ? a + b : a + "/" + b }

    static func load(_ d: String) throws -> AuditDirectory {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: d, isDirectory: &isDir), isDir.boolValue else {
            throw AuditInputError("\(d) is not a directory")
        }
        let kpath = join(d, "keys.json")
        guard FileManager.default.fileExists(atPath: kpath, isDirectory: &isDir), !isDir.boolValue else {
            throw AuditInputError("\(kpath) is missing: save GET /v1/audit/keys there")
        }
        var out = AuditDirectory()
        let keyList = try array(try object(try json(kpath), kpath), "keys", kpath)
        for (i, k) in keyList.enumerated() {
            let w = "\(kpath): key \(i + 1)"
            let o = try object(k, w)
            out.keys.append(Key(keyID: try string(o, "key_id", w)!, publicKey: try string(o, "public_key", w)!, where_: w))
        }
        for (w, h) in try gather(d, "heads", "head") {
            let o = try object(h, w)
            out.heads.append(Head(size: try int(o, "size", w), root: try string(o, "root", w)!, at: try string(o, "at", w)!,
                                  tenant: try string(o, "tenant", w, null: true), signature: try string(o, "signature", w)!,
                                  keyID: try string(o, "key_id", w)!, where_: w))
        }
        guard !out.heads.isEmpty else {
            throw AuditInputError("no heads in \(join(d, "heads"))/ or heads.json: save GET /v1/audit/head there")
        }
        for (pw, page) in try gather(d, "entries", "page") {
            for (i, e) in try array(try object(page, pw), "entries", pw).enumerated() {
                let w = "\(pw): entries[\(i)]"
                let o = try object(e, w)
                out.entries.append(Entry(
                    seq: try int(o, "seq", w), at: try string(o, "at", w)!, tenant: try string(o, "tenant", w, null: true),
                    actor: try string(o, "actor", w)!, action: try string(o, "action", w)!,
                    target: try string(o, "target", w, null: true), outcome: try string(o, "outcome", w)!,
                    count: try int(o, "count", w), reference: try string(o, "reference", w, null: true),
                    hash: try string(o, "hash", w)!, where_: w, chain: o.contains { $0.key == "prev" }))
            }
        }
        for (w, c) in try gather(d, "consistency", "proof") {
            let o = try proof(c, ("from", "to"), w)
            out.consistency.append(Consistency(from: try int(o, "from", w), to: try int(o, "to", w),
                                               path: try strings(o, "path", w), where_: w))
        }
        for (w, p) in try gather(d, "proofs", "proof") {
            let o = try proof(p, ("seq", "size"), w)
            out.inclusion.append(Inclusion(seq: try int(o, "seq", w), size: try int(o, "size", w),
                                           leafHash: try string(o, "leaf_hash", w)!, path: try strings(o, "path", w), where_: w))
        }
        let ppath = join(d, "pruned.json")
        if FileManager.default.fileExists(atPath: ppath) {
            let o = try object(try json(ppath), ppath)
            out.pruned = Pruned(size: try int(o, "size", ppath), subtrees: try strings(o, "subtrees", ppath), where_: ppath)
        }
        return out
    }

    // MARK: Files

    static func json(_ path: String) throws -> JSONValue {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw AuditInputError("\(path): cannot read: \(String(cString: strerror(errno)))")
        }
        do { return try JSONValue.parse(Array(data)) } catch {
            throw AuditInputError("\(path): malformed JSON: \(error)")
        }
    }

    /// `(where, item)` of every item of `DIR/name/*.json` in natural file-name order (page-2
    /// before page-10), or of `DIR/name.json`; a file holds one item or a JSON list of them.
    static func gather(_ d: String, _ name: String, _ what: String) throws -> [(String, JSONValue)] {
        let folder = join(d, name), single = join(d, name + ".json")
        var files: [String] = []
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: folder, isDirectory: &isDir), isDir.boolValue {
            let names = try FileManager.default.contentsOfDirectory(atPath: folder)
                .filter { $0.hasSuffix(".json") && !$0.hasPrefix(".") }
            files = names.sorted { naturalKey($0).lexicographicallyPrecedes(naturalKey($1)) }.map { join(folder, $0) }
        }
        if FileManager.default.fileExists(atPath: single) {
            if !files.isEmpty { throw AuditInputError("both \(folder)/ and \(single) exist: keep one") }
            files = [single]
        }
        var out: [(String, JSONValue)] = []
        for path in files {
            let doc = try json(path)
            if case .array(let items) = doc {
                out += items.enumerated().map { ("\(path): \(what) \($0.offset + 1)", $0.element) }
            } else {
                out.append((path, doc))
            }
        }
        return out
    }

    /// A name as runs of text and numbers, compared part by part (Python's natural sort key).
    enum Part: Comparable {
        case text([UInt32])
        case number(Int128OrText)

        static func < (a: Part, b: Part) -> Bool {
            switch (a, b) {
            case (.text(let x), .text(let y)): x.lexicographicallyPrecedes(y)
            case (.number(let x), .number(let y)): x < y
            case (.text, .number): true
            case (.number, .text): false
            }
        }

        static func == (a: Part, b: Part) -> Bool { !(a < b) && !(b < a) }
    }

    /// A run of digits: its value (compared as a number), or the text when it is too long.
    struct Int128OrText: Comparable {
        let digits: String
        static func < (a: Self, b: Self) -> Bool {
            let x = a.digits.drop { $0 == "0" }, y = b.digits.drop { $0 == "0" }
            return x.count != y.count ? x.count < y.count : x < y
        }
        static func == (a: Self, b: Self) -> Bool { !(a < b) && !(b < a) }
    }

    static func naturalKey(_ name: String) -> [Part] {
        var parts: [Part] = [], text: [UInt32] = [], digits = ""
        for s in name.unicodeScalars {
            if ("0"..."9").contains(s) {
                digits.unicodeScalars.append(s)
            } else {
                if !digits.isEmpty {
                    parts.append(.text(text)); parts.append(.number(Int128OrText(digits: digits)))
                    text = []; digits = ""
                }
                text.append(s.value)
            }
        }
        if !digits.isEmpty {
            parts.append(.text(text)); parts.append(.number(Int128OrText(digits: digits)))
            text = []
        }
        parts.append(.text(text))
        return parts
    }

    // MARK: Fields

    typealias Object = [(key: String, value: JSONValue)]

    static func object(_ v: JSONValue, _ w: String) throws -> Object {
        guard case .object(let o) = v else { throw AuditInputError("\(w): not a JSON object") }
        return o
    }

    static func field(_ o: Object, _ key: String, _ w: String) throws -> JSONValue {
        guard let v = o.last(where: { $0.key == key })?.value else { throw AuditInputError("\(w): \"\(key)\" is missing") }
        return v
    }

    static func string(_ o: Object, _ key: String, _ w: String, null: Bool = false) throws -> String? {
        let v = try field(o, key, w)
        if case .null = v, null { return nil }
        guard case .string(let s) = v else { throw AuditInputError("\(w): \"\(key)\" must be a string" + (null ? " or null" : "")) }
        return s
    }

    /// An integer as Python's JSON reads one: a number without fraction or exponent.
    static func int(_ o: Object, _ key: String, _ w: String) throws -> Int128 {
        guard case .number(let text) = try field(o, key, w), !text.contains(where: { ".eE".contains($0) }) else {
            throw AuditInputError("\(w): \"\(key)\" must be an integer")
        }
        guard let v = Int128(text) else { throw AuditInputError("\(w): \"\(key)\" is beyond 128 bits") }
        return v
    }

    static func array(_ o: Object, _ key: String, _ w: String) throws -> [JSONValue] {
        guard case .array(let a) = try field(o, key, w) else { throw AuditInputError("\(w): \"\(key)\" must be a list") }
        return a
    }

    static func strings(_ o: Object, _ key: String, _ w: String) throws -> [String] {
        guard case .array(let a) = try field(o, key, w) else { throw AuditInputError("\(w): \"\(key)\" must be a list of strings") }
        return try a.map { v in
            guard case .string(let s) = v else { throw AuditInputError("\(w): \"\(key)\" must be a list of strings") }
            return s
        }
    }

    /// A proof file: its two sizes are its fields or, failing those, its name (`A-B.json`).
    static func proof(_ v: JSONValue, _ names: (String, String), _ w: String) throws -> Object {
        guard case .object(var o) = v else { throw AuditInputError("\(w): not a JSON object") }
        let base = String(w.split(separator: "/", omittingEmptySubsequences: false).last ?? "")
        let parts = base.hasSuffix(".json") ? base.dropLast(5).split(separator: "-", omittingEmptySubsequences: false) : []
        if parts.count == 2, parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy { $0.isASCII && $0.isNumber } }),
           let a = Int128(parts[0]), let b = Int128(parts[1]) {
            // The file's own fields win over its name.
            o = [(names.0, .number(String(a))), (names.1, .number(String(b)))] + o
        } else if !(o.contains { $0.key == names.0 } && o.contains { $0.key == names.1 }) {
            throw AuditInputError("\(w): \"\(names.0)\" or \"\(names.1)\" is missing, and the file is not named "
                                  + "\(names.0.uppercased())-\(names.1.uppercased()).json")
        }
        return o
    }
}
