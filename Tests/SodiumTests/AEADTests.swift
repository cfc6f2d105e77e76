import Testing
import Sodium

/// An XChaCha20-Poly1305-IETF known answer.
struct AEADVector: Sendable, CustomTestStringConvertible {
    let name: String
    let key: String
    let nonce: String
    let associatedData: String
    let plaintext: String
    let ciphertext: String
    let tag: String

    var testDescription: String { name }

    static let all: [AEADVector] = [
        AEADVector(
            name: "draft-irtf-cfrg-xchacha-03 A.3.1",
            key: "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f",
            nonce: "404142434445464748494a4b4c4d4e4f5051525354555657",
            associatedData: "50515253c0c1c2c3c4c5c6c7",
            plaintext: "Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.",
            ciphertext: "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b4522f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff921f9664c97637da9768812f615c68b13b52e",
            tag: "c0875924c1c7987947deafd8780acf49"
        ),
    ]
}

@Suite("AEAD (XChaCha20-Poly1305-IETF)")
struct AEADTests {
    @Test("known answer: sealDetached", arguments: AEADVector.all)
    func knownAnswerSeal(vector: AEADVector) throws {
        let k = try key(hex(vector.key))
        let nonce = hex(vector.nonce)
        let ad = hex(vector.associatedData)
        let plaintext = Array(vector.plaintext.utf8)
        let sealed = try plaintext.withUnsafeBytes { p in
            try nonce.withUnsafeBytes { n in
                try ad.withUnsafeBytes { a in
                    try AEAD.sealDetached(p, key: k, nonce: n, associatedData: a)
                }
            }
        }
        try #require(sealed.count == plaintext.count + AEAD.tagCount)
        // Compared separately so a failure says which part differs.
        #expect(hexString(sealed.prefix(plaintext.count)) == vector.ciphertext)
        #expect(hexString(sealed.suffix(AEAD.tagCount)) == vector.tag)
    }

    @Test("known answer: open of nonce || ciphertext || tag", arguments: AEADVector.all)
    func knownAnswerOpen(vector: AEADVector) throws {
        let k = try key(hex(vector.key))
        let box = hex(vector.nonce) + hex(vector.ciphertext) + hex(vector.tag)
        let opened = try open(box, key: k, ad: hex(vector.associatedData))
        #expect(opened == Array(vector.plaintext.utf8))
    }

    @Test func sizes() {
        #expect(AEAD.keyCount == 32)
        #expect(AEAD.nonceCount == 24)
        #expect(AEAD.tagCount == 16)
        #expect(AEAD.overhead == 40)
        #expect(AEAD.sealedCount(plaintextCount: 0) == 40)
        #expect(AEAD.sealedCount(plaintextCount: 100) == 140)
    }

    @Test(arguments: [0, 1, 15, 16, 17, 64, 1000, 65_537])
    func roundTrip(count: Int) throws {
        let k = try SecretBytes.random(count: AEAD.keyCount)
        let plaintext = Random.bytes(count: count)
        let box = try seal(plaintext, key: k, ad: Array("record/42".utf8))
        #expect(box.count == AEAD.sealedCount(plaintextCount: count))
        #expect(try open(box, key: k, ad: Array("record/42".utf8)) == plaintext)
    }

    @Test func sealIntoOutputBuffer() throws {
        let k = try SecretBytes.random(count: AEAD.keyCount)
        let plaintext = Array("into a caller's buffer".utf8)
        var box = [UInt8](repeating: 0, count: AEAD.sealedCount(plaintextCount: plaintext.count))
        try plaintext.withUnsafeBytes { p in
            try box.withUnsafeMutableBytes { o in
                try AEAD.seal(p, key: k, associatedData: UnsafeRawBufferPointer(start: nil, count: 0), into: o)
            }
        }
        #expect(try open(box, key: k, ad: []) == plaintext)
    }

    // MARK: - The four barrier properties (Vault's barrier_aes_gcm_test.go)

    @Test("confidentiality: no 16-byte window of the plaintext appears in the box")
    func confidentiality() throws {
        let k = try SecretBytes.random(count: AEAD.keyCount)
        let plaintext = Array("patient 1234: diagnosis confidential, do not disclose; contact jane@example.org".utf8)
        let box = try seal(plaintext, key: k, ad: [])
        for start in 0...(plaintext.count - 16) {
            #expect(!contains(box, plaintext[start..<start + 16]), "window at \(start) leaked")
        }
    }

    @Test("integrity: a flipped byte anywhere fails with exactly .authenticationFailure")
    func integrity() throws {
        let k = try SecretBytes.random(count: AEAD.keyCount)
        let ad = Array("bucket/7".utf8)
        let box = try seal(Array("tiny".utf8), key: k, ad: ad)
        #expect(box.count == 44)
        for position in box.indices {
            for mask: UInt8 in [0x01, 0x80, 0xff] {
                var tampered = box
                tampered[position] ^= mask
                #expect(throws: SodiumError.authenticationFailure, "byte \(position) ^ \(mask)") {
                    _ = try open(tampered, key: k, ad: ad)
                }
            }
        }
    }

    @Test("move integrity: a different associated data fails")
    func differentAssociatedData() throws {
        let k = try SecretBytes.random(count: AEAD.keyCount)
        let box = try seal(Array("moved".utf8), key: k, ad: Array("record/1".utf8))
        for otherAD in ["record/2", "record/1 ", "", "Record/1"] {
            #expect(throws: SodiumError.authenticationFailure) {
                _ = try open(box, key: k, ad: Array(otherAD.utf8))
            }
        }
    }

    @Test("a wrong key fails")
    func wrongKey() throws {
        let k = try SecretBytes.random(count: AEAD.keyCount)
        let other = try SecretBytes.random(count: AEAD.keyCount)
        let box = try seal(Array("keyed".utf8), key: k, ad: [])
        #expect(throws: SodiumError.authenticationFailure) {
            _ = try open(box, key: other, ad: [])
        }
    }

    @Test("equal plaintexts sealed twice give different boxes (fresh nonces)")
    func uniqueness() throws {
        let k = try SecretBytes.random(count: AEAD.keyCount)
        let plaintext = Array("same".utf8)
        let first = try seal(plaintext, key: k, ad: [])
        let second = try seal(plaintext, key: k, ad: [])
        #expect(first != second)
        #expect(first.prefix(AEAD.nonceCount) != second.prefix(AEAD.nonceCount))
    }

    @Test("every truncation fails with .authenticationFailure")
    func truncated() throws {
        let k = try SecretBytes.random(count: AEAD.keyCount)
        let box = try seal(Array("truncate me".utf8), key: k, ad: [])
        for length in 0..<box.count {
            #expect(throws: SodiumError.authenticationFailure, "length \(length)") {
                _ = try open(Array(box.prefix(length)), key: k, ad: [])
            }
            #expect(throws: SodiumError.authenticationFailure, "openSecret length \(length)") {
                _ = try openSecret(Array(box.prefix(length)), key: k, ad: [])
            }
        }
    }

    @Test("open zeroes the output on failure")
    func openZeroesOutputOnFailure() throws {
        let k = try SecretBytes.random(count: AEAD.keyCount)
        var box = try seal(Array(repeating: 0x41, count: 64), key: k, ad: [])
        box[AEAD.nonceCount] ^= 1
        var output = [UInt8](repeating: 0xaa, count: 64)
        #expect(throws: SodiumError.authenticationFailure) {
            try box.withUnsafeBytes { b in
                try output.withUnsafeMutableBytes { o in
                    try AEAD.open(b, key: k, associatedData: UnsafeRawBufferPointer(start: nil, count: 0), into: o)
                }
            }
        }
        #expect(output == [UInt8](repeating: 0, count: 64))

        // Also when the output has the wrong size (a caller bug, reported as such).
        var wrongSize = [UInt8](repeating: 0xaa, count: 10)
        #expect(throws: SodiumError.invalidLength("output", expected: 64, actual: 10)) {
            try box.withUnsafeBytes { b in
                try wrongSize.withUnsafeMutableBytes { o in
                    try AEAD.open(b, key: k, associatedData: UnsafeRawBufferPointer(start: nil, count: 0), into: o)
                }
            }
        }
        #expect(wrongSize == [UInt8](repeating: 0, count: 10))
    }

    // MARK: - Lengths

    @Test(arguments: [0, 16, 31, 33, 64])
    func wrongKeyLengthThrows(count: Int) throws {
        let k = try SecretBytes.random(count: count)
        #expect(throws: SodiumError.invalidLength("key", expected: 32, actual: count)) {
            _ = try seal([1, 2, 3], key: k, ad: [])
        }
        #expect(throws: SodiumError.invalidLength("key", expected: 32, actual: count)) {
            _ = try open([UInt8](repeating: 0, count: 48), key: k, ad: [])
        }
    }

    @Test func wrongOutputLengthThrows() throws {
        let k = try SecretBytes.random(count: AEAD.keyCount)
        var output = [UInt8](repeating: 0, count: 42)
        #expect(throws: SodiumError.invalidLength("output", expected: 43, actual: 42)) {
            try [UInt8]([1, 2, 3]).withUnsafeBytes { p in
                try output.withUnsafeMutableBytes { o in
                    try AEAD.seal(p, key: k, associatedData: UnsafeRawBufferPointer(start: nil, count: 0), into: o)
                }
            }
        }
    }

    @Test func wrongNonceLengthThrows() throws {
        let k = try SecretBytes.random(count: AEAD.keyCount)
        let nonce = [UInt8](repeating: 0, count: 12)
        #expect(throws: SodiumError.invalidLength("nonce", expected: 24, actual: 12)) {
            _ = try nonce.withUnsafeBytes { n in
                try AEAD.sealDetached(UnsafeRawBufferPointer(start: nil, count: 0), key: k, nonce: n, associatedData: UnsafeRawBufferPointer(start: nil, count: 0))
            }
        }
    }

    // MARK: - Wrapping secrets

    @Test("openSecret round trip of a wrapped key")
    func wrapUnwrap() throws {
        let bucketKey = try SecretBytes.random(count: AEAD.keyCount)
        let dataKey = try SecretBytes.random(count: AEAD.keyCount)
        let ad = Array("bucket/7/v3".utf8)
        let wrapped = try ad.withUnsafeBytes { try AEAD.seal(secret: dataKey, key: bucketKey, associatedData: $0) }
        #expect(wrapped.count == AEAD.keyCount + AEAD.overhead)
        #expect(!contains(wrapped, exposed(dataKey)[0..<16]))

        let unwrapped = try openSecret(wrapped, key: bucketKey, ad: ad)
        #expect(unwrapped.count == AEAD.keyCount)
        let unwrappedEqualsDataKey = same(unwrapped, dataKey)
        #expect(unwrappedEqualsDataKey)

        #expect(throws: SodiumError.authenticationFailure) {
            _ = try openSecret(wrapped, key: bucketKey, ad: Array("bucket/8/v3".utf8))
        }
    }
}
