/// ISO 8601 durations restricted to exact units: `PnW`, `PnD`, `PTnH`, `PTnM`, `PTnS` and their
/// combinations (`P1DT12H`). Years and months are refused: their length in days varies,
/// and a retention period must be exact.
///
/// The grammar is exactly openapi.yaml's `Duration` pattern, so a client validating against
/// the spec and the vault agree on every string: units in ISO 8601's order (W, D, then after
/// `T` H, M, S), each at most once; each number a positive integer of 1 to 12 digits without
/// leading zeros (so no duration is zero and no sum can overflow); a `T` followed by at least
/// one time unit. A well-formed duration longer than `maximumSeconds` is refused as such
/// (`refused`, 422 over HTTP), not as malformed.
public enum ISODuration {
    /// The longest duration accepted anywhere (100 years): far beyond any contract, and far
    /// from overflowing a millisecond timestamp.
    public static let maximumSeconds: Int64 = 100 * 365 * 86_400

    /// Most digits of one number (999,999,999,999 weeks still sums far below Int64.max).
    static let maximumDigits = 12

    /// Parses to whole seconds; throws `invalidArgument` naming `field` for a malformed
    /// duration, `refused` for a well-formed one above `maximumSeconds`.
    public static func seconds(_ text: String, field: String = "duration") throws -> Int64 {
        let bad = VaultError.invalidArgument("\(field) must be an ISO 8601 duration in weeks, days, hours, minutes or seconds, like P92D or PT2S")
        let u = Array(text.utf8)
        guard u.first == UInt8(ascii: "P") else { throw bad }
        var i = 1
        var total: Int64 = 0
        var units = 0
        /// One `n<unit>` if the next number is followed by `unit`; false (nothing consumed) otherwise.
        func component(_ unit: UInt8, seconds: Int64) throws -> Bool {
            var j = i
            var n: Int64 = 0
            while j < u.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(u[j]) {
                n = n * 10 + Int64(u[j] - UInt8(ascii: "0"))
                j += 1
                guard j - i <= maximumDigits else { throw bad }
            }
            guard j > i, j < u.count, u[j] == unit else { return false }
            guard u[i] != UInt8(ascii: "0") else { throw bad }  // zero or a leading zero
            total += n * seconds  // at most 12 digits per unit: cannot overflow
            units += 1
            i = j + 1
            return true
        }
        _ = try component(UInt8(ascii: "W"), seconds: 7 * 86_400)
        _ = try component(UInt8(ascii: "D"), seconds: 86_400)
        if i < u.count, u[i] == UInt8(ascii: "T") {
            i += 1
            let before = units
            _ = try component(UInt8(ascii: "H"), seconds: 3_600)
            _ = try component(UInt8(ascii: "M"), seconds: 60)
            _ = try component(UInt8(ascii: "S"), seconds: 1)
            // A "T" must be followed by at least one time unit (P1DT is not a duration).
            guard units > before else { throw bad }
        }
        guard i == u.count, units > 0 else { throw bad }
        guard total <= maximumSeconds else {
            throw VaultError.refused("\(field) must be at most \(maximumSeconds / 86_400) days")
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
