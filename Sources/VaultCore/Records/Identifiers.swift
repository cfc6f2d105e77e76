public import Sodium

/// A tenant (client company): slug `[a-z0-9-]{1,63}`.
public struct TenantID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let slug: String

    public init(_ slug: String) throws {
        let u = Array(slug.utf8)
        guard (1...63).contains(u.count),
              u.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2d })
        else { throw VaultError.invalidArgument("tenant id must match [a-z0-9-]{1,63}") }
        self.slug = slug
    }

    public var description: String { slug }
    public static func < (a: TenantID, b: TenantID) -> Bool { a.slug < b.slug }
}

/// A record id: 128 bits, time-ordered (ULID layout: 48-bit milliseconds since the
/// epoch, then 80 random bits), written as 26 Crockford base32 characters.
/// Time order keeps LMDB appends at the right edge of the B-tree (docs/architecture.md).
public struct RecordID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let bytes: [UInt8]  // 16

    init(bytes: [UInt8]) {
        precondition(bytes.count == 16)
        self.bytes = bytes
    }

    /// A fresh id for a record created at `milliseconds`.
    static func generate(milliseconds: Int64) -> RecordID {
        var b = Array<UInt8>.be(UInt64(milliseconds) << 16)
        b.removeLast(2)
        b += Random.bytes(count: 10)
        return RecordID(bytes: b)
    }

    /// The creation time encoded in the id, in milliseconds.
    public var milliseconds: Int64 {
        Int64(bytes[0..<6].reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
    }

    private static let alphabet = Array("0123456789ABCDEFGHJKMNPQRSTVWXYZ".utf8)

    /// Parses the 26-character Crockford base32 form (case-insensitive; I/L read as 1, O as 0).
    public init?(_ text: String) {
        let u = Array(text.utf8)
        guard u.count == 26 else { return nil }
        var value: (hi: UInt64, lo: UInt64) = (0, 0)
        for (i, c) in u.enumerated() {
            guard let d = RecordID.decodeDigit(c) else { return nil }
            // The first character carries only 3 bits (26 × 5 = 130).
            if i == 0 && d > 7 { return nil }
            value.hi = value.hi << 5 | value.lo >> 59
            value.lo = value.lo << 5 | UInt64(d)
        }
        self.bytes = .be(value.hi) + .be(value.lo)
    }

    private static func decodeDigit(_ c: UInt8) -> UInt8? {
        var c = c
        if c >= 0x61 && c <= 0x7a { c -= 0x20 }
        switch c {
        case UInt8(ascii: "O"): return 0
        case UInt8(ascii: "I"), UInt8(ascii: "L"): return 1
        default: return alphabet.firstIndex(of: c).map(UInt8.init)
        }
    }

    public var description: String {
        var hi = bytes[0..<8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        var lo = bytes[8..<16].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        var out = [UInt8](repeating: 0, count: 26)
        for i in stride(from: 25, through: 0, by: -1) {
            out[i] = RecordID.alphabet[Int(lo & 31)]
            lo = lo >> 5 | (hi & 31) << 59
            hi >>= 5
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func < (a: RecordID, b: RecordID) -> Bool { a.bytes.lexicographicallyPrecedes(b.bytes) }
}

/// The three classes of personal data (docs/architecture.md, Data model).
public enum DataCategory: String, CaseIterable, Sendable, Codable, Hashable {
    case personal
    case nonPersonal = "non_personal"
    case privacyRelated = "privacy_related"

    var code: UInt8 {
        switch self {
        case .personal: 1
        case .nonPersonal: 2
        case .privacyRelated: 3
        }
    }

    init(code: UInt8) throws {
        guard let c = DataCategory.allCases.first(where: { $0.code == code }) else {
            throw VaultError.corrupt("unknown category code \(code)")
        }
        self = c
    }

    public init(parsing text: String) throws {
        guard let c = DataCategory(rawValue: text) else {
            throw VaultError.invalidArgument("category must be one of personal, non_personal, privacy_related")
        }
        self = c
    }
}

/// Where an interaction came from.
public enum Channel: String, CaseIterable, Sendable, Codable, Hashable {
    case phone, email, chat, sms, web, other

    var code: UInt8 { UInt8(Channel.allCases.firstIndex(of: self)! + 1) }

    init(code: UInt8) throws {
        guard code >= 1, Int(code) <= Channel.allCases.count else {
            throw VaultError.corrupt("unknown channel code \(code)")
        }
        self = Channel.allCases[Int(code) - 1]
    }

    public init(parsing text: String) throws {
        guard let c = Channel(rawValue: text) else {
            throw VaultError.invalidArgument("channel must be one of phone, email, chat, sms, web, other")
        }
        self = c
    }
}

/// A tenant-supplied subject identifier (customer number, phone number…). Personal data:
/// kept in wiped memory, never stored in clear (only its keyed tag is), never printed.
public struct Subject: Sendable, CustomStringConvertible {
    public static let maxBytes = 1024
    public let bytes: SensitiveBytes

    public init(_ text: String) throws {
        var utf8 = Array(text.utf8)
        defer { utf8.withUnsafeMutableBytes { secureZero($0) } }
        try self.init(bytes: SensitiveBytes(copying: utf8))
    }

    public init(bytes: SensitiveBytes) throws {
        guard (1...Subject.maxBytes).contains(bytes.count) else {
            throw VaultError.invalidArgument("subject must be 1 to \(Subject.maxBytes) bytes")
        }
        self.bytes = bytes
    }

    public var description: String { "Subject(<redacted>)" }
}

/// Who performs an operation, as written in the audit log: a token id, or a named
/// system actor such as `system:sweeper`. Never a token itself.
public struct Actor: Sendable, Hashable, CustomStringConvertible {
    public let id: String
    public init(_ id: String) { self.id = id }
    public var description: String { id }
    public static let system = Actor("system")
}
