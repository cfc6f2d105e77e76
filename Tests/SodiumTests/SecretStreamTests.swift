import Testing
import Sodium

/// The barrier properties of a sealed stream (as `vault/barrier_aes_gcm_test.go` tests them
/// for one box): confidentiality, integrity, position (a message moved, dropped, repeated or
/// cut off fails), and unique ciphertexts for equal input.
@Suite("SecretStream (crypto_secretstream_xchacha20poly1305)")
struct SecretStreamTests {
    static let messages: [[UInt8]] = [
        Array("the keystore's first page".utf8),
        [],
        [UInt8](repeating: 0x41, count: 70_000),
        Array("the last message".utf8),
    ]

    static func seal(_ messages: [[UInt8]], key: borrowing SecretBytes, ad: [UInt8] = [],
                     finalLast: Bool = true) throws -> (header: [UInt8], boxes: [[UInt8]]) {
        var sealer = try SecretStream.Sealer(key: key)
        var boxes: [[UInt8]] = []
        for (i, m) in messages.enumerated() {
            boxes.append(try m.withUnsafeBytes {
                try sealer.seal($0, associatedData: ad, final: finalLast && i == messages.count - 1)
            })
        }
        return (sealer.header, boxes)
    }

    /// Opens every box; returns the messages and whether the last was final.
    static func open(_ header: [UInt8], _ boxes: [[UInt8]], key: borrowing SecretBytes,
                     ad: [UInt8] = []) throws -> ([[UInt8]], Bool) {
        var opener = try SecretStream.Opener(key: key, header: header)
        var out: [[UInt8]] = []
        for box in boxes {
            var m = [UInt8](repeating: 0, count: box.count - SecretStream.overhead)
            _ = try box.withUnsafeBytes { b in try m.withUnsafeMutableBytes { try opener.open(b, associatedData: ad, into: $0) } }
            out.append(m)
        }
        return (out, opener.isFinished)
    }

    @Test func aStreamOpensWhole() throws {
        let key = try SecretBytes.random(count: SecretStream.keyCount)
        let (header, boxes) = try Self.seal(Self.messages, key: key, ad: [1, 2, 3])
        #expect(header.count == SecretStream.headerCount)
        #expect(boxes.map(\.count) == Self.messages.map { $0.count + SecretStream.overhead })
        let (opened, final) = try Self.open(header, boxes, key: key, ad: [1, 2, 3])
        #expect(opened == Self.messages)
        #expect(final)
    }

    @Test func confidentialityAndUniqueCiphertexts() throws {
        let key = try SecretBytes.random(count: SecretStream.keyCount)
        let a = try Self.seal(Self.messages, key: key), b = try Self.seal(Self.messages, key: key)
        #expect(a.header != b.header)
        #expect(a.boxes[2] != b.boxes[2])
        // No run of the plaintext survives in the box.
        let run = [UInt8](repeating: 0x41, count: 16)
        #expect(!a.boxes[2].indices.dropLast(16).contains { Array(a.boxes[2][$0..<$0 + 16]) == run })
    }

    @Test func aFlippedByteAWrongKeyOrWrongAssociatedDataFail() throws {
        let key = try SecretBytes.random(count: SecretStream.keyCount)
        let other = try SecretBytes.random(count: SecretStream.keyCount)
        let (header, boxes) = try Self.seal(Self.messages, key: key, ad: [7])
        for i in boxes.indices {
            for position in [0, boxes[i].count / 2, boxes[i].count - 1] {
                var flipped = boxes
                flipped[i][position] ^= 0x01
                #expect(throws: SodiumError.authenticationFailure) { try Self.open(header, flipped, key: key, ad: [7]) }
            }
        }
        var badHeader = header
        badHeader[5] ^= 0x80
        #expect(throws: SodiumError.authenticationFailure) { try Self.open(badHeader, boxes, key: key, ad: [7]) }
        #expect(throws: SodiumError.authenticationFailure) { try Self.open(header, boxes, key: other, ad: [7]) }
        #expect(throws: SodiumError.authenticationFailure) { try Self.open(header, boxes, key: key, ad: [8]) }
    }

    @Test func aMessageMovedDroppedRepeatedOrCutOffIsDetected() throws {
        let key = try SecretBytes.random(count: SecretStream.keyCount)
        let (header, boxes) = try Self.seal(Self.messages, key: key)
        var swapped = boxes
        swapped.swapAt(0, 2)
        #expect(throws: SodiumError.authenticationFailure) { try Self.open(header, swapped, key: key) }
        #expect(throws: SodiumError.authenticationFailure) { try Self.open(header, [boxes[0], boxes[2], boxes[3]], key: key) }
        #expect(throws: SodiumError.authenticationFailure) { try Self.open(header, [boxes[0], boxes[0]], key: key) }
        // A stream cut before its final message opens, but says it is not finished.
        let (prefix, final) = try Self.open(header, Array(boxes.prefix(3)), key: key)
        #expect(prefix == Array(Self.messages.prefix(3)) && !final)
        // Nothing opens after the final message, not even a message of another stream.
        let other = try Self.seal([[1]], key: key)
        #expect(throws: SodiumError.authenticationFailure) { try Self.open(header, boxes + [other.boxes[0]], key: key) }
        // A box of one stream does not open in another stream under the same key.
        #expect(throws: SodiumError.authenticationFailure) { try Self.open(header, [other.boxes[0]], key: key) }
    }
}
