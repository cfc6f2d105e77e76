import Testing
import Sodium

/// A BLAKE2b-512 known answer (key empty for unkeyed).
struct BLAKE2bVector: Sendable, CustomTestStringConvertible {
    let name: String
    let key: String
    let message: [UInt8]
    let digest: String

    var testDescription: String { name }

    static let all: [BLAKE2bVector] = [
        BLAKE2bVector(
            name: "RFC 7693 Appendix A: BLAKE2b-512(\"abc\")",
            key: "",
            message: Array("abc".utf8),
            digest: "ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d17d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923"
        ),
        BLAKE2bVector(
            name: "BLAKE2 reference blake2b-kat.txt: keyed, key 00..3f, empty message",
            key: hexString(0...63 as ClosedRange<UInt8>),
            message: [],
            digest: "10ebb67700b1868efb4417987acf4690ae9d972fb7a590c2f02871799aaa4786b5e996e8f0f4eb981fc214b005f42d2ff4233499391653df7aefcbc13fc51568"
        ),
    ]
}

@Suite("KeyedHash (BLAKE2b)")
struct KeyedHashTests {
    @Test("known answer", arguments: BLAKE2bVector.all)
    func knownAnswer(vector: BLAKE2bVector) throws {
        let digest: [UInt8]
        if vector.key.isEmpty {
            digest = KeyedHash.hash(vector.message, outputCount: 64)
            // The raw-buffer overload agrees with the array one.
            #expect(vector.message.withUnsafeBytes { KeyedHash.hash($0, outputCount: 64) } == digest)
        } else {
            let k = try key(hex(vector.key))
            digest = try KeyedHash.hash(vector.message, key: k, outputCount: 64)
            #expect(try vector.message.withUnsafeBytes { try KeyedHash.hash($0, key: k, outputCount: 64) } == digest)
        }
        #expect(hexString(digest) == vector.digest)
    }

    @Test func defaultOutputIs32Bytes() throws {
        let k = try SecretBytes.random(count: 32)
        #expect(KeyedHash.hash(Array("abc".utf8)).count == 32)
        #expect(try KeyedHash.hash(Array("abc".utf8), key: k).count == 32)
        // BLAKE2b binds the output length: the 32-byte digest is not a prefix of the 64-byte one.
        #expect(KeyedHash.hash(Array("abc".utf8)) != Array(KeyedHash.hash(Array("abc".utf8), outputCount: 64).prefix(32)))
    }

    @Test func keyedDependsOnKey() throws {
        let a = try SecretBytes.random(count: 32)
        let b = try SecretBytes.random(count: 32)
        let message = Array("blind index input".utf8)
        #expect(try KeyedHash.hash(message, key: a) == KeyedHash.hash(message, key: a))
        #expect(try KeyedHash.hash(message, key: a) != KeyedHash.hash(message, key: b))
        #expect(try KeyedHash.hash(message, key: a) != KeyedHash.hash(message))
    }

    @Test(arguments: [0, 8, 15, 65, 128])
    func invalidKeyLengthThrows(count: Int) throws {
        let k = try SecretBytes.random(count: count)
        let bound = count < 16 ? 16 : 64
        #expect(throws: SodiumError.invalidLength("key", expected: bound, actual: count)) {
            _ = try KeyedHash.hash([1, 2, 3], key: k)
        }
    }

    @Test(arguments: [0, 15, 65])
    func invalidOutputCountThrows(outputCount: Int) throws {
        let k = try SecretBytes.random(count: 32)
        let bound = outputCount < 16 ? 16 : 64
        #expect(throws: SodiumError.invalidLength("outputCount", expected: bound, actual: outputCount)) {
            _ = try KeyedHash.hash([1, 2, 3], key: k, outputCount: outputCount)
        }
    }

    // MARK: - deriveKey (crypto_kdf)

    @Test func deriveKeyIsDeterministic() throws {
        let master = try SecretBytes.random(count: 32)
        let first = try KeyedHash.deriveKey(from: master, subkeyID: 7, context: "bucketky")
        let second = try KeyedHash.deriveKey(from: master, subkeyID: 7, context: "bucketky")
        #expect(first.count == 32)
        let firstEqualsSecond = same(first, second)
        #expect(firstEqualsSecond)
        let firstEqualsMaster = same(first, master)
        #expect(!firstEqualsMaster)
    }

    @Test func deriveKeySeparatesSubkeyIDsContextsAndMasters() throws {
        let master = try SecretBytes.random(count: 32)
        let otherMaster = try SecretBytes.random(count: 32)
        let base = try KeyedHash.deriveKey(from: master, subkeyID: 1, context: "bucketky")
        let otherID = try KeyedHash.deriveKey(from: master, subkeyID: 2, context: "bucketky")
        let otherContext = try KeyedHash.deriveKey(from: master, subkeyID: 1, context: "blindidx")
        let otherKey = try KeyedHash.deriveKey(from: otherMaster, subkeyID: 1, context: "bucketky")
        let baseEqualsOtherID = same(base, otherID)
        #expect(!baseEqualsOtherID)
        let baseEqualsOtherContext = same(base, otherContext)
        #expect(!baseEqualsOtherContext)
        let baseEqualsOtherKey = same(base, otherKey)
        #expect(!baseEqualsOtherKey)
        let otherIDEqualsOtherContext = same(otherID, otherContext)
        #expect(!otherIDEqualsOtherContext)
    }

    @Test func deriveKeyOutputSizes() throws {
        let master = try SecretBytes.random(count: 32)
        let short = try KeyedHash.deriveKey(from: master, subkeyID: 1, context: "sizetest", count: 16)
        let long = try KeyedHash.deriveKey(from: master, subkeyID: 1, context: "sizetest", count: 64)
        #expect(short.count == 16)
        #expect(long.count == 64)
        #expect(throws: SodiumError.invalidLength("count", expected: 16, actual: 15)) {
            _ = try KeyedHash.deriveKey(from: master, subkeyID: 1, context: "sizetest", count: 15)
        }
        #expect(throws: SodiumError.invalidLength("count", expected: 64, actual: 65)) {
            _ = try KeyedHash.deriveKey(from: master, subkeyID: 1, context: "sizetest", count: 65)
        }
    }

    @Test func deriveKeyRejectsInvalidContextLength() throws {
        let master = try SecretBytes.random(count: 32)
        #expect(throws: SodiumError.invalidLength("context", expected: 8, actual: 7)) {
            _ = try KeyedHash.deriveKey(from: master, subkeyID: 1, context: "bucketk")
        }
        #expect(throws: SodiumError.invalidLength("context", expected: 8, actual: 9)) {
            _ = try KeyedHash.deriveKey(from: master, subkeyID: 1, context: "bucketkey")
        }
        #expect(throws: SodiumError.invalidLength("context", expected: 8, actual: 0)) {
            _ = try KeyedHash.deriveKey(from: master, subkeyID: 1, context: "")
        }
    }

    @Test(arguments: [16, 31, 33, 64])
    func deriveKeyRejectsInvalidMasterLength(count: Int) throws {
        let master = try SecretBytes.random(count: count)
        #expect(throws: SodiumError.invalidLength("key", expected: 32, actual: count)) {
            _ = try KeyedHash.deriveKey(from: master, subkeyID: 1, context: "bucketky")
        }
    }
}
