/// A complete HTTP response: status, header fields in the order received, and the decoded body
/// (chunked framing removed; trailer fields are read and validated, then dropped).
public struct HTTPResponse: Sendable {
    public let status: Int
    /// Field names exactly as received (not lowercased); values without surrounding whitespace.
    public let headers: [(name: String, value: String)]
    public let body: [UInt8]

    public init(status: Int, headers: [(name: String, value: String)], body: [UInt8]) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// The value of the first field called `name`, compared ASCII case-insensitively; `nil` if absent.
    public func header(_ name: String) -> String? {
        for field in headers where asciiCaseInsensitiveEquals(field.name, name) {
            return field.value
        }
        return nil
    }
}

/// ASCII case-insensitive equality (field names are ASCII tokens; no Unicode case folding wanted).
func asciiCaseInsensitiveEquals(_ a: String, _ b: String) -> Bool {
    var left = a.utf8.makeIterator()
    var right = b.utf8.makeIterator()
    while true {
        switch (left.next(), right.next()) {
        case (nil, nil):
            return true
        case let (x?, y?):
            if asciiLowercase(x) != asciiLowercase(y) { return false }
        default:
            return false
        }
    }
}

@inline(__always)
func asciiLowercase(_ byte: UInt8) -> UInt8 {
    (byte >= 0x41 && byte <= 0x5A) ? byte | 0x20 : byte
}
