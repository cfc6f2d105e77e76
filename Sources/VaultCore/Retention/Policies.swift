/// The retention rules a tenant sets (`PUT /v1/retention`) and the contracts that extend them
/// (`POST /v1/retention/extensions`), with their stored encodings.
public struct RetentionPolicy: Equatable, Sendable {
    /// Seconds a record is kept after collection, for categories without an override.
    public var defaultSeconds: Int64
    public var categories: [DataCategory: Int64]

    public static let standardMaximum: Int64 = 92 * 86_400
    public static let standard = RetentionPolicy(defaultSeconds: standardMaximum, categories: [:])

    public init(defaultSeconds: Int64, categories: [DataCategory: Int64]) {
        self.defaultSeconds = defaultSeconds
        self.categories = categories
    }

    public func seconds(for category: DataCategory) -> Int64 { categories[category] ?? defaultSeconds }

    static let format: UInt8 = 1

    func encode() -> [UInt8] {
        var w = ByteWriter()
        w.u8(Self.format)
        w.i64(defaultSeconds)
        let entries = categories.sorted { $0.key.code < $1.key.code }
        w.u8(UInt8(entries.count))
        for (c, s) in entries { w.u8(c.code); w.i64(s) }
        return w.bytes
    }

    static func decode(_ b: UnsafeRawBufferPointer) throws -> RetentionPolicy {
        var r = ByteReader(b, what: "retention policy")
        try r.format(format)
        var p = RetentionPolicy(defaultSeconds: try r.i64(), categories: [:])
        for _ in 0..<(try r.u8()) { p.categories[try DataCategory(code: try r.u8())] = try r.i64() }
        try r.end()
        return p
    }
}

/// A tenant's recorded contract allowing retention longer than the standard maximum.
public struct RetentionExtension: Equatable, Sendable {
    public enum Purpose: String, Sendable, CaseIterable, Codable {
        case quality, legal, other
        var code: UInt8 { UInt8(Purpose.allCases.firstIndex(of: self)! + 1) }
    }
    public var id: String            // 26-char id (RecordID text form, reused as a time-ordered id)
    public var purpose: Purpose
    public var reference: String
    public var retentionSeconds: Int64
    public var categories: [DataCategory]
    public var until: Int64          // ms
    public var createdAt: Int64
    public var endedAt: Int64?

    /// Active at `now`: started, not ended, not past `until`.
    public func isActive(at now: Int64) -> Bool { endedAt == nil && now < until && now >= createdAt }

    static let format: UInt8 = 1

    func encode() -> [UInt8] {
        var w = ByteWriter()
        w.u8(Self.format)
        w.u8(purpose.code)
        w.string(reference)
        w.i64(retentionSeconds)
        w.u8(UInt8(categories.count))
        for c in categories { w.u8(c.code) }
        w.i64(until)
        w.i64(createdAt)
        w.i64(endedAt ?? 0)
        return w.bytes
    }

    static func decode(_ b: UnsafeRawBufferPointer, id: RecordID) throws -> RetentionExtension {
        var r = ByteReader(b, what: "retention extension")
        try r.format(format)
        let p = try r.u8()
        guard p >= 1, Int(p) <= Purpose.allCases.count else { throw VaultError.corrupt("retention extension: bad purpose") }
        let reference = try r.string()
        let retention = try r.i64()
        var cats: [DataCategory] = []
        for _ in 0..<(try r.u8()) { cats.append(try DataCategory(code: try r.u8())) }
        let until = try r.i64(), created = try r.i64(), ended = try r.i64()
        try r.end()
        return RetentionExtension(id: id.description, purpose: Purpose.allCases[Int(p) - 1], reference: reference,
                                  retentionSeconds: retention, categories: cats, until: until, createdAt: created,
                                  endedAt: ended == 0 ? nil : ended)
    }
}
