import Testing
import Sodium

@Suite("SensitiveBytes")
struct SensitiveBytesTests {
    let plaintext = Array("SSN 078-05-1120 belongs to Jane".utf8)

    @Test func roundTrip() {
        let bytes = SensitiveBytes(copying: plaintext)
        #expect(bytes.count == plaintext.count)
        #expect(bytes.withUnsafeBytes { Array($0) } == plaintext)

        let fromBuffer = plaintext.withUnsafeBytes { SensitiveBytes(copying: $0) }
        #expect(fromBuffer.withUnsafeBytes { Array($0) } == plaintext)
    }

    @Test func initializingWith() {
        let bytes = SensitiveBytes(count: 5) { buffer in
            for index in buffer.indices { buffer[index] = UInt8(index * 2) }
        }
        #expect(bytes.withUnsafeBytes { Array($0) } == [0, 2, 4, 6, 8])
        // Bytes the initializer does not write are zero, not garbage.
        let untouched = SensitiveBytes(count: 3) { _ in }
        #expect(untouched.withUnsafeBytes { Array($0) } == [0, 0, 0])
    }

    @Test func initializerErrorIsRethrown() {
        struct Marker: Error, Equatable {}
        #expect(throws: Marker()) {
            _ = try SensitiveBytes(count: 16) { _ in throw Marker() }
        }
    }

    @Test func empty() {
        let bytes = SensitiveBytes(copying: [])
        #expect(bytes.count == 0)
        #expect(bytes.withUnsafeBytes { $0.count } == 0)
    }

    @Test("description, debugDescription, interpolation and dump are redacted")
    func redacted() {
        let bytes = SensitiveBytes(copying: plaintext)
        let expected = "SensitiveBytes(<redacted>, \(plaintext.count) bytes)"
        #expect(bytes.description == expected)
        #expect(bytes.debugDescription == expected)
        #expect("\(bytes)" == expected)
        #expect(String(describing: bytes) == expected)
        #expect(String(reflecting: bytes) == expected)
        var dumped = ""
        dump(bytes, to: &dumped)

        let text = String(decoding: plaintext, as: UTF8.self)
        let hexText = hexString(plaintext)
        let decimalText = plaintext.map(String.init).joined(separator: ", ")
        for rendering in [bytes.description, bytes.debugDescription, dumped] {
            #expect(!rendering.contains("078-05"))
            #expect(!rendering.contains(text))
            #expect(!rendering.contains(hexText.prefix(8)))
            #expect(!rendering.contains(decimalText.prefix(12)))
        }
    }
}
