import Foundation
import Testing
@testable import VaultCLI

/// The bench's latency histogram (kept hand-written rather than HdrHistogram: fixed size, no
/// locking, merge per connection thread), checked against exact nearest-rank percentiles.
@Suite struct LatencyHistogramTests {
    /// Exact nearest-rank percentile of sorted values.
    private func exact(_ sorted: [UInt64], _ q: Double) -> UInt64 {
        let rank = max(1, min(sorted.count, Int((q * Double(sorted.count)).rounded(.up))))
        return sorted[rank - 1]
    }

    @Test func percentilesAreWithinTheBucketResolutionOfTheExactOnes() {
        var rng = SystemRandomNumberGenerator()
        // Log-uniform from 1 µs to ~17 min, so every octave is exercised, in two halves merged.
        let values: [UInt64] = (0..<200_000).map { _ in
            UInt64(pow(2.0, Double.random(in: 0..<30, using: &rng)))
        }
        var a = LatencyHistogram(), b = LatencyHistogram()
        for (i, v) in values.enumerated() {
            if i % 2 == 0 { a.record(microseconds: v) } else { b.record(microseconds: v) }
        }
        a.merge(b)
        let sorted = values.sorted()
        #expect(a.count == UInt64(values.count))
        #expect(a.maximum == sorted.last)
        let mean = Double(values.reduce(0, +)) / Double(values.count)
        #expect(abs(a.mean - mean) < 1e-6 * mean)
        for q in [0.0, 0.001, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0] {
            let want = exact(sorted, q), got = a.percentile(q)
            // Never below the true value, at most one bucket (1/512, 0.2 %) above it; exact below 1,024 µs.
            #expect(got >= want, "p\(q): \(got) < exact \(want)")
            if want < 1024 {
                #expect(got == want, "p\(q): \(got) != exact \(want)")
            } else {
                #expect(Double(got - want) <= Double(want) / 512 + 1, "p\(q): \(got) vs exact \(want)")
            }
        }
    }

    @Test func bucketsTileTheRangeWithoutGapsOrOverlap() {
        var previousTop: UInt64? = nil
        for i in 0..<(1024 + 32 * 512 - 1) {
            let top = LatencyHistogram.upperBound(ofBucket: i)
            #expect(LatencyHistogram.index(of: top) == i)
            if let previousTop {
                #expect(LatencyHistogram.index(of: previousTop + 1) == i, "a gap before bucket \(i)")
            }
            previousTop = top
        }
        #expect(LatencyHistogram.index(of: .max) == 1024 + 32 * 512 - 1)
        var empty = LatencyHistogram()
        #expect(empty.percentile(0.99) == 0 && empty.mean == 0)
        empty.record(microseconds: 5)
        #expect(empty.percentile(0.5) == 5)
    }
}
