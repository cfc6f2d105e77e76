#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A value behind a pthread mutex, with `Synchronization.Mutex`'s `withLock` shape.
///
/// Why not `Mutex`: on Linux it locks with raw futex system calls, which ThreadSanitizer
/// cannot see, so every access it protects is reported as a race (`scripts/sanitize thread`
/// did, for LMDB's registry of open paths). pthread mutexes are intercepted, so the
/// sanitizer checks our locking instead of drowning it. The mutex lives in its own
/// allocation: a Swift stored `pthread_mutex_t` may be moved or copied by `&` access.
public final class Locked<Value>: @unchecked Sendable {
    // unchecked: `value` is only touched between lock and unlock of `mutex`.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    public init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        precondition(pthread_mutex_init(mutex, nil) == 0, "pthread_mutex_init failed")
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    /// Runs `body` with the value, holding the lock.
    public func withLock<Result, Failure: Error>(_ body: (inout Value) throws(Failure) -> Result) throws(Failure) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
