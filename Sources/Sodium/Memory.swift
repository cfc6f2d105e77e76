import CSodium

/// Constant-time comparison of two buffers (sodium_memcmp); false when counts differ.
///
/// libsodium: `sodium_memcmp` runs in time independent of the contents, for
/// comparing secrets (MACs, tokens, keys). The counts are not secret: a count
/// mismatch returns early.
public func constantTimeEquals(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
    sodiumMemoryEquals(a, b)
}

/// Constant-time comparison of two byte arrays (sodium_memcmp); false when counts differ.
public func constantTimeEquals(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    a.withUnsafeBytes { a in
        b.withUnsafeBytes { b in
            sodiumMemoryEquals(a, b)
        }
    }
}

/// Wipes a buffer with sodium_memzero, which the compiler may not optimize away.
///
/// - Warning: Wipes only this buffer. A `[UInt8]` or `Data` may have left copies
///   behind when it grew or was copied on write; keep secrets in `SecretBytes`.
public func secureZero(_ buffer: UnsafeMutableRawBufferPointer) {
    guard let base = buffer.baseAddress, buffer.count > 0 else { return }
    sodium_memzero(base, buffer.count)
}

/// The shared body of every constant-time comparison; internal because the
/// module's name is shadowed by the `Sodium` enum, so `Sodium.constantTimeEquals`
/// cannot name the free function from inside a type.
func sodiumMemoryEquals(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
    guard a.count == b.count else { return false }
    guard a.count > 0, let pa = a.baseAddress, let pb = b.baseAddress else { return true }
    Sodium.initializeOrTrap()
    // libsodium: returns 0 if the len bytes at b1 and b2 are equal, -1 otherwise.
    return sodium_memcmp(pa, pb, a.count) == 0
}
