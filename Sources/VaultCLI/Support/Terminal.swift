import Foundation
import Locking
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Standard output and standard error, unbuffered enough for scripts and spinners.
enum Terminal {
    /// Writes a line to stdout.
    static func out(_ line: String) {
        write(1, line + "\n")
    }

    /// Writes a line to stderr.
    static func error(_ line: String) {
        write(2, line + "\n")
    }

    /// Writes bytes to stdout exactly as given (raw `--json` answers, a token).
    static func outBytes(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { writeAll(1, $0) }
    }

    static func write(_ fd: Int32, _ text: String) {
        var text = text
        text.withUTF8 { writeAll(fd, UnsafeRawBufferPointer($0)) }
    }

    static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) {
        guard var p = bytes.baseAddress else { return }
        var left = bytes.count
        while left > 0 {
            let n = Glibc.write(fd, p, left)
            if n < 0 {
                if errno == EINTR { continue }
                return  // EPIPE (reader gone) or a closed descriptor: nothing sensible to do
            }
            p += n
            left -= n
        }
    }

    static var stderrIsTerminal: Bool { isatty(2) == 1 }
    static var stdinIsTerminal: Bool { isatty(0) == 1 }
}

/// A one-line spinner on stderr for long operations, drawn only when stderr is a terminal
/// (so logs and pipes get no control characters).
///
/// `Sendable`: the text and the running flag live in a `Locked`; the drawing thread reads
/// them only through it.
/// - Warning: Call `finish()` (a `defer` is best): the drawing thread keeps the spinner,
///   and itself, alive until then.
final class Progress: Sendable {
    private struct State {
        var text: String
        var running = true
    }

    private let state: Locked<State>
    private let enabled: Bool
    private let started: Int64

    init(_ text: String) {
        state = Locked(State(text: text))
        enabled = Terminal.stderrIsTerminal
        started = Progress.nowMilliseconds()
        guard enabled else { return }
        let thread = Thread { [self] in self.draw() }
        thread.start()
    }

    /// Replaces the text (e.g. `erasing 37/1000`).
    func update(_ text: String) {
        state.withLock { $0.text = text }
    }

    /// Prints a line on stdout without tearing the spinner: the spinner line is cleared
    /// first and redrawn on the next frame.
    func emit(_ line: String) {
        state.withLock { s in
            if enabled && s.running { Terminal.write(2, "\r\u{1B}[K") }
            Terminal.out(line)
        }
    }

    /// Stops drawing and clears the line.
    func finish() {
        // The drawer writes each frame under the same lock, so no frame can land after the clear.
        state.withLock { s in
            if enabled && s.running { Terminal.write(2, "\r\u{1B}[K") }
            s.running = false
        }
    }

    private func draw() {
        let frames = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"]
        var i = 0
        while true {
            let seconds = (Progress.nowMilliseconds() - started) / 1000
            let running = state.withLock { s in
                if s.running { Terminal.write(2, "\r\u{1B}[K\(frames[i % frames.count]) \(s.text) \(seconds)s") }
                return s.running
            }
            guard running else { return }
            i += 1
            usleep(100_000)
        }
    }

    private static func nowMilliseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }
}
