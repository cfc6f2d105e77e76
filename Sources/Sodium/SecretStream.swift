import CSodium

/// A stream of messages sealed under one key (`crypto_secretstream_xchacha20poly1305`), for
/// data too large to seal in one box: each message is authenticated and bound to its place
/// in the stream, so messages cannot be dropped, repeated or reordered unnoticed, and the
/// stream's end is authenticated too (a message tagged final): a truncated stream is detected.
///
/// The stream state holds the key schedule: it lives in guarded memory (`SecretBytes`) and is
/// wiped with it.
public enum SecretStream {
    /// The key size in bytes (`crypto_secretstream_xchacha20poly1305_keybytes()`, 32).
    public static let keyCount = Int(crypto_secretstream_xchacha20poly1305_keybytes())
    /// The header a stream starts with (`..._headerbytes()`, 24): public, sent before the messages.
    public static let headerCount = Int(crypto_secretstream_xchacha20poly1305_headerbytes())
    /// The bytes each message grows by (`..._abytes()`, 17).
    public static let overhead = Int(crypto_secretstream_xchacha20poly1305_abytes())
    static let stateCount = Int(crypto_secretstream_xchacha20poly1305_statebytes())
    static let tagMessage = UInt8(crypto_secretstream_xchacha20poly1305_tag_message())
    static let tagFinal = UInt8(crypto_secretstream_xchacha20poly1305_tag_final())

    private static func checkKey(_ key: borrowing SecretBytes) throws {
        guard key.count == keyCount else { throw SodiumError.invalidLength("key", expected: keyCount, actual: key.count) }
    }

    /// Seals a stream.
    public struct Sealer: ~Copyable {
        private var state: SecretBytes
        /// The stream's header (random): store it in front of the messages.
        public let header: [UInt8]
        private var finished = false

        public init(key: borrowing SecretBytes) throws {
            try Sodium.initialize()
            try checkKey(key)
            var state = try SecretBytes.scratch(count: stateCount)
            var header = [UInt8](repeating: 0, count: headerCount)
            let status = state.withUnsafeMutableBytes { s in
                header.withUnsafeMutableBytes { h in
                    crypto_secretstream_xchacha20poly1305_init_push(
                        s.baseAddress!.assumingMemoryBound(to: crypto_secretstream_xchacha20poly1305_state.self),
                        h.baseAddress!.assumingMemoryBound(to: UInt8.self),
                        UnsafeRawPointer(key.base).assumingMemoryBound(to: UInt8.self))
                }
            }
            precondition(status == 0, "crypto_secretstream_xchacha20poly1305_init_push failed")
            self.state = state
            self.header = header
        }

        /// Seals the next message (`final`: the last one; nothing may follow) into a new array
        /// of `message.count + overhead` bytes.
        public mutating func seal(_ message: UnsafeRawBufferPointer, associatedData: [UInt8] = [],
                                  final: Bool = false) throws -> [UInt8] {
            precondition(!finished, "a secret stream sealed its final message already")
            let count = message.count + SecretStream.overhead
            var out = [UInt8](repeating: 0, count: count)
            let status = state.withUnsafeMutableBytes { s in
                out.withUnsafeMutableBytes { o in
                    associatedData.withUnsafeBytes { a in
                        crypto_secretstream_xchacha20poly1305_push(
                            s.baseAddress!.assumingMemoryBound(to: crypto_secretstream_xchacha20poly1305_state.self),
                            o.baseAddress!.assumingMemoryBound(to: UInt8.self), nil,
                            (message.baseAddress ?? UnsafeRawPointer(o.baseAddress!)).assumingMemoryBound(to: UInt8.self),
                            UInt64(message.count),
                            a.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(a.count),
                            final ? SecretStream.tagFinal : SecretStream.tagMessage)
                    }
                }
            }
            // libsodium: -1 only for a message above messagebytes_max (2^64 - ...), which no
            // array reaches.
            precondition(status == 0, "crypto_secretstream_xchacha20poly1305_push failed")
            if final { finished = true }
            return out
        }
    }

    /// Opens a stream.
    public struct Opener: ~Copyable {
        private var state: SecretBytes
        /// True once the final message has been opened: anything after it is an error.
        public private(set) var isFinished = false

        /// - Throws: `.authenticationFailure` for a header of the wrong size or one libsodium
        ///   refuses; `.invalidLength("key", …)` for a wrong-sized key.
        public init(key: borrowing SecretBytes, header: [UInt8]) throws {
            try Sodium.initialize()
            try checkKey(key)
            guard header.count == headerCount else { throw SodiumError.authenticationFailure }
            var state = try SecretBytes.scratch(count: stateCount)
            let status = state.withUnsafeMutableBytes { s in
                header.withUnsafeBytes { h in
                    crypto_secretstream_xchacha20poly1305_init_pull(
                        s.baseAddress!.assumingMemoryBound(to: crypto_secretstream_xchacha20poly1305_state.self),
                        h.baseAddress!.assumingMemoryBound(to: UInt8.self),
                        UnsafeRawPointer(key.base).assumingMemoryBound(to: UInt8.self))
                }
            }
            guard status == 0 else { throw SodiumError.authenticationFailure }
            self.state = state
        }

        /// Opens the next message into `output` (exactly `box.count - overhead` bytes), which is
        /// zeroed on failure. Returns whether it was the final message.
        /// - Throws: `.authenticationFailure` for a forged, damaged, reordered or out-of-place
        ///   message, or any message after the final one.
        public mutating func open(_ box: UnsafeRawBufferPointer, associatedData: [UInt8] = [],
                                  into output: UnsafeMutableRawBufferPointer) throws -> Bool {
            guard !isFinished, box.count >= SecretStream.overhead else { throw SodiumError.authenticationFailure }
            guard output.count == box.count - SecretStream.overhead else {
                throw SodiumError.invalidLength("output", expected: box.count - SecretStream.overhead, actual: output.count)
            }
            var tag: UInt8 = 0
            // libsodium is given a valid pointer even for an empty message.
            var empty: UInt8 = 0
            let status = withUnsafeMutablePointer(to: &empty) { emptyPointer in
                state.withUnsafeMutableBytes { s in
                    associatedData.withUnsafeBytes { a in
                        crypto_secretstream_xchacha20poly1305_pull(
                            s.baseAddress!.assumingMemoryBound(to: crypto_secretstream_xchacha20poly1305_state.self),
                            output.baseAddress?.assumingMemoryBound(to: UInt8.self) ?? emptyPointer, nil, &tag,
                            box.baseAddress!.assumingMemoryBound(to: UInt8.self), UInt64(box.count),
                            a.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(a.count))
                    }
                }
            }
            guard status == 0 else {
                secureZero(output)
                throw SodiumError.authenticationFailure
            }
            if tag == SecretStream.tagFinal { isFinished = true }
            return isFinished
        }
    }
}
