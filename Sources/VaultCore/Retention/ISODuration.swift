/// ISO 8601 durations restricted to exact units: `PnW`, `PnD`, `PTnH`, `PTnM`, `PTnS` and their
/// combinations (`P1DT12H`). Years and months are refused: their length in days varies,
/// and a retention period must be exact.
public enum ISODuration {
    /// The longest duration accepted anywhere (100 years): far beyond any contract, and far
    /// from overflowing a millisecond timestamp.
    public static let maximumSeconds: Int64 = 100 * 365 * 86_400

    /// Parses to whole seconds; throws `invalidArgument` naming `field`.
    public static func seconds(_ text: String, field: String = "duration") throws -> Int64 {
        let bad = VaultError.invalidArgument("\(field) must be an ISO 8601 duration in weeks, days, hours, minutes or seconds, like P92D or PT2S")
        var u = Array(text.utf8)[...]
        guard u.first == UInt8(ascii: "P"), u.count >= 3 else { throw bad }
        u = u.dropFirst()
        var total: Int64 = 0
        var inTime = false
        var number: Int64? = nil
        var seenUnits = Set<String>()
        for c in u {
            switch c {
            case UInt8(ascii: "T"):
                guard !inTime, number == nil else { throw bad }
                inTime = true
            case UInt8(ascii: "0")...UInt8(ascii: "9"):
                let (m, o1) = (number ?? 0).multipliedReportingOverflow(by: 10)
                let (a, o2) = m.addingReportingOverflow(Int64(c - UInt8(ascii: "0")))
                guard !o1, !o2, a < 1 << 40 else { throw bad }
                number = a
            default:
                guard let n = number else { throw bad }
                let unit: Int64
                let key = (inTime ? "T" : "") + String(UnicodeScalar(c))
                switch (inTime, c) {
                case (false, UInt8(ascii: "W")): unit = 7 * 86_400
                case (false, UInt8(ascii: "D")): unit = 86_400
                case (true, UInt8(ascii: "H")): unit = 3_600
                case (true, UInt8(ascii: "M")): unit = 60
                case (true, UInt8(ascii: "S")): unit = 1
                default: throw bad
                }
                guard seenUnits.insert(key).inserted else { throw bad }
                let (part, o1) = n.multipliedReportingOverflow(by: unit)
                let (sum, o2) = total.addingReportingOverflow(part)
                guard !o1, !o2 else { throw bad }
                total = sum
                number = nil
            }
        }
        // A "T" must be followed by at least one time unit (P1DT is not a duration).
        guard number == nil, !seenUnits.isEmpty, total > 0, !inTime || seenUnits.contains(where: { $0.hasPrefix("T") }) else {
            throw bad
        }
        guard total <= maximumSeconds else {
            throw VaultError.invalidArgument("\(field) must be at most \(maximumSeconds / 86_400) days")
        }
        return total
    }

    /// Formats whole seconds the way they are most naturally read (`P92D`, `PT2S`, `P1DT1H`).
    public static func format(seconds: Int64) -> String {
        var s = seconds
        let days = s / 86_400; s %= 86_400
        let hours = s / 3_600; s %= 3_600
        let minutes = s / 60; s %= 60
        var out = "P"
        if days > 0 { out += "\(days)D" }
        if hours > 0 || minutes > 0 || s > 0 || days == 0 {
            out += "T"
            if hours > 0 { out += "\(hours)H" }
            if minutes > 0 { out += "\(minutes)M" }
            if s > 0 || (hours == 0 && minutes == 0) { out += "\(s)S" }
        }
        return out
    }
}
