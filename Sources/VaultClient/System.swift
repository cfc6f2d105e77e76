#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A failed system call: which call, and the `errno` it left.
///
/// As in SwiftNIO's `NIOPosix/System.swift`, every syscall of this module goes through ``syscall(_:_:)``,
/// which retries `EINTR` and turns `-1` into this error, so no call site can forget either.
struct SystemCallError: Error {
    let function: StaticString
    let errno: Int32

    /// `strerror` text, the symbolic name when we know it, and the call: "connect(): No such file or
    /// directory (ENOENT)".
    var description: String {
        "\(function)(): \(String(cString: strerror(errno))) (\(errnoName(errno)))"
    }

    /// The peer is gone: `EPIPE` on a write to a closed socket, `ECONNRESET` when it aborted.
    var isPeerGone: Bool { errno == EPIPE || errno == ECONNRESET }

    /// The non-blocking socket has no data or no buffer space now.
    var wouldBlock: Bool { errno == EAGAIN || errno == EWOULDBLOCK }
}

/// Calls `body` until it returns something other than `-1` with `errno == EINTR`.
///
/// `body` is re-evaluated on each retry, so a call that computes a timeout from a deadline inside
/// `body` (``poll``) recomputes it after an interruption.
/// - Warning: never use this for `close(2)`: on Linux the descriptor is released even when `close`
///   reports `EINTR`, and retrying could close a descriptor another thread just opened. See ``closeDescriptor(_:)``.
@inline(__always)
func syscall<T: FixedWidthInteger>(_ function: StaticString, _ body: () -> T) throws(SystemCallError) -> T {
    while true {
        let result = body()
        if result == -1 {
            let code = errno
            if code == EINTR { continue }
            throw SystemCallError(function: function, errno: code)
        }
        return result
    }
}

/// Closes a descriptor once, ignoring `EINTR` (the descriptor is gone on Linux either way) and any
/// other error (there is nothing a client can do about a failed close of a socket).
func closeDescriptor(_ fd: Int32) {
    _ = close(fd)
}

/// The symbolic name of the errno values a socket client meets; the number for the rest.
func errnoName(_ code: Int32) -> String {
    switch code {
    case ENOENT: "ENOENT"
    case EACCES: "EACCES"
    case EPERM: "EPERM"
    case ECONNREFUSED: "ECONNREFUSED"
    case ECONNRESET: "ECONNRESET"
    case EPIPE: "EPIPE"
    case ETIMEDOUT: "ETIMEDOUT"
    case EAGAIN: "EAGAIN"
    case EINPROGRESS: "EINPROGRESS"
    case ENOTSOCK: "ENOTSOCK"
    case ENOTDIR: "ENOTDIR"
    case ENAMETOOLONG: "ENAMETOOLONG"
    case EADDRNOTAVAIL: "EADDRNOTAVAIL"
    case ENETUNREACH: "ENETUNREACH"
    case EHOSTUNREACH: "EHOSTUNREACH"
    case EMFILE: "EMFILE"
    case ENFILE: "ENFILE"
    case ENOBUFS: "ENOBUFS"
    case ENOMEM: "ENOMEM"
    case EBADF: "EBADF"
    case EINVAL: "EINVAL"
    default: "errno \(code)"
    }
}

/// A point on the monotonic clock by which a request must finish, or none (wait forever).
struct Deadline {
    /// Nanoseconds on `CLOCK_MONOTONIC`; `nil` for no deadline.
    let uptimeNanoseconds: UInt64?
    /// The timeout the deadline was made from, for messages.
    let seconds: Double

    /// A deadline `seconds` from now. A non-finite, zero or negative timeout means no deadline.
    init(secondsFromNow seconds: Double) {
        self.seconds = seconds
        if seconds.isFinite, seconds > 0 {
            let nanoseconds = min(seconds * 1e9, Double(UInt64.max / 4))
            uptimeNanoseconds = Deadline.now() &+ UInt64(nanoseconds)
        } else {
            uptimeNanoseconds = nil
        }
    }

    static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    /// Milliseconds left for `poll(2)`, rounded up so a wait never ends just before the deadline;
    /// `-1` (infinite) when there is no deadline, `0` when it has passed.
    var pollTimeoutMilliseconds: Int32 {
        guard let end = uptimeNanoseconds else { return -1 }
        let now = Deadline.now()
        if now >= end { return 0 }
        let milliseconds = (end - now + 999_999) / 1_000_000
        return Int32(clamping: milliseconds)
    }

    var hasPassed: Bool {
        guard let end = uptimeNanoseconds else { return false }
        return Deadline.now() >= end
    }

    /// "0.3 s", for messages.
    var timeoutDescription: String {
        let rounded = (seconds * 1000).rounded() / 1000
        return "\(rounded) s"
    }
}
