import CSodium
import CVaultSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// One-time libsodium set-up and process hardening.
///
/// Every entry point of this module initializes libsodium implicitly; call
/// `initialize()` once at start-up anyway, so that a failure surfaces there as a
/// thrown error rather than later as a trap in a non-throwing function.
public enum Sodium {
    /// The result of the first `sodium_init()`; a `static let` is initialized once,
    /// thread-safely (swift_once), so the fast path is a single load.
    private static let firstInitStatus: Int32 = sodium_init()

    /// Initializes libsodium (`sodium_init()`); idempotent and thread-safe.
    ///
    /// libsodium: "sodium_init() initializes the library and should be called before
    /// any other function provided by Sodium"; it returns 0 on success, 1 if already
    /// initialized and -1 on failure (typically: no usable source of randomness).
    /// A failed first attempt is retried on the next call, since `sodium_init()`
    /// is itself idempotent and guarded by its own lock.
    /// - Throws: `SodiumError.initializationFailure` when `sodium_init()` returns -1.
    public static func initialize() throws {
        if firstInitStatus >= 0 { return }
        if sodium_init() >= 0 { return }
        throw SodiumError.initializationFailure
    }

    /// Initializes libsodium for entry points that cannot throw.
    ///
    /// - Warning: Traps if libsodium cannot initialize. Without a working random
    ///   source libsodium itself aborts in `randombytes_buf`, so carrying on is not
    ///   an option; call `initialize()` at start-up to get a thrown error instead.
    static func initializeOrTrap() {
        do {
            try initialize()
        } catch {
            fatalError("libsodium failed to initialize (sodium_init() returned -1)")
        }
    }

    /// Disables core dumps (setrlimit RLIMIT_CORE 0 + prctl PR_SET_DUMPABLE 0 on Linux) so secrets never reach a core file.
    ///
    /// `RLIMIT_CORE = 0` alone is not enough: when `core_pattern` pipes to a helper
    /// (systemd-coredump, apport) the kernel does not enforce the limit, whereas a
    /// non-dumpable process is never dumped and cannot be ptrace-attached or have
    /// `/proc/<pid>/mem` read by other unprivileged processes. Both are best effort:
    /// check `areCoreDumpsDisabled` afterwards if start-up must fail without them.
    /// - Warning: Affects the whole process and cannot be undone for the hard limit.
    ///   `PR_SET_DUMPABLE` is reset by the kernel on `execve` of a set-uid binary or a
    ///   change of credentials, so call this after dropping privileges.
    public static func disableCoreDumps() {
        var limit = rlimit(rlim_cur: 0, rlim_max: 0)
        _ = setrlimit(coreResource, &limit)
        #if os(Linux)
        _ = shredvault_set_dumpable(0)
        #endif
    }

    /// Whether core dumps are off: `RLIMIT_CORE` is 0 and, on Linux, the process is not dumpable.
    public static var areCoreDumpsDisabled: Bool {
        var limit = rlimit()
        guard getrlimit(coreResource, &limit) == 0, limit.rlim_cur == 0 else { return false }
        #if os(Linux)
        return shredvault_get_dumpable() == 0
        #else
        return true
        #endif
    }

    #if canImport(Glibc)
    private static var coreResource: __rlimit_resource_t { __rlimit_resource_t(RLIMIT_CORE.rawValue) }
    #else
    private static var coreResource: Int32 { Int32(RLIMIT_CORE) }
    #endif
}


