public import Sodium

// The JSON layer of the HTTP API: a strict, single-pass scanner (RFC 8259) that hands
// out byte ranges instead of building Foundation objects, typed readers for the short
// fields, and a compact writer.
//
// Why not JSONDecoder: a record body carries personal data ("subject", "data"). A
// decoder would copy it into `String`s and `Any` trees that are never wiped, and its
// errors quote the offending input. Here the body is scanned once; "data" stays a byte
// range of the request buffer and "subject" is unescaped straight into `SensitiveBytes`.
//
// Errors carry a byte offset and a fixed reason. The only input ever echoed is a
// top-level object key in "duplicate key", and only when it looks like a field name.

// MARK: - Errors and results

/// Malformed or mistyped JSON: where parsing failed and why, never what was there.
///
/// `description` is "malformed JSON at byte <offset>: <reason>". Reasons are fixed
/// phrases ("expected ':'", "invalid escape", "nesting deeper than 64"); the one
/// exception is "duplicate key \"name\"", which quotes a top-level key when it is a
/// field name (1 to 32 of `a-z` and `_`; otherwise just "duplicate key"). String values,
/// numbers and nested keys are never quoted.
public struct JSONError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The byte offset in the scanned input where parsing failed.
    public let offset: Int
    /// A fixed phrase saying what was expected.
    public let reason: String

    /// Creates an error (also for request validation: "missing field \"subject\"").
    ///
    /// - Warning: `reason` must never contain request content other than field names.
    public init(offset: Int, reason: String) {
        self.offset = offset
        self.reason = reason
    }

    /// "malformed JSON at byte <offset>: <reason>".
    public var description: String {
        "malformed JSON at byte \(offset): \(reason)"
    }
}

/// The type of a JSON value, told by its first byte.
public enum JSONKind: Sendable, Equatable {
    case object, array, string, number, bool, null
}

/// A member of a JSON object: its key (unescaped) and the byte range of its raw value in the input.
///
/// The range never includes the whitespace around the value; slice the input with it
/// (`UnsafeRawBufferPointer(rebasing: body[member.range])`) to hand the value to `JSONRead`.
public struct JSONMember: Sendable, Equatable {
    public let key: String
    public let range: Range<Int>
    public let kind: JSONKind

    public init(key: String, range: Range<Int>, kind: JSONKind) {
        self.key = key
        self.range = range
        self.kind = kind
    }
}

// MARK: - Scanner

/// Strict validation of a whole input, returning byte ranges instead of values.
///
/// RFC 8259 with no extensions: no comments, trailing commas, single quotes, leading
/// zeros, `NaN`/`Infinity` or byte-order mark. UTF-8 is validated everywhere (Unicode
/// Table 3-7: no overlongs, no encoded surrogates, nothing above U+10FFFF), control
/// characters inside strings are rejected and `\u` surrogate escapes must pair up.
///
/// The validator never recurses: nesting is tracked on an explicit stack and refused
/// past `maxDepth` (the outermost container is depth 1), so a body of 100 000 `[` fails
/// at byte `maxDepth` instead of overflowing the stack.
///
/// Duplicate keys are refused in the top-level object of `objectMembers` only: nested
/// objects (inside "data") are the client's payload, stored verbatim and never looked up.
public enum JSONScanner {
    /// Validates `bytes` as exactly one JSON value that must be an object, and returns its top-level members in order.
    ///
    /// Keys are compared as Swift `String`s, so two keys that are canonically
    /// equivalent are also duplicates: a consumer matching `key == "subject"` can never
    /// see two candidates.
    /// - Throws: `JSONError` for malformed input, a non-object, a duplicate top-level
    ///   key, or nesting deeper than `maxDepth`.
    public static func objectMembers(_ bytes: UnsafeRawBufferPointer, maxDepth: Int = 64) throws(JSONError) -> [JSONMember] {
        var scanner = Scanner(bytes, maxDepth: maxDepth)
        scanner.skipWhitespace()
        try scanner.expectContainer(ASCII.openBrace, otherwise: "expected an object")
        var members: [JSONMember] = []
        var seen = Set<String>()
        scanner.skipWhitespace()
        if scanner.peek() == ASCII.closeBrace {
            scanner.index += 1
        } else {
            while true {
                guard scanner.peek() == ASCII.quote else {
                    throw scanner.error(scanner.atEnd ? "unterminated object" : "expected a string key")
                }
                let keyStart = scanner.index
                let key = try scanner.stringValue()
                guard seen.insert(key).inserted else {
                    throw JSONError(offset: keyStart, reason: duplicateKeyReason(key))
                }
                try scanner.expectColon()
                scanner.skipWhitespace()
                let valueStart = scanner.index
                let kind = try scanner.value(depth: 1)
                members.append(JSONMember(key: key, range: valueStart..<scanner.index, kind: kind))
                scanner.skipWhitespace()
                if try scanner.separator(close: ASCII.closeBrace) { break }
                scanner.skipWhitespace()
            }
        }
        try scanner.expectEnd()
        return members
    }

    /// Validates `bytes` as exactly one JSON value that must be an array, and returns its elements' ranges and kinds.
    ///
    /// - Throws: `JSONError` for malformed input, a non-array, or nesting deeper than `maxDepth`.
    public static func arrayElements(_ bytes: UnsafeRawBufferPointer, maxDepth: Int = 64) throws(JSONError) -> [(range: Range<Int>, kind: JSONKind)] {
        var scanner = Scanner(bytes, maxDepth: maxDepth)
        scanner.skipWhitespace()
        try scanner.expectContainer(ASCII.openBracket, otherwise: "expected an array")
        var elements: [(range: Range<Int>, kind: JSONKind)] = []
        scanner.skipWhitespace()
        if scanner.peek() == ASCII.closeBracket {
            scanner.index += 1
        } else {
            while true {
                let start = scanner.index
                let kind = try scanner.value(depth: 1)
                elements.append((range: start..<scanner.index, kind: kind))
                scanner.skipWhitespace()
                if try scanner.separator(close: ASCII.closeBracket) { break }
                scanner.skipWhitespace()
            }
        }
        try scanner.expectEnd()
        return elements
    }

    /// Validates `bytes` as exactly one JSON value of any kind (used for "data").
    ///
    /// - Throws: `JSONError` for malformed input or nesting deeper than `maxDepth`.
    public static func validate(_ bytes: UnsafeRawBufferPointer, maxDepth: Int = 64) throws(JSONError) -> JSONKind {
        var scanner = Scanner(bytes, maxDepth: maxDepth)
        scanner.skipWhitespace()
        let kind = try scanner.value(depth: 0)
        try scanner.expectEnd()
        return kind
    }

    /// Quotes a key only when it reads like a field name (1 to 32 of `a-z` and `_`, the
    /// server's rule for unknown fields); anything else could be data a client put in the
    /// wrong place: a subject such as "cust-123" or a phone number must not come back.
    private static func duplicateKeyReason(_ key: String) -> String {
        let utf8 = key.utf8
        let isFieldName = (1...32).contains(utf8.count) && utf8.allSatisfy { byte in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || byte == UInt8(ascii: "_")
        }
        return isFieldName ? "duplicate key \"\(key)\"" : "duplicate key"
    }
}

// MARK: - Typed readers

/// Typed readers of a raw value (the bytes of one member or element, as the scanner returns them).
///
/// Whitespace around the value is allowed. A wrong type throws a `JSONError` whose
/// reason names the expected type ("expected a string"), never the value. Offsets are
/// relative to `raw` plus `offset`: pass the member's `range.lowerBound` to get offsets
/// in the whole body.
public enum JSONRead {
    /// Unescapes a JSON string into a `String` (for short, non-sensitive fields: category, reference).
    public static func string(_ raw: UnsafeRawBufferPointer, at offset: Int = 0) throws(JSONError) -> String {
        var scanner = Scanner(raw, base: offset)
        scanner.skipWhitespace()
        guard scanner.peek() == ASCII.quote else { throw scanner.error("expected a string") }
        let value = try scanner.stringValue()
        try scanner.expectEnd(otherwise: "expected a string")
        return value
    }

    /// Unescapes a JSON string straight into a wiped buffer (for the subject); never through `String`.
    ///
    /// The string is validated first (and its decoded length counted), then decoded
    /// directly into the `SensitiveBytes` storage: no intermediate copy exists.
    public static func sensitiveString(_ raw: UnsafeRawBufferPointer, at offset: Int = 0) throws(JSONError) -> SensitiveBytes {
        var scanner = Scanner(raw, base: offset)
        scanner.skipWhitespace()
        guard scanner.peek() == ASCII.quote else { throw scanner.error("expected a string") }
        let start = scanner.index
        let length = try scanner.string()
        try scanner.expectEnd(otherwise: "expected a string")
        return SensitiveBytes(count: length) { buffer in
            // The token was validated above, so decoding cannot fail.
            _ = unescapeValidated(raw, from: start, into: buffer.baseAddress)
        }
    }

    /// Reads an integer: no fraction, no exponent, within `Int64`.
    public static func int64(_ raw: UnsafeRawBufferPointer, at offset: Int = 0) throws(JSONError) -> Int64 {
        var scanner = Scanner(raw, base: offset)
        scanner.skipWhitespace()
        let start = scanner.index
        let notInteger = JSONError(offset: offset + start, reason: "expected an integer")
        var negative = false
        if scanner.peek() == ASCII.minus {
            negative = true
            scanner.index += 1
        }
        guard let first = scanner.peek(), ASCII.isDigit(first) else { throw notInteger }
        var magnitude: UInt64 = 0
        var overflow = false
        if first == ASCII.zero {
            scanner.index += 1
        } else {
            while let digit = scanner.peek(), ASCII.isDigit(digit) {
                let (times10, o1) = magnitude.multipliedReportingOverflow(by: 10)
                let (sum, o2) = times10.addingReportingOverflow(UInt64(digit - ASCII.zero))
                overflow = overflow || o1 || o2
                magnitude = sum
                scanner.index += 1
            }
        }
        // A fraction, an exponent, a leading zero or anything else after the digits.
        scanner.skipWhitespace()
        guard scanner.atEnd else { throw notInteger }
        let limit: UInt64 = negative ? UInt64(Int64.max) + 1 : UInt64(Int64.max)
        guard !overflow, magnitude <= limit else {
            throw JSONError(offset: offset + start, reason: "expected a 64-bit integer")
        }
        if negative {
            return magnitude == limit ? Int64.min : -Int64(magnitude)
        }
        return Int64(magnitude)
    }

    /// Reads `true` or `false`.
    public static func bool(_ raw: UnsafeRawBufferPointer, at offset: Int = 0) throws(JSONError) -> Bool {
        let trimmed = trimWhitespace(raw)
        if equals(raw, trimmed, ASCII.trueLiteral) { return true }
        if equals(raw, trimmed, ASCII.falseLiteral) { return false }
        throw JSONError(offset: offset + trimmed.lowerBound, reason: "expected a boolean")
    }

    /// Reads an array whose elements are all strings.
    public static func stringArray(_ raw: UnsafeRawBufferPointer, at offset: Int = 0) throws(JSONError) -> [String] {
        var scanner = Scanner(raw, base: offset)
        scanner.skipWhitespace()
        guard scanner.peek() == ASCII.openBracket else { throw scanner.error("expected an array of strings") }
        scanner.index += 1
        scanner.skipWhitespace()
        var strings: [String] = []
        if scanner.peek() == ASCII.closeBracket {
            scanner.index += 1
        } else {
            while true {
                guard scanner.peek() == ASCII.quote else {
                    throw scanner.error(scanner.atEnd ? "unterminated array" : "expected an array of strings")
                }
                strings.append(try scanner.stringValue())
                scanner.skipWhitespace()
                if try scanner.separator(close: ASCII.closeBracket) { break }
                scanner.skipWhitespace()
            }
        }
        try scanner.expectEnd(otherwise: "expected an array of strings")
        return strings
    }

    /// Whether the value is `null`.
    public static func isNull(_ raw: UnsafeRawBufferPointer) -> Bool {
        equals(raw, trimWhitespace(raw), ASCII.nullLiteral)
    }

    private static func trimWhitespace(_ raw: UnsafeRawBufferPointer) -> Range<Int> {
        var lower = 0
        var upper = raw.count
        while lower < upper, ASCII.isWhitespace(raw[lower]) { lower += 1 }
        while upper > lower, ASCII.isWhitespace(raw[upper - 1]) { upper -= 1 }
        return lower..<upper
    }

    private static func equals(_ raw: UnsafeRawBufferPointer, _ range: Range<Int>, _ literal: StaticString) -> Bool {
        guard range.count == literal.utf8CodeUnitCount else { return false }
        let text = literal.utf8Start
        for (position, index) in range.enumerated() where raw[index] != text[position] {
            return false
        }
        return true
    }
}

// MARK: - Writer

/// Builds compact JSON into a byte array; commas, colons and string escaping are managed for you.
///
/// Strings escape `"`, `\`, every control character as `\u00XX`, and U+2028/U+2029
/// (valid JSON, but line terminators to JavaScript). When the buffer must grow, the
/// old storage is wiped before it is released, so `wipe()` leaves no stale copy of a
/// payload behind (unless the caller copied `bytes` itself).
///
/// Usage errors (a value in an object without a key, unbalanced `end…`) are caught by
/// `assert` in debug builds.
public struct JSONWriter: Sendable {
    /// The JSON written so far.
    public private(set) var bytes: [UInt8]

    /// Whether the next value or key at this level needs a comma first.
    private var needsComma = false
    /// Whether a key was just written, so the next value follows its colon.
    private var afterKey = false
    /// Open containers (true: object), for misuse assertions only; commas need no stack
    /// because a closed container is always a non-first element of its parent.
    private var containers: [Bool] = []

    public init(capacity: Int = 256) {
        bytes = []
        bytes.reserveCapacity(Swift.max(capacity, 16))
    }

    public mutating func beginObject() {
        beginValue()
        append(ASCII.openBrace)
        containers.append(true)
        needsComma = false
    }

    public mutating func endObject() {
        assert(containers.last == true && !afterKey, "JSONWriter: endObject without a matching beginObject, or after a key")
        containers.removeLast()
        append(ASCII.closeBrace)
        needsComma = true
    }

    public mutating func beginArray() {
        beginValue()
        append(ASCII.openBracket)
        containers.append(false)
        needsComma = false
    }

    public mutating func endArray() {
        assert(containers.last == false, "JSONWriter: endArray without a matching beginArray")
        containers.removeLast()
        append(ASCII.closeBracket)
        needsComma = true
    }

    /// Writes a key inside an object; the next call must write its value.
    public mutating func key(_ k: String) {
        assert(containers.last == true && !afterKey, "JSONWriter: key outside an object or after another key")
        if needsComma { append(ASCII.comma) }
        var k = k
        k.withUTF8 { appendEscaped(UnsafeRawBufferPointer($0)) }
        append(ASCII.colon)
        afterKey = true
        needsComma = false
    }

    public mutating func string(_ s: String) {
        beginValue()
        var s = s
        s.withUTF8 { appendEscaped(UnsafeRawBufferPointer($0)) }
        needsComma = true
    }

    /// Writes UTF-8 bytes (e.g. a subject from `SensitiveBytes`) as a JSON string.
    ///
    /// Invalid UTF-8 is written as U+FFFD, one per offending byte, so the output is always valid JSON.
    public mutating func string(bytes: UnsafeRawBufferPointer) {
        beginValue()
        appendEscaped(bytes)
        needsComma = true
    }

    public mutating func int(_ v: Int64) {
        beginValue()
        if v < 0 { append(ASCII.minus) }
        appendDecimal(v.magnitude)
        needsComma = true
    }

    public mutating func uint(_ v: UInt64) {
        beginValue()
        appendDecimal(v)
        needsComma = true
    }

    public mutating func bool(_ v: Bool) {
        beginValue()
        appendLiteral(v ? ASCII.trueLiteral : ASCII.falseLiteral)
        needsComma = true
    }

    public mutating func null() {
        beginValue()
        appendLiteral(ASCII.nullLiteral)
        needsComma = true
    }

    /// Inserts already-valid JSON (e.g. a record's stored "data") verbatim.
    ///
    /// - Warning: Not validated here: pass only bytes that passed `JSONScanner.validate`.
    public mutating func raw(_ json: UnsafeRawBufferPointer) {
        beginValue()
        reserve(json.count)
        bytes.append(contentsOf: json)
        needsComma = true
    }

    /// Writes a key and a string value.
    public mutating func field(_ k: String, _ s: String) {
        key(k)
        string(s)
    }

    /// Writes a key and an integer value.
    public mutating func field(_ k: String, _ v: Int64) {
        key(k)
        int(v)
    }

    /// Writes a key and an unsigned integer value (disfavoured, so that a literal is an `Int64`).
    @_disfavoredOverload
    public mutating func field(_ k: String, _ v: UInt64) {
        key(k)
        uint(v)
    }

    /// Writes a key and a boolean value.
    public mutating func field(_ k: String, _ v: Bool) {
        key(k)
        bool(v)
    }

    /// Overwrites the buffer with zeros (for responses that held payload) and empties it.
    public mutating func wipe() {
        bytes.withUnsafeMutableBytes { secureZero($0) }
        bytes = []
        needsComma = false
        afterKey = false
        containers = []
    }

    // MARK: Internals

    private mutating func beginValue() {
        assert(containers.last != true || afterKey, "JSONWriter: a value inside an object needs a key first")
        if afterKey {
            afterKey = false
        } else if needsComma {
            append(ASCII.comma)
        }
    }

    /// Makes room for `extra` bytes, wiping the old storage if it has to move.
    private mutating func reserve(_ extra: Int) {
        let needed = bytes.count + extra
        guard needed > bytes.capacity else { return }
        var grown: [UInt8] = []
        grown.reserveCapacity(Swift.max(needed, bytes.capacity * 2))
        grown.append(contentsOf: bytes)
        bytes.withUnsafeMutableBytes { secureZero($0) }
        bytes = grown
    }

    private mutating func append(_ byte: UInt8) {
        reserve(1)
        bytes.append(byte)
    }

    private mutating func appendLiteral(_ literal: StaticString) {
        reserve(literal.utf8CodeUnitCount)
        bytes.append(contentsOf: UnsafeBufferPointer(start: literal.utf8Start, count: literal.utf8CodeUnitCount))
    }

    private mutating func appendDecimal(_ value: UInt64) {
        var digits = 1
        var rest = value / 10
        while rest > 0 {
            digits += 1
            rest /= 10
        }
        reserve(digits)
        let start = bytes.count
        bytes.append(contentsOf: repeatElement(ASCII.zero, count: digits))
        var value = value
        var index = start + digits - 1
        while true {
            bytes[index] = ASCII.zero + UInt8(value % 10)
            value /= 10
            if value == 0 { break }
            index -= 1
        }
    }

    /// Writes `utf8` as a quoted JSON string: sizes it first, so it grows at most once.
    private mutating func appendEscaped(_ utf8: UnsafeRawBufferPointer) {
        var length = 2
        var index = 0
        while index < utf8.count {
            let piece = StringPiece(utf8, at: index)
            length += piece.outputCount
            index += piece.inputCount
        }
        reserve(length)
        bytes.append(ASCII.quote)
        index = 0
        while index < utf8.count {
            let piece = StringPiece(utf8, at: index)
            switch piece {
            case .verbatim(let count):
                bytes.append(contentsOf: UnsafeRawBufferPointer(rebasing: utf8[index..<(index + count)]))
            case .short(let letter):
                bytes.append(ASCII.backslash)
                bytes.append(letter)
            case .unicode(let unit, _):
                bytes.append(ASCII.backslash)
                bytes.append(ASCII.lowerU)
                for shift in stride(from: 12, through: 0, by: -4) {
                    bytes.append(ASCII.hexDigits[Int((unit >> UInt16(shift)) & 0xF)])
                }
            }
            index += piece.inputCount
        }
        bytes.append(ASCII.quote)
    }
}

/// What the writer emits for the input at one position of a string.
private enum StringPiece {
    /// Bytes copied as they are (one ASCII byte or one valid multi-byte sequence).
    case verbatim(Int)
    /// A backslash and this letter (`\"`, `\\`).
    case short(UInt8)
    /// `\uXXXX`, replacing `consumed` input bytes.
    case unicode(UInt16, consumed: Int)

    init(_ utf8: UnsafeRawBufferPointer, at index: Int) {
        let byte = utf8[index]
        switch byte {
        case ASCII.quote, ASCII.backslash:
            self = .short(byte)
        case 0x00..<0x20:
            self = .unicode(UInt16(byte), consumed: 1)
        case 0x20..<0x80:
            self = .verbatim(1)
        default:
            guard let count = utf8SequenceLength(utf8, at: index) else {
                self = .unicode(0xFFFD, consumed: 1)
                return
            }
            // U+2028 LINE SEPARATOR and U+2029 PARAGRAPH SEPARATOR: E2 80 A8 / E2 80 A9.
            if count == 3, byte == 0xE2, utf8[index + 1] == 0x80, utf8[index + 2] & 0xFE == 0xA8 {
                self = .unicode(utf8[index + 2] == 0xA8 ? 0x2028 : 0x2029, consumed: 3)
            } else {
                self = .verbatim(count)
            }
        }
    }

    var inputCount: Int {
        switch self {
        case .verbatim(let count): count
        case .short: 1
        case .unicode(_, let consumed): consumed
        }
    }

    var outputCount: Int {
        switch self {
        case .verbatim(let count): count
        case .short: 2
        case .unicode: 6
        }
    }
}

// MARK: - Scanner internals

/// A position in the input and the validation steps; `base` is added to error offsets.
private struct Scanner {
    let bytes: UnsafeRawBufferPointer
    let base: Int
    let maxDepth: Int
    var index = 0

    init(_ bytes: UnsafeRawBufferPointer, maxDepth: Int = 0, base: Int = 0) {
        self.bytes = bytes
        self.maxDepth = maxDepth
        self.base = base
    }

    var atEnd: Bool { index >= bytes.count }

    func peek() -> UInt8? {
        index < bytes.count ? bytes[index] : nil
    }

    func error(_ reason: String, at offset: Int? = nil) -> JSONError {
        JSONError(offset: base + (offset ?? index), reason: reason)
    }

    mutating func skipWhitespace() {
        while index < bytes.count, ASCII.isWhitespace(bytes[index]) { index += 1 }
    }

    /// After the value and trailing whitespace, the input must end.
    func expectEnd(otherwise reason: String = "unexpected data after value") throws(JSONError) {
        var copy = self
        copy.skipWhitespace()
        guard copy.atEnd else { throw copy.error(reason) }
    }

    /// Consumes the opening bracket of a top-level container of the required type.
    mutating func expectContainer(_ open: UInt8, otherwise reason: String) throws(JSONError) {
        guard let byte = peek() else { throw error("unexpected end of input") }
        guard byte == open else { throw error(reason) }
        guard maxDepth >= 1 else { throw error(depthReason) }
        index += 1
    }

    var depthReason: String { "nesting deeper than \(maxDepth)" }

    /// Whitespace, then the ':' after a key.
    mutating func expectColon() throws(JSONError) {
        skipWhitespace()
        guard peek() == ASCII.colon else { throw error(atEnd ? "unexpected end of input" : "expected ':'") }
        index += 1
    }

    /// After an element: consumes ',' (false: another element follows) or `close` (true).
    mutating func separator(close: UInt8) throws(JSONError) -> Bool {
        let isObject = close == ASCII.closeBrace
        guard let byte = peek() else { throw error(isObject ? "unterminated object" : "unterminated array") }
        index += 1
        if byte == ASCII.comma { return false }
        if byte == close { return true }
        index -= 1
        throw error(isObject ? "expected ',' or '}'" : "expected ',' or ']'")
    }

    /// Validates one value starting at `index` (leading whitespace allowed), inside
    /// `depth` containers already open; leaves `index` just after it.
    ///
    /// Iterative: `stack` holds the open containers (true: object) so that nesting
    /// costs heap, not call frames.
    mutating func value(depth: Int) throws(JSONError) -> JSONKind {
        skipWhitespace()
        guard let first = peek() else { throw error("unexpected end of input") }
        var stack: [Bool] = []
        next: while true {
            // Here a value must start.
            skipWhitespace()
            guard let byte = peek() else { throw error("unexpected end of input") }
            switch byte {
            case ASCII.openBrace, ASCII.openBracket:
                guard depth + stack.count < maxDepth else { throw error(depthReason) }
                let isObject = byte == ASCII.openBrace
                stack.append(isObject)
                index += 1
                skipWhitespace()
                if peek() == (isObject ? ASCII.closeBrace : ASCII.closeBracket) {
                    index += 1
                    stack.removeLast()
                } else if isObject {
                    try memberKey()
                    continue next
                } else {
                    continue next
                }
            case ASCII.quote:
                _ = try string()
            case ASCII.minus, ASCII.zero...ASCII.nine:
                try number()
            case ASCII.lowerT:
                try literal(ASCII.trueLiteral)
            case ASCII.lowerF:
                try literal(ASCII.falseLiteral)
            case ASCII.lowerN:
                try literal(ASCII.nullLiteral)
            default:
                throw error("expected a value")
            }
            // A value ended: close containers until one wants another element.
            while let isObject = stack.last {
                skipWhitespace()
                if try separator(close: isObject ? ASCII.closeBrace : ASCII.closeBracket) {
                    stack.removeLast()
                    continue
                }
                if isObject {
                    skipWhitespace()
                    try memberKey()
                }
                continue next
            }
            break
        }
        return switch first {
        case ASCII.openBrace: .object
        case ASCII.openBracket: .array
        case ASCII.quote: .string
        case ASCII.lowerT, ASCII.lowerF: .bool
        case ASCII.lowerN: .null
        default: .number
        }
    }

    /// A key (a string) and its colon.
    mutating func memberKey() throws(JSONError) {
        guard peek() == ASCII.quote else { throw error(atEnd ? "unterminated object" : "expected a string key") }
        _ = try string()
        try expectColon()
    }

    /// Validates a string token at `index` (on its opening quote) and returns its decoded length in bytes.
    mutating func string() throws(JSONError) -> Int {
        index += 1
        var length = 0
        while true {
            guard index < bytes.count else { throw error("unterminated string") }
            let byte = bytes[index]
            switch byte {
            case ASCII.quote:
                index += 1
                return length
            case ASCII.backslash:
                length += try escape()
            case 0x00..<0x20:
                throw error("control character in string")
            case 0x20..<0x80:
                index += 1
                length += 1
            default:
                guard let count = utf8SequenceLength(bytes, at: index) else { throw error("invalid UTF-8") }
                index += count
                length += count
            }
        }
    }

    /// Validates the escape at `index` (on its backslash); returns how many UTF-8 bytes it decodes to.
    private mutating func escape() throws(JSONError) -> Int {
        let start = index
        guard index + 1 < bytes.count else { throw error("unterminated string", at: bytes.count) }
        switch bytes[index + 1] {
        case ASCII.quote, ASCII.backslash, ASCII.slash, ASCII.lowerB, ASCII.lowerF, ASCII.lowerN, ASCII.lowerR, ASCII.lowerT:
            index += 2
            return 1
        case ASCII.lowerU:
            guard let unit = hex4(bytes, at: index + 2) else { throw error("invalid \\u escape", at: start) }
            index += 6
            switch unit {
            case 0xD800...0xDBFF:
                guard index + 1 < bytes.count, bytes[index] == ASCII.backslash, bytes[index + 1] == ASCII.lowerU,
                      let low = hex4(bytes, at: index + 2), (0xDC00...0xDFFF).contains(low)
                else { throw error("unpaired surrogate escape", at: start) }
                index += 6
                return 4
            case 0xDC00...0xDFFF:
                throw error("unpaired surrogate escape", at: start)
            default:
                return unit < 0x80 ? 1 : unit < 0x800 ? 2 : 3
            }
        default:
            throw error("invalid escape", at: start)
        }
    }

    mutating func number() throws(JSONError) {
        if peek() == ASCII.minus { index += 1 }
        guard let first = peek(), ASCII.isDigit(first) else { throw error("expected a digit") }
        index += 1
        if first == ASCII.zero {
            if let next = peek(), ASCII.isDigit(next) { throw error("leading zero") }
        } else {
            skipDigits()
        }
        if peek() == ASCII.dot {
            index += 1
            guard let digit = peek(), ASCII.isDigit(digit) else { throw error("expected a digit") }
            skipDigits()
        }
        if peek() == ASCII.lowerE || peek() == ASCII.upperE {
            index += 1
            if peek() == ASCII.plus || peek() == ASCII.minus { index += 1 }
            guard let digit = peek(), ASCII.isDigit(digit) else { throw error("expected a digit") }
            skipDigits()
        }
    }

    private mutating func skipDigits() {
        while let byte = peek(), ASCII.isDigit(byte) { index += 1 }
    }

    mutating func literal(_ text: StaticString) throws(JSONError) {
        let count = text.utf8CodeUnitCount
        guard bytes.count - index >= count else { throw error("invalid literal") }
        for offset in 0..<count where bytes[index + offset] != text.utf8Start[offset] {
            throw error("invalid literal")
        }
        index += count
    }

    /// Validates a string token (at `index`) and decodes it into a `String`, with no intermediate buffer.
    mutating func stringValue() throws(JSONError) -> String {
        let start = index
        let length = try string()
        let bytes = bytes
        return String(unsafeUninitializedCapacity: length) { buffer in
            unescapeValidated(bytes, from: start, into: UnsafeMutableRawPointer(buffer.baseAddress))
        }
    }
}

/// Decodes the string token at `start` (its opening quote), already validated by
/// `Scanner.string()`, into `output`; returns the number of bytes written.
///
/// `output` must hold the length `Scanner.string()` returned; nil writes nothing.
private func unescapeValidated(_ input: UnsafeRawBufferPointer, from start: Int, into output: UnsafeMutableRawPointer?) -> Int {
    guard let output else { return 0 }
    var index = start + 1
    var written = 0
    func put(_ byte: UInt8) {
        output.storeBytes(of: byte, toByteOffset: written, as: UInt8.self)
        written += 1
    }
    while true {
        let byte = input[index]
        if byte == ASCII.quote { return written }
        guard byte == ASCII.backslash else {
            put(byte)
            index += 1
            continue
        }
        let letter = input[index + 1]
        index += 2
        switch letter {
        case ASCII.lowerB: put(0x08)
        case ASCII.lowerF: put(0x0C)
        case ASCII.lowerN: put(0x0A)
        case ASCII.lowerR: put(0x0D)
        case ASCII.lowerT: put(0x09)
        case ASCII.lowerU:
            var scalar = UInt32(hex4(input, at: index) ?? 0)
            index += 4
            if (0xD800...0xDBFF).contains(scalar) {
                let low = UInt32(hex4(input, at: index + 2) ?? 0xDC00)
                index += 6
                scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
            }
            switch scalar {
            case ..<0x80:
                put(UInt8(scalar))
            case ..<0x800:
                put(0xC0 | UInt8(scalar >> 6))
                put(0x80 | UInt8(scalar & 0x3F))
            case ..<0x10000:
                put(0xE0 | UInt8(scalar >> 12))
                put(0x80 | UInt8((scalar >> 6) & 0x3F))
                put(0x80 | UInt8(scalar & 0x3F))
            default:
                put(0xF0 | UInt8(scalar >> 18))
                put(0x80 | UInt8((scalar >> 12) & 0x3F))
                put(0x80 | UInt8((scalar >> 6) & 0x3F))
                put(0x80 | UInt8(scalar & 0x3F))
            }
        default:
            put(letter)  // '"', '\\', '/'
        }
    }
}

/// Four hex digits at `index` as a UTF-16 code unit, or nil.
private func hex4(_ bytes: UnsafeRawBufferPointer, at index: Int) -> UInt16? {
    guard index >= 0, bytes.count - index >= 4 else { return nil }
    var unit: UInt16 = 0
    for offset in 0..<4 {
        let byte = bytes[index + offset]
        let nibble: UInt8
        switch byte {
        case ASCII.zero...ASCII.nine: nibble = byte - ASCII.zero
        case UInt8(ascii: "a")...UInt8(ascii: "f"): nibble = byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): nibble = byte - UInt8(ascii: "A") + 10
        default: return nil
        }
        unit = unit << 4 | UInt16(nibble)
    }
    return unit
}

/// The length of the well-formed UTF-8 sequence starting at `index` (a non-ASCII lead
/// byte), or nil: Unicode Table 3-7, which excludes overlongs, surrogates and
/// code points above U+10FFFF.
private func utf8SequenceLength(_ bytes: UnsafeRawBufferPointer, at index: Int) -> Int? {
    let lead = bytes[index]
    let count: Int
    var secondRange: ClosedRange<UInt8> = 0x80...0xBF
    switch lead {
    case 0xC2...0xDF: count = 2
    case 0xE0: count = 3; secondRange = 0xA0...0xBF
    case 0xE1...0xEC, 0xEE...0xEF: count = 3
    case 0xED: count = 3; secondRange = 0x80...0x9F
    case 0xF0: count = 4; secondRange = 0x90...0xBF
    case 0xF1...0xF3: count = 4
    case 0xF4: count = 4; secondRange = 0x80...0x8F
    default: return nil
    }
    guard bytes.count - index >= count, secondRange.contains(bytes[index + 1]) else { return nil }
    for offset in 2..<count where bytes[index + offset] & 0xC0 != 0x80 {
        return nil
    }
    return count
}

/// The bytes of JSON's syntax.
private enum ASCII {
    static let quote = UInt8(ascii: "\"")
    static let backslash = UInt8(ascii: "\\")
    static let slash = UInt8(ascii: "/")
    static let openBrace = UInt8(ascii: "{")
    static let closeBrace = UInt8(ascii: "}")
    static let openBracket = UInt8(ascii: "[")
    static let closeBracket = UInt8(ascii: "]")
    static let comma = UInt8(ascii: ",")
    static let colon = UInt8(ascii: ":")
    static let minus = UInt8(ascii: "-")
    static let plus = UInt8(ascii: "+")
    static let dot = UInt8(ascii: ".")
    static let zero = UInt8(ascii: "0")
    static let nine = UInt8(ascii: "9")
    static let lowerB = UInt8(ascii: "b")
    static let lowerE = UInt8(ascii: "e")
    static let upperE = UInt8(ascii: "E")
    static let lowerF = UInt8(ascii: "f")
    static let lowerN = UInt8(ascii: "n")
    static let lowerR = UInt8(ascii: "r")
    static let lowerT = UInt8(ascii: "t")
    static let lowerU = UInt8(ascii: "u")
    static let trueLiteral: StaticString = "true"
    static let falseLiteral: StaticString = "false"
    static let nullLiteral: StaticString = "null"
    static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    static func isDigit(_ byte: UInt8) -> Bool {
        byte >= zero && byte <= nine
    }

    static func isWhitespace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D
    }
}
