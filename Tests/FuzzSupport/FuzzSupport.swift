import Foundation

/// What the seeded tests (fuzzers, tamper rounds, randomized round trips) share: a replayable
/// generator, the environment knobs, and output that survives a crash.

/// SplitMix64: small, fast, and the same sequence for the same seed on every machine, so a
/// failing round can be replayed from the seed it printed.
public struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// 0..<n (n > 0).
    public mutating func below(_ n: Int) -> Int { Int(next() % UInt64(max(n, 1))) }
    public mutating func between(_ low: Int, _ high: Int) -> Int { low + below(high - low + 1) }
    public mutating func chance(_ p: Double) -> Bool { Double(next() >> 11) / Double(UInt64(1) << 53) < p }
    public mutating func pick<T>(_ options: [T]) -> T { options[below(options.count)] }
    public mutating func bytes(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8(truncatingIfNeeded: next()) } }
}

public enum FuzzEnvironment {
    /// SHREDVAULT_FUZZ_SEED (decimal or 0x-hex), else a fresh random seed.
    public static func seed() -> UInt64 {
        if let text = ProcessInfo.processInfo.environment["SHREDVAULT_FUZZ_SEED"] {
            if text.hasPrefix("0x"), let v = UInt64(text.dropFirst(2), radix: 16) { return v }
            if let v = UInt64(text) { return v }
        }
        var system = SystemRandomNumberGenerator()
        return system.next()
    }

    /// SHREDVAULT_FUZZ_ITERATIONS when it is a positive integer, else `fallback`.
    public static func iterations(default fallback: Int) -> Int {
        if let text = ProcessInfo.processInfo.environment["SHREDVAULT_FUZZ_ITERATIONS"], let v = Int(text), v > 0 { return v }
        return fallback
    }
}

/// Prints at once: if the run crashes, the seed and what was running are already on screen.
public func say(_ line: String) {
    print(line)
    fflush(nil)
}
