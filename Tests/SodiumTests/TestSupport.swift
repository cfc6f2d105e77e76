import Sodium

/// Decodes a hex string (test vectors only; panics on malformed input).
func hex(_ string: String) -> [UInt8] {
    let digits = Array(string.utf8)
    precondition(digits.count % 2 == 0, "odd hex length")
    func nibble(_ c: UInt8) -> UInt8 {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: preconditionFailure("bad hex digit")
        }
    }
    return stride(from: 0, to: digits.count, by: 2).map { nibble(digits[$0]) << 4 | nibble(digits[$0 + 1]) }
}

/// Encodes bytes as lowercase hex.
func hexString(_ bytes: some Sequence<UInt8>) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    for byte in bytes {
        out.append(digits[Int(byte >> 4)])
        out.append(digits[Int(byte & 0x0f)])
    }
    return String(decoding: out, as: UTF8.self)
}

/// A test key (test material only: a real key never passes through [UInt8]).
func key(_ bytes: [UInt8]) throws -> SecretBytes {
    try withCopy(of: bytes) { try SecretBytes(copying: $0) }
}

/// The secret's bytes, copied out for assertions (tests only).
func exposed(_ secret: borrowing SecretBytes) -> [UInt8] {
    secret.withUnsafeBytes { Array($0) }
}

/// Seals with `AEAD.seal` over arrays.
func seal(_ plaintext: [UInt8], key: borrowing SecretBytes, ad: [UInt8]) throws -> [UInt8] {
    try plaintext.withUnsafeBytes { p in
        try ad.withUnsafeBytes { a in
            try AEAD.seal(p, key: key, associatedData: a)
        }
    }
}

/// Opens with `AEAD.open` over arrays.
func open(_ box: [UInt8], key: borrowing SecretBytes, ad: [UInt8]) throws -> [UInt8] {
    var output = [UInt8](repeating: 0, count: max(0, box.count - AEAD.overhead))
    try box.withUnsafeBytes { b in
        try ad.withUnsafeBytes { a in
            try output.withUnsafeMutableBytes { o in
                try AEAD.open(b, key: key, associatedData: a, into: o)
            }
        }
    }
    return output
}

/// Whether `haystack` contains `needle` as a contiguous run.
func contains(_ haystack: [UInt8], _ needle: ArraySlice<UInt8>) -> Bool {
    guard needle.count <= haystack.count else { return false }
    for start in 0...(haystack.count - needle.count) where haystack[start..<start + needle.count].elementsEqual(needle) {
        return true
    }
    return false
}

/// Runs `body` on a heap copy of `bytes`, so it can return a noncopyable value
/// (Array's `withUnsafeBytes` requires a copyable result).
func withCopy<R: ~Copyable>(of bytes: [UInt8], _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 1)
    defer { buffer.deallocate() }
    buffer.copyBytes(from: bytes)
    return try body(UnsafeRawBufferPointer(rebasing: buffer[0..<bytes.count]))
}

/// `AEAD.openSecret` over arrays.
func openSecret(_ box: [UInt8], key: borrowing SecretBytes, ad: [UInt8]) throws -> SecretBytes {
    try withCopy(of: box) { b in
        try withCopy(of: ad) { a in
            try AEAD.openSecret(b, key: key, associatedData: a)
        }
    }
}

/// Whether two secrets are equal (constant time); a free function so that
/// `#expect` does not try to capture the noncopyable operands.
func same(_ a: borrowing SecretBytes, _ b: borrowing SecretBytes) -> Bool {
    a.constantTimeEquals(b)
}
