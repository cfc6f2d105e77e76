import VaultAPI

/// A parsed daemon answer for readable output, built with VaultAPI's strict scanner so
/// object members keep the daemon's order (Foundation's dictionaries would shuffle them).
indirect enum JSONValue {
    case object([(key: String, value: JSONValue)])
    case array([JSONValue])
    case string(String)
    /// A number exactly as written.
    case number(String)
    case bool(Bool)
    case null
    /// Valid JSON the scanner will not split (a nested object with duplicate keys inside
    /// record data): shown as written.
    case verbatim(String)

    static func parse(_ bytes: [UInt8]) throws -> JSONValue {
        try bytes.withUnsafeBytes { try parse($0, top: true) }
    }

    private static func parse(_ raw: UnsafeRawBufferPointer, top: Bool) throws(JSONError) -> JSONValue {
        let kind = try JSONScanner.validate(raw)
        switch kind {
        case .object:
            do {
                let members = try JSONScanner.objectMembers(raw)
                var out: [(key: String, value: JSONValue)] = []
                for m in members {
                    out.append((m.key, try parse(UnsafeRawBufferPointer(rebasing: raw[m.range]), top: false)))
                }
                return .object(out)
            } catch {
                if top { throw error }
                return .verbatim(trimmedText(raw))
            }
        case .array:
            var out: [JSONValue] = []
            for e in try JSONScanner.arrayElements(raw) {
                out.append(try parse(UnsafeRawBufferPointer(rebasing: raw[e.range]), top: false))
            }
            return .array(out)
        case .string: return .string(try JSONRead.string(raw))
        case .number: return .number(trimmedText(raw))
        case .bool: return .bool(try JSONRead.bool(raw))
        case .null: return .null
        }
    }

    private static func trimmedText(_ raw: UnsafeRawBufferPointer) -> String {
        var lower = 0, upper = raw.count
        let space: Set<UInt8> = [0x20, 0x09, 0x0A, 0x0D]
        while lower < upper, space.contains(raw[lower]) { lower += 1 }
        while upper > lower, space.contains(raw[upper - 1]) { upper -= 1 }
        return String(decoding: raw[lower..<upper], as: UTF8.self)
    }

    subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        return members.first { $0.key == key }?.value
    }

    var string: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    var int: Int64? {
        if case .number(let n) = self { return Int64(n) }
        return nil
    }

    var bool: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }

    var array: [JSONValue]? {
        if case .array(let a) = self { return a }
        return nil
    }

    var isScalar: Bool {
        switch self {
        case .object, .array: false
        default: true
        }
    }

    /// A scalar as shown in readable output: strings unquoted, null as `-`.
    var plainText: String {
        switch self {
        // Control characters (an ESC sequence in a tenant's data) are never sent to the
        // terminal raw: such a string is shown JSON-escaped.
        case .string(let s): s.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F } ? JSONValue.quoted(s) : s
        case .number(let n): n
        case .bool(let b): b ? "yes" : "no"
        case .null: "-"
        case .verbatim(let v): v
        case .object, .array: JSONValue.pretty(self)
        }
    }

    /// Indented JSON, members in their original order.
    static func pretty(_ value: JSONValue, indent: String = "") -> String {
        switch value {
        case .object(let members):
            if members.isEmpty { return "{}" }
            let inner = indent + "  "
            let body = members.map { "\(inner)\(quoted($0.key)): \(pretty($0.value, indent: inner))" }
            return "{\n" + body.joined(separator: ",\n") + "\n\(indent)}"
        case .array(let items):
            if items.isEmpty { return "[]" }
            let inner = indent + "  "
            return "[\n" + items.map { inner + pretty($0, indent: inner) }.joined(separator: ",\n") + "\n\(indent)]"
        case .string(let s): return quoted(s)
        case .number(let n): return n
        case .bool(let b): return b ? "true" : "false"
        case .null: return "null"
        case .verbatim(let v): return v
        }
    }

    static func quoted(_ s: String) -> String {
        var w = JSONWriter(capacity: s.utf8.count + 8)
        w.string(s)
        return String(decoding: w.bytes, as: UTF8.self)
    }
}

/// Readable output: `key: value` lines, nested objects indented, lists of objects as
/// `-` items, and record `data` as indented JSON (it is the tenant's own structure).
enum Readable {
    static func render(_ value: JSONValue) -> String {
        var lines: [String] = []
        render(value, indent: "", into: &lines)
        return lines.joined(separator: "\n")
    }

    static func render(_ value: JSONValue, indent: String, into lines: inout [String]) {
        switch value {
        case .object(let members):
            for (key, v) in members { member(key, v, indent: indent, into: &lines) }
        case .array(let items):
            for item in items { listItem(item, indent: indent, into: &lines) }
        default:
            lines.append(indent + value.plainText)
        }
    }

    static func member(_ key: String, _ v: JSONValue, indent: String, into lines: inout [String]) {
        switch v {
        case _ where key == "data":
            let text = "\(indent)\(key): " + JSONValue.pretty(v, indent: indent)
            lines += text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        case .object(let members) where members.isEmpty:
            lines.append("\(indent)\(key): (none)")
        case .array(let items) where items.isEmpty:
            lines.append("\(indent)\(key): (none)")
        case .array(let items) where items.allSatisfy(\.isScalar):
            lines.append("\(indent)\(key): " + items.map(\.plainText).joined(separator: ", "))
        case .object, .array:
            lines.append("\(indent)\(key):")
            render(v, indent: indent + "  ", into: &lines)
        default:
            lines.append("\(indent)\(key): \(v.plainText)")
        }
    }

    static func listItem(_ item: JSONValue, indent: String, into lines: inout [String]) {
        guard case .object = item else {
            lines.append("\(indent)- \(item.plainText)")
            return
        }
        var inner: [String] = []
        render(item, indent: "", into: &inner)
        for (i, line) in inner.enumerated() {
            lines.append(indent + (i == 0 ? "- " : "  ") + line)
        }
    }

    /// Rows padded into columns (tenant, token, hold listings).
    static func table(_ header: [String], _ rows: [[String]]) -> String {
        var widths = header.map(\.count)
        for row in rows {
            for (i, cell) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], cell.count) }
        }
        func line(_ cells: [String]) -> String {
            var out = ""
            for (i, cell) in cells.enumerated() {
                out += i == cells.count - 1 ? cell : cell + String(repeating: " ", count: widths[i] - cell.count + 2)
            }
            return out
        }
        return ([line(header)] + rows.map(line)).joined(separator: "\n")
    }
}
