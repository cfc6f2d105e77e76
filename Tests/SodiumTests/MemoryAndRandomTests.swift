import Testing
import Sodium

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

@Suite("constantTimeEquals, secureZero, Random, Sodium")
struct MemoryAndRandomTests {
    @Test func constantTimeEqualsBasics() {
        #expect(constantTimeEquals([1, 2, 3], [1, 2, 3]))
        #expect(!constantTimeEquals([1, 2, 3], [1, 2, 4]))
        #expect(!constantTimeEquals([0, 2, 3], [1, 2, 3]))
        #expect(!constantTimeEquals([1, 2, 3], [1, 2]))
        #expect(!constantTimeEquals([1, 2], [1, 2, 3]))
        #expect(!constantTimeEquals([], [0]))
        #expect(constantTimeEquals([], []))
        let long = Random.bytes(count: 4096)
        var other = long
        #expect(constantTimeEquals(long, other))
        other[4095] ^= 1
        #expect(!constantTimeEquals(long, other))
    }

    @Test func constantTimeEqualsBuffers() {
        let a: [UInt8] = [9, 8, 7, 6]
        let b: [UInt8] = [9, 8, 7, 6]
        let c: [UInt8] = [9, 8, 7, 5]
        a.withUnsafeBytes { a in
            b.withUnsafeBytes { b in
                #expect(constantTimeEquals(a, b))
                #expect(constantTimeEquals(a, UnsafeRawBufferPointer(rebasing: b[0..<4])))
                #expect(!constantTimeEquals(a, UnsafeRawBufferPointer(rebasing: b[0..<3])))
            }
            c.withUnsafeBytes { c in
                #expect(!constantTimeEquals(a, c))
            }
        }
        #expect(constantTimeEquals(UnsafeRawBufferPointer(start: nil, count: 0), UnsafeRawBufferPointer(start: nil, count: 0)))
    }

    @Test func secureZeroWipes() {
        var buffer = [UInt8](repeating: 0xaa, count: 100)
        buffer.withUnsafeMutableBytes { secureZero($0) }
        #expect(buffer == [UInt8](repeating: 0, count: 100))
        secureZero(UnsafeMutableRawBufferPointer(start: nil, count: 0))  // no crash on empty
    }

    @Test func randomBytes() {
        #expect(Random.bytes(count: 0).isEmpty)
        let a = Random.bytes(count: 32)
        let b = Random.bytes(count: 32)
        #expect(a.count == 32)
        #expect(a != b)
    }

    @Test func randomFill() {
        var buffer = [UInt8](repeating: 0, count: 32)
        buffer.withUnsafeMutableBytes { Random.fill($0) }
        #expect(buffer != [UInt8](repeating: 0, count: 32))
    }

    @Test func randomUniform() {
        var seen = Set<UInt32>()
        for _ in 0..<1000 {
            let value = Random.uniform(10)
            #expect(value < 10)
            seen.insert(value)
        }
        // P(some value never drawn in 1000 draws) ≈ 10 · 0.9^1000 ≈ 2e-45.
        #expect(seen.count == 10)
        #expect(Random.uniform(1) == 0)
        #expect(Random.uniform(0) == 0)
    }

    @Test func initializeIsIdempotent() throws {
        try Sodium.initialize()
        try Sodium.initialize()
    }

    @Test func errorDescriptionsNameParametersOnly() {
        #expect(SodiumError.invalidLength("key", expected: 32, actual: 16).description == "invalid length for key: expected 32 bytes, got 16")
        #expect(SodiumError.authenticationFailure.description == "authentication failure")
        #expect(SodiumError.allocationFailure != SodiumError.initializationFailure)
    }

    @Test func disableCoreDumps() {
        Sodium.disableCoreDumps()
        var limit = rlimit()
        #if canImport(Glibc)
        let status = getrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &limit)
        #else
        let status = getrlimit(RLIMIT_CORE, &limit)
        #endif
        #expect(status == 0)
        #expect(limit.rlim_cur == 0)
        #expect(limit.rlim_max == 0)
        #expect(Sodium.areCoreDumpsDisabled)
    }
}
