import Testing
import Sodium

@Suite struct SealedBoxTests {
    @Test("a box sealed to a public key opens with its pair, and with nothing else")
    func sealAndOpen() throws {
        let pair = try ExchangeKeyPair()
        let other = try ExchangeKeyPair()
        #expect(pair.publicKey.count == 32 && pair.publicKey != other.publicKey)
        let secret = try SecretBytes.random(count: 32)
        let box = try ExchangeKeyPair.seal(secret, to: pair.publicKey)
        #expect(box.count == 32 + ExchangeKeyPair.sealOverhead)
        let opened = try pair.open(box)
        let same = opened.constantTimeEquals(secret)
        #expect(same)
        #expect(throws: SodiumError.authenticationFailure) { try other.open(box) }
        // Two seals of one secret differ (a fresh ephemeral key each time).
        #expect(try ExchangeKeyPair.seal(secret, to: pair.publicKey) != box)
    }

    @Test("a changed or cut box does not open")
    func tamper() throws {
        let pair = try ExchangeKeyPair()
        let box = try ExchangeKeyPair.seal(try SecretBytes.random(count: 32), to: pair.publicKey)
        for i in [0, 31, 32, 47, 48, box.count - 1] {
            var bad = box
            bad[i] ^= 0x01
            #expect(throws: SodiumError.authenticationFailure) { try pair.open(bad) }
        }
        #expect(throws: SodiumError.authenticationFailure) { try pair.open(Array(box.dropLast())) }
        #expect(throws: SodiumError.authenticationFailure) { try pair.open(Array(box.prefix(10))) }
    }

    @Test("a stored private half gives back the same pair")
    func fromSecretKey() throws {
        let pair = try ExchangeKeyPair()
        let again = try ExchangeKeyPair(secretKey: try pair.secretKey.copy())
        #expect(again.publicKey == pair.publicKey)
        let box = try ExchangeKeyPair.seal(try SecretBytes.random(count: 32), to: pair.publicKey)
        #expect(try again.open(box).count == 32)
        #expect(throws: SodiumError.invalidLength("secret key", expected: 32, actual: 16)) {
            try ExchangeKeyPair(secretKey: try SecretBytes.random(count: 16))
        }
        #expect(throws: SodiumError.invalidLength("public key", expected: 32, actual: 31)) {
            try ExchangeKeyPair.seal(try SecretBytes.random(count: 32), to: Array(pair.publicKey.prefix(31)))
        }
    }
}
