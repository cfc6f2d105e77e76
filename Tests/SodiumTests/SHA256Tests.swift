import Foundation
import Testing
@testable import Sodium

/// SHA-256 as FIPS 180-4 defines it (the audit log's Merkle hash must match every verifier's).
@Suite struct SHA256Tests {
    static func hex(_ b: [UInt8]) -> String { b.map { String(format: "%02x", $0) }.joined() }

    @Test func knownDigestsAndPartsHashAsTheirConcatenation() {
        #expect(Self.hex(SHA256.hash([])) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(Self.hex(SHA256.hash(Array("abc".utf8))) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        let long = Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)
        #expect(Self.hex(SHA256.hash(long)) == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        let parts = long.withUnsafeBytes { all in
            SHA256.hash(UnsafeRawBufferPointer(rebasing: all[..<7]), UnsafeRawBufferPointer(rebasing: all[7...]))
        }
        #expect(parts == SHA256.hash(long))
        #expect(SHA256.digestCount == 32)
    }
}
