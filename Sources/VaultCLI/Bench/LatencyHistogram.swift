/// Every request's latency, in microseconds: exact below 1,024 µs, and above that in buckets
/// 1/512 of their value wide (at most 0.2 % off, as HdrHistogram with 3 significant digits).
///
/// Fixed size (~130 KiB), so an hour-long run costs no more memory than a second, and one per
/// connection thread merges into the run's histogram at the end without any locking meanwhile.
struct LatencyHistogram: Sendable {
    /// Values below this are counted exactly.
    private static let exactLimit = 1024
    /// Buckets per power of two above `exactLimit`.
    private static let perOctave = 512
    /// Values from 2^(topExponent+1) µs (about 51 days) on share the last bucket.
    private static let topExponent = 41
    private static let bucketCount = exactLimit + (topExponent - 9) * perOctave

    private var counts = [UInt64](repeating: 0, count: LatencyHistogram.bucketCount)
    private(set) var count: UInt64 = 0
    private(set) var maximum: UInt64 = 0
    /// Sum of all values, for the mean.
    private var total: UInt64 = 0

    mutating func record(microseconds value: UInt64) {
        counts[Self.index(of: value)] += 1
        count += 1
        total &+= value
        if value > maximum { maximum = value }
    }

    mutating func merge(_ other: LatencyHistogram) {
        guard other.count > 0 else { return }
        for i in counts.indices where other.counts[i] != 0 { counts[i] += other.counts[i] }
        count += other.count
        total &+= other.total
        maximum = max(maximum, other.maximum)
    }

    /// The latency within which a fraction `q` (0...1) of the requests completed (nearest rank),
    /// in µs: the top of the bucket holding that rank, never above the true maximum.
    func percentile(_ q: Double) -> UInt64 {
        guard count > 0 else { return 0 }
        let rank = max(1, min(count, UInt64((q * Double(count)).rounded(.up))))
        var seen: UInt64 = 0
        for (i, c) in counts.enumerated() where c != 0 {
            seen += c
            if seen >= rank { return min(Self.upperBound(ofBucket: i), maximum) }
        }
        return maximum
    }

    /// Mean latency in µs.
    var mean: Double { count == 0 ? 0 : Double(total) / Double(count) }

    static func index(of value: UInt64) -> Int {
        if value < UInt64(exactLimit) { return Int(value) }
        let exponent = 63 - value.leadingZeroBitCount  // ≥ 10
        guard exponent <= topExponent else { return bucketCount - 1 }
        let mantissa = Int(value >> UInt64(exponent - 9))  // 512...1023
        return exactLimit + (exponent - 10) * perOctave + (mantissa - perOctave)
    }

    /// The largest value counted in bucket `i`.
    static func upperBound(ofBucket i: Int) -> UInt64 {
        if i < exactLimit { return UInt64(i) }
        if i == bucketCount - 1 { return .max }
        let exponent = (i - exactLimit) / perOctave + 10
        let mantissa = UInt64((i - exactLimit) % perOctave + perOctave)
        return ((mantissa + 1) << UInt64(exponent - 9)) - 1
    }
}
