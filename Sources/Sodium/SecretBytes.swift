import CSodium

/// A secret over sodium_malloc memory (guard pages, mlock), wiped and freed (sodium_free) on deinit.
///
/// `~Copyable`: never copied implicitly (use `copy()`), not `Codable`, and it cannot
/// be printed, interpolated or passed as `Any` — a noncopyable type cannot conform
/// to `CustomStringConvertible` or be boxed, which is the point. Bytes are reachable
/// only inside `withUnsafeBytes` / `withUnsafeMutableBytes`.
///
/// The memory comes from `sodium_malloc`: guard pages on both sides, a canary
/// checked by `sodium_free`, `mlock` (best effort, subject to `RLIMIT_MEMLOCK`) and
/// `MADV_DONTDUMP`. Between mutations the pages are kept read-only
/// (`sodium_mprotect_readonly`), so a stray write traps instead of corrupting a key.
/// - Warning: Do not let a pointer escape the `withUnsafe…` closures, and do not copy
///   the bytes into `[UInt8]`, `Data` or `String`: those are neither guarded nor wiped.
public struct SecretBytes: ~Copyable, @unchecked Sendable {
    // @unchecked Sendable: the value is uniquely owned (~Copyable), the pointer is
    // never shared, and mutation needs `mutating` (exclusive) access; concurrent
    // borrows only read, which read-only pages allow.

    /// Start of the `sodium_malloc` region (not aligned: libsodium places the
    /// buffer against the trailing guard page).
    let base: UnsafeMutableRawPointer

    /// The number of secret bytes.
    public let count: Int

    /// A scratch buffer rewritten on every use stays writable: toggling page protection
    /// costs two mprotect calls, each a TLB shootdown across every core.
    let alwaysWritable: Bool

    /// Allocates `count` bytes with `sodium_malloc` and runs `initialize` on them
    /// before the pages are made read-only.
    private init(allocating count: Int, writable: Bool = false, initialize: (UnsafeMutableRawBufferPointer) -> Void) throws {
        try Sodium.initialize()
        guard count >= 0 else {
            throw SodiumError.invalidLength("count", expected: 0, actual: count)
        }
        // libsodium: sodium_malloc returns NULL (errno ENOMEM) when the pages
        // cannot be mapped; it never aborts for a size we can pass.
        guard let base = sodium_malloc(count) else {
            throw SodiumError.allocationFailure
        }
        initialize(UnsafeMutableRawBufferPointer(start: base, count: count))
        if !writable { Self.protectReadOnly(base) }
        self.base = base
        self.count = count
        self.alwaysWritable = writable
    }

    /// `count` zero bytes in guarded memory (guard pages, mlock, wiped on release) that
    /// stay writable: for a scratch buffer the owner rewrites on every use, such as the
    /// writer thread's data-key buffer, where read-only toggling would cost two mprotect
    /// calls (and TLB shootdowns) per record.
    public static func scratch(count: Int) throws -> SecretBytes {
        try SecretBytes(allocating: count, writable: true) { buffer in secureZero(buffer) }
    }

    /// Allocates `count` zero bytes in guarded memory.
    ///
    /// `sodium_malloc` fills new memory with 0xdb; it is wiped to zero here.
    /// - Throws: `.invalidLength("count", …)` when `count` is negative,
    ///   `.allocationFailure` when `sodium_malloc` fails.
    public init(count: Int) throws {
        try self.init(allocating: count) { buffer in
            secureZero(buffer)
        }
    }

    /// `count` random bytes (`randombytes_buf`) written straight into guarded memory.
    ///
    /// Use for keys: they never exist outside guarded pages.
    /// - Throws: `.invalidLength("count", …)` when `count` is negative,
    ///   `.allocationFailure` when `sodium_malloc` fails.
    public static func random(count: Int) throws -> SecretBytes {
        try SecretBytes(allocating: count) { buffer in
            Random.fill(buffer)
        }
    }

    /// Copies `bytes` into guarded memory (for reading a key file, etc.).
    ///
    /// - Warning: The source is not touched: the caller must wipe it
    ///   (`secureZero`) as soon as this returns.
    /// - Throws: `.allocationFailure` when `sodium_malloc` fails.
    public init(copying bytes: UnsafeRawBufferPointer) throws {
        try self.init(allocating: bytes.count) { buffer in
            if let source = bytes.baseAddress, let destination = buffer.baseAddress {
                destination.copyMemory(from: source, byteCount: bytes.count)
            }
        }
    }

    deinit {
        // libsodium: sodium_free makes the pages writable again, checks the canary
        // (aborting on an overflow), zeroes the memory, munlocks and unmaps it.
        sodium_free(base)
    }

    /// Calls `body` with the secret bytes.
    ///
    /// `R` may be noncopyable, so `body` can build another `SecretBytes` from the bytes.
    /// - Warning: The buffer is valid only during `body`; do not store it or copy
    ///   its bytes into non-guarded memory.
    public func withUnsafeBytes<R: ~Copyable, E: Error>(
        _ body: (UnsafeRawBufferPointer) throws(E) -> R
    ) throws(E) -> R {
        try body(UnsafeRawBufferPointer(start: base, count: count))
    }

    /// Calls `body` with the secret bytes writable (the pages are read-only otherwise).
    ///
    /// - Warning: The buffer is valid only during `body`; do not store it.
    public mutating func withUnsafeMutableBytes<R: ~Copyable, E: Error>(
        _ body: (UnsafeMutableRawBufferPointer) throws(E) -> R
    ) throws(E) -> R {
        if alwaysWritable { return try body(UnsafeMutableRawBufferPointer(start: base, count: count)) }
        Self.protectReadWrite(base)
        defer { Self.protectReadOnly(base) }
        return try body(UnsafeMutableRawBufferPointer(start: base, count: count))
    }

    /// An independent copy in new guarded memory.
    ///
    /// - Throws: `.allocationFailure` when `sodium_malloc` fails.
    public func copy() throws -> SecretBytes {
        try SecretBytes(copying: UnsafeRawBufferPointer(start: base, count: count))
    }

    /// Constant time (sodium_memcmp); false when counts differ.
    ///
    /// The time depends on the counts, never on the contents.
    public func constantTimeEquals(_ other: borrowing SecretBytes) -> Bool {
        sodiumMemoryEquals(
            UnsafeRawBufferPointer(start: base, count: count),
            UnsafeRawBufferPointer(start: other.base, count: other.count)
        )
    }

    /// Makes the region read-only.
    ///
    /// A failure would leave the pages writable, which is safe, but mprotect on our
    /// own sodium_malloc mapping cannot fail short of a bug: trap to find it.
    private static func protectReadOnly(_ base: UnsafeMutableRawPointer) {
        let status = sodium_mprotect_readonly(base)
        precondition(status == 0, "sodium_mprotect_readonly failed")
    }

    /// Makes the region writable; trapping here is better than faulting on the write.
    private static func protectReadWrite(_ base: UnsafeMutableRawPointer) {
        let status = sodium_mprotect_readwrite(base)
        precondition(status == 0, "sodium_mprotect_readwrite failed")
    }
}
