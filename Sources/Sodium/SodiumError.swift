/// The closed set of errors thrown by the `Sodium` module.
///
/// Messages never carry secret material: `invalidLength` names the parameter and
/// its sizes, nothing else, and `authenticationFailure` is deliberately opaque.
public enum SodiumError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A sealed box did not authenticate.
    ///
    /// Opaque on purpose (as swift-crypto's `CryptoKitError.authenticationFailure`):
    /// it does not say whether the key, the associated data or the box was wrong,
    /// nor whether the box was merely too short, so it cannot serve as an oracle.
    case authenticationFailure

    /// `sodium_malloc` returned NULL (out of memory or address space).
    case allocationFailure

    /// `sodium_init()` returned -1.
    case initializationFailure

    /// A buffer had the wrong size.
    ///
    /// The `String` names the parameter (e.g. `"key"`), never its content. For
    /// parameters accepting a range, `expected` is the bound that was crossed.
    case invalidLength(String, expected: Int, actual: Int)

    /// A message safe to log.
    public var description: String {
        switch self {
        case .authenticationFailure:
            "authentication failure"
        case .allocationFailure:
            "secure memory allocation failed (sodium_malloc)"
        case .initializationFailure:
            "libsodium initialization failed (sodium_init)"
        case let .invalidLength(name, expected, actual):
            "invalid length for \(name): expected \(expected) bytes, got \(actual)"
        }
    }
}
