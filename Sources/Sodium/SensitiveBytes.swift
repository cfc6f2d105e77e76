/// Heap bytes wiped with sodium_memzero when released: for record plaintext.
///
/// Plain malloc, not guarded pages: those cost several syscalls and whole pages
/// per allocation, too much per record. Immutable once built.
///
/// `description` and `debugDescription` are redacted:
/// "SensitiveBytes(<redacted>, N bytes)", and the mirror has no children, so
/// `print`, string interpolation, `dump` and debuggers' summaries show no content.
/// - Warning: Not `mlock`ed and without guard pages: it may be swapped out (use
///   encrypted swap or none). Keys belong in `SecretBytes`. Copying the bytes out of
///   `withUnsafeBytes` into `[UInt8]`, `Data` or `String` defeats the wipe.
public final class SensitiveBytes: @unchecked Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    // @unchecked Sendable: the storage is written only inside the initializers, then
    // read-only until deinit, so concurrent readers cannot race with a writer.

    private let base: UnsafeMutableRawPointer

    /// The number of bytes.
    public let count: Int

    /// Allocates `count` zeroed bytes and lets `body` fill them.
    ///
    /// If `body` throws, the bytes are wiped and freed before the error is rethrown.
    /// - Warning: Traps if `count` is negative. Do not let the buffer escape `body`.
    public init(count: Int, initializingWith body: (UnsafeMutableRawBufferPointer) throws -> Void) rethrows {
        precondition(count >= 0, "SensitiveBytes needs a non-negative count")
        // At least one byte so that the pointer is never NULL and free is uniform.
        let base = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: 16)
        let buffer = UnsafeMutableRawBufferPointer(start: base, count: count)
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        var built = false
        defer {
            if !built {
                secureZero(buffer)
                base.deallocate()
            }
        }
        try body(buffer)
        built = true
        self.base = base
        self.count = count
    }

    /// Copies `bytes`.
    ///
    /// - Warning: The source is not touched: wipe it (`secureZero`) if you can.
    public convenience init(copying bytes: UnsafeRawBufferPointer) {
        self.init(count: bytes.count) { buffer in
            if let source = bytes.baseAddress, let destination = buffer.baseAddress {
                destination.copyMemory(from: source, byteCount: bytes.count)
            }
        }
    }

    /// Copies `bytes`.
    ///
    /// - Warning: An array cannot be reliably wiped (copy-on-write and growth may
    ///   have left copies); the caller should wipe its source if it can.
    public convenience init(copying bytes: [UInt8]) {
        self.init(count: bytes.count) { buffer in
            bytes.withUnsafeBytes { source in
                if let sourceBase = source.baseAddress, let destination = buffer.baseAddress {
                    destination.copyMemory(from: sourceBase, byteCount: source.count)
                }
            }
        }
    }

    deinit {
        secureZero(UnsafeMutableRawBufferPointer(start: base, count: count))
        base.deallocate()
    }

    /// Calls `body` with the bytes.
    ///
    /// - Warning: The buffer is valid only during `body`: do not store it.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: base, count: count))
    }

    /// Redacted: "SensitiveBytes(<redacted>, N bytes)".
    public var description: String {
        "SensitiveBytes(<redacted>, \(count) bytes)"
    }

    /// Redacted: "SensitiveBytes(<redacted>, N bytes)".
    public var debugDescription: String {
        description
    }
}

extension SensitiveBytes: CustomReflectable {
    /// A mirror without children, so `dump` and reflection show no storage.
    public var customMirror: Mirror {
        Mirror(self, children: [], displayStyle: .class)
    }
}
