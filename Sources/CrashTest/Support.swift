import Foundation
import Synchronization
import Locking
import VaultClient
#if canImport(Glibc)
import Glibc
#endif

// MARK: Randomness

/// SplitMix64: small, fast, and the same sequence for the same seed on every platform, so a
/// round's choices (load time, kill moment, operation mix, payloads) follow from `--seed`.
struct SeededRandom: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    /// A generator for one purpose of one round (e.g. worker 3 of round 12), independent of the others.
    init(seed: UInt64, _ parts: UInt64...) {
        var s = seed
        for p in parts { s = SeededRandom.mix(s &+ 0x9E37_79B9_7F4A_7C15 &* (p &+ 1)) }
        state = s
    }

    static func mix(_ value: UInt64) -> UInt64 {
        var z = value
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        return SeededRandom.mix(state)
    }

    mutating func chance(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &self) < p }

    mutating func letters(_ count: Int) -> String {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789".utf8)
        var bytes = [UInt8](repeating: 0, count: count)
        for i in 0..<count { bytes[i] = alphabet[Int.random(in: 0..<alphabet.count, using: &self)] }
        return String(decoding: bytes, as: UTF8.self)
    }
}

// MARK: Time

/// Wall-clock milliseconds (CLOCK_REALTIME): the daemon stamps `expires_at` with the same clock.
func wallMilliseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
}

/// Monotonic seconds, for durations.
func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

func sleepSeconds(_ seconds: Double) {
    guard seconds > 0 else { return }
    usleep(useconds_t(min(seconds, 60) * 1_000_000))
}

func format(_ seconds: Double) -> String { String(format: "%.2f s", seconds) }

// MARK: HTTP

/// What one request came to: an answer (any status), or no answer (the daemon died, refused the
/// connection or timed out) — in which case whether it acted is unknown.
enum Outcome {
    case answered(status: Int, json: Any?)
    case noAnswer(String)

    var status: Int? {
        if case .answered(let status, _) = self { return status }
        return nil
    }

    var object: [String: Any]? {
        if case .answered(_, let json) = self { return json as? [String: Any] }
        return nil
    }

    /// The status and summary alone (Sendable).
    struct Status: Sendable {
        let status: Int?
        let summary: String
    }

    /// `status 404` or `no answer (closed: ...)`, for messages.
    var summary: String {
        switch self {
        case .answered(let status, let json):
            if status >= 400, let p = json as? [String: Any], let detail = p["detail"] as? String {
                return "status \(status) (\(detail))"
            }
            return "status \(status)"
        case .noAnswer(let why): return "no answer (\(why))"
        }
    }
}

extension VaultHTTPClient {
    /// One blocking request with a JSON body (test payloads are not secrets: Foundation's
    /// JSONSerialization is fine here).
    func call(_ method: String, _ path: String, _ body: Any? = nil) -> Outcome {
        var bytes: [UInt8]? = nil
        if let body {
            guard let data = try? JSONSerialization.data(withJSONObject: body) else {
                return .noAnswer("the request body could not be encoded")
            }
            bytes = Array(data)
        }
        do {
            let response = try request(method, path, body: bytes)
            let json = response.body.isEmpty ? nil : try? JSONSerialization.jsonObject(with: Data(response.body))
            return .answered(status: response.status, json: json)
        } catch {
            return .noAnswer("\(error.code)")
        }
    }
}

/// Whether a socket file is there (for a message about a request that got no answer).
func socketState(_ path: String) -> String {
    var st = stat()
    guard lstat(path, &st) == 0 else { return "the socket file is missing (\(String(cString: strerror(errno))))" }
    return (st.st_mode & S_IFMT) == S_IFSOCK ? "the socket file is there (inode \(st.st_ino))" : "the socket path holds a non-socket"
}

// MARK: Threads

/// Runs `body(i)` for i in 0..<count on `threads` threads (blocking HTTP calls, so plain threads
/// rather than the cooperative pool), returning the results in order.
func parallelMap<T: Sendable>(_ count: Int, threads: Int, _ body: @escaping @Sendable (Int, Int) -> T) -> [T] {
    guard count > 0 else { return [] }
    let next = Atomic<Int>(0)
    let results = Locked<[T?]>([T?](repeating: nil, count: count))
    let n = max(1, min(threads, count))
    runThreads(n) { worker in
        while true {
            let i = next.add(1, ordering: .relaxed).oldValue
            if i >= count { break }
            let r = body(worker, i)
            results.withLock { $0[i] = r }
        }
    }
    return results.withLock { $0.map { $0! } }
}

/// Starts `count` threads running `body(index)` and waits for all of them.
func runThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    startThreads(count, body).wait()
}

/// Starts `count` threads running `body(index)`; the group is left when all have returned.
func startThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) -> DispatchGroup {
    let group = DispatchGroup()
    for i in 0..<count {
        group.enter()
        let t = Thread {
            body(i)
            group.leave()
        }
        t.stackSize = 1 << 20
        t.start()
    }
    return group
}

/// A flag threads poll to stop.
final class StopFlag: Sendable {
    private let value = Atomic<Bool>(false)
    var isSet: Bool { value.load(ordering: .acquiring) }
    func set() { value.store(true, ordering: .releasing) }
}

/// Writes to stdout and flushes (progress lines appear as rounds finish, also through a pipe).
func say(_ line: String) {
    print(line)
    fflush(nil)  // every stream: no reference to the global `stdout`
}
