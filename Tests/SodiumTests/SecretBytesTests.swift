import Testing
import Sodium

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

@Suite("SecretBytes")
struct SecretBytesTests {
    @Test func zeroFilled() throws {
        let secret = try SecretBytes(count: 64)
        #expect(secret.count == 64)
        // sodium_malloc fills with 0xdb; the initializer must have wiped it.
        #expect(exposed(secret) == [UInt8](repeating: 0, count: 64))
    }

    @Test func randomValuesDiffer() throws {
        let a = try SecretBytes.random(count: 32)
        let b = try SecretBytes.random(count: 32)
        #expect(a.count == 32)
        let aEqualsB = same(a, b)
        #expect(!aEqualsB)
        #expect(exposed(a) != [UInt8](repeating: 0, count: 32))
        #expect(exposed(a) != [UInt8](repeating: 0xdb, count: 32))
    }

    @Test func copyIsEqualAndIndependent() throws {
        var original = try SecretBytes.random(count: 32)
        let copy = try original.copy()
        #expect(copy.count == original.count)
        let copyEqualsOriginal = same(copy, original)
        #expect(copyEqualsOriginal)
        #expect(exposed(copy) == exposed(original))

        original.withUnsafeMutableBytes { $0[0] ^= 0xff }
        let stillEqual = same(copy, original)
        #expect(!stillEqual)
    }

    @Test func copyingBytes() throws {
        let source: [UInt8] = Array(0..<48)
        let secret = try key(source)
        #expect(secret.count == 48)
        #expect(exposed(secret) == source)
    }

    @Test func mutation() throws {
        var secret = try SecretBytes(count: 4)
        let written = secret.withUnsafeMutableBytes { buffer in
            buffer.copyBytes(from: [1, 2, 3, 4] as [UInt8])
            return buffer.count
        }
        #expect(written == 4)
        #expect(exposed(secret) == [1, 2, 3, 4])
        // Readable again after the mutation (pages back to read-only, not no-access).
        #expect(secret.withUnsafeBytes { $0.reduce(0) { $0 + Int($1) } } == 10)
    }

    @Test func typedThrowsPassThrough() throws {
        struct Marker: Error, Equatable {}
        var secret = try SecretBytes(count: 8)
        #expect(throws: Marker()) {
            try secret.withUnsafeBytes { (_: UnsafeRawBufferPointer) throws(Marker) -> Void in throw Marker() }
        }
        #expect(throws: Marker()) {
            try secret.withUnsafeMutableBytes { (_: UnsafeMutableRawBufferPointer) throws(Marker) -> Void in throw Marker() }
        }
        // Still usable (and writable only through the closure) afterwards.
        secret.withUnsafeMutableBytes { $0[7] = 9 }
        #expect(exposed(secret).last == 9)
    }

    @Test func constantTimeEqualsDifferentCounts() throws {
        let a = try SecretBytes(count: 16)
        let b = try SecretBytes(count: 32)
        let aEqualsB = same(a, b)
        #expect(!aEqualsB)
        let c = try SecretBytes(count: 16)
        let aEqualsC = same(a, c)
        #expect(aEqualsC)
    }

    @Test func emptySecret() throws {
        let empty = try SecretBytes(count: 0)
        #expect(empty.count == 0)
        let emptyEqualsFresh = same(empty, try SecretBytes(count: 0))
        #expect(emptyEqualsFresh)
        let copy = try empty.copy()
        #expect(copy.count == 0)
    }

    @Test(arguments: [-1, -32, Int.min])
    func negativeCountThrowsInvalidLength(count: Int) {
        #expect(throws: SodiumError.invalidLength("count", expected: 0, actual: count)) {
            _ = try SecretBytes(count: count)
        }
        #expect(throws: SodiumError.invalidLength("count", expected: 0, actual: count)) {
            _ = try SecretBytes.random(count: count)
        }
    }

    @Test func impossibleAllocationThrowsAllocationFailure() {
        #expect(throws: SodiumError.allocationFailure) {
            _ = try SecretBytes(count: Int.max)
        }
    }
}

/// How a memory fault ends a process: SIGSEGV; under a sanitizer (scripts/sanitize sets its
/// options) its SEGV handler reports the fault and ends the process its own way:
/// AddressSanitizer aborts (SIGABRT), ThreadSanitizer exits 66.
private let memoryFault: ExitTest.Condition =
    getenv("ASAN_OPTIONS") != nil ? .signal(SIGABRT) : getenv("TSAN_OPTIONS") != nil ? .exitCode(66) : .signal(SIGSEGV)

/// Memory protection, checked in child processes (exit tests) because the checks crash.
@Suite("SecretBytes memory protection")
struct SecretBytesProtectionTests {
    #if os(Linux) || os(macOS)
    @Test("a write outside withUnsafeMutableBytes faults: the pages are read-only")
    func writeOutsideMutableScopeFaults() async {
        await #expect(processExitsWith: memoryFault) {
            Sodium.disableCoreDumps()
            let secret = try! SecretBytes(count: 32)
            secret.withUnsafeBytes { bytes in
                UnsafeMutableRawPointer(mutating: bytes.baseAddress!).storeBytes(of: 1, as: UInt8.self)
            }
        }
    }

    @Test("reading one byte past the end faults: the guard page follows the buffer")
    func overreadHitsGuardPage() async {
        await #expect(processExitsWith: memoryFault) {
            Sodium.disableCoreDumps()
            let secret = try! SecretBytes.random(count: 32)
            let past = secret.withUnsafeBytes { bytes in
                bytes.baseAddress!.load(fromByteOffset: bytes.count, as: UInt8.self)
            }
            print(past)  // not reached
        }
    }
    #endif
}

@Suite("SecretBytes scratch buffers")
struct SecretBytesScratchTests {
    @Test("a scratch buffer starts zeroed and can be rewritten in place many times")
    func scratchIsRewritable() throws {
        var scratch = try SecretBytes.scratch(count: 32)
        let zero = scratch.withUnsafeBytes { $0.allSatisfy { $0 == 0 } }
        #expect(zero)
        var seen = Set<[UInt8]>()
        for _ in 0..<100 {
            scratch.withUnsafeMutableBytes { Random.fill($0) }
            seen.insert(scratch.withUnsafeBytes { Array($0) })
        }
        #expect(seen.count == 100)
        scratch.withUnsafeMutableBytes { secureZero($0) }
        let wiped = scratch.withUnsafeBytes { $0.allSatisfy { $0 == 0 } }
        #expect(wiped)
    }
}
