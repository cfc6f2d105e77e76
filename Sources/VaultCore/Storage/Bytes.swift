/// Big-endian encoding of the stored formats. Every stored blob starts with a 1-byte
/// format version, so a later release can read (or refuse) what an earlier one wrote.
struct ByteWriter {
    private(set) var bytes: [UInt8]

    init(capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.bigEndian) { bytes.append(contentsOf: $0) } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.bigEndian) { bytes.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.bigEndian) { bytes.append(contentsOf: $0) } }
    mutating func i64(_ v: Int64) { u64(UInt64(bitPattern: v)) }
    mutating func raw(_ v: [UInt8]) { bytes.append(contentsOf: v) }
    mutating func raw(_ v: UnsafeRawBufferPointer) { bytes.append(contentsOf: v) }
    /// A length-prefixed (u16) byte string.
    mutating func field(_ v: [UInt8]) {
        precondition(v.count <= Int(UInt16.max))
        u16(UInt16(v.count))
        raw(v)
    }
    mutating func string(_ s: String) { field(Array(s.utf8)) }
}

/// Reads what `ByteWriter` wrote; any shortfall is `VaultError.corrupt` naming `what`.
struct ByteReader {
    private let bytes: UnsafeRawBufferPointer
    private(set) var offset = 0
    private let what: String

    init(_ bytes: UnsafeRawBufferPointer, what: String) {
        self.bytes = bytes
        self.what = what
    }

    var remaining: Int { bytes.count - offset }

    private mutating func take(_ n: Int) throws -> UnsafeRawBufferPointer {
        guard n >= 0, remaining >= n else { throw VaultError.corrupt("\(what): truncated") }
        defer { offset += n }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + n])
    }

    mutating func u8() throws -> UInt8 { try take(1)[0] }
    mutating func u16() throws -> UInt16 { try take(2).reduce(0) { $0 << 8 | UInt16($1) } }
    mutating func u32() throws -> UInt32 { try take(4).reduce(0) { $0 << 8 | UInt32($1) } }
    mutating func u64() throws -> UInt64 { try take(8).reduce(0) { $0 << 8 | UInt64($1) } }
    mutating func i64() throws -> Int64 { Int64(bitPattern: try u64()) }
    mutating func raw(_ n: Int) throws -> [UInt8] { Array(try take(n)) }
    /// Lends `n` bytes without copying (valid as long as the underlying buffer).
    mutating func slice(_ n: Int) throws -> UnsafeRawBufferPointer { try take(n) }
    mutating func field() throws -> [UInt8] { try raw(Int(try u16())) }
    mutating func string() throws -> String {
        let b = try field()
        guard let s = String(validating: b, as: UTF8.self) else { throw VaultError.corrupt("\(what): bad text") }
        return s
    }
    /// Reads the leading format byte and refuses versions this build does not know.
    mutating func format(_ supported: UInt8) throws {
        let v = try u8()
        guard v == supported else { throw VaultError.corrupt("\(what): format version \(v) is not supported") }
    }
    func end() throws {
        guard remaining == 0 else { throw VaultError.corrupt("\(what): trailing bytes") }
    }
}

extension Array where Element == UInt8 {
    static func be<T: FixedWidthInteger>(_ v: T) -> [UInt8] {
        Swift.withUnsafeBytes(of: v.bigEndian) { Array($0) }
    }
    var hex: String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(count * 2)
        for b in self { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 0xF)]) }
        return String(decoding: out, as: UTF8.self)
    }
    init?(hex: String) {
        let u = Array(hex.utf8)
        guard u.count % 2 == 0 else { return nil }
        func nib(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
            default: nil
            }
        }
        var out = [UInt8]()
        out.reserveCapacity(u.count / 2)
        var i = 0
        while i < u.count {
            guard let h = nib(u[i]), let l = nib(u[i + 1]) else { return nil }
            out.append(h << 4 | l)
            i += 2
        }
        self = out
    }
}
