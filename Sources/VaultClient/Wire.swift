/// Why reading a response stopped.
enum ReceiveFailure: Error {
    case socket(SocketFailure)
    /// The bytes received break HTTP/1.1; the text says how, and never quotes a header value.
    case malformed(String)
}

/// A connected socket plus the bytes read from it and not yet consumed.
///
/// One per TCP/Unix connection: a reconnect makes a new one, so bytes of an old connection can never be
/// taken for the response on a new one.
final class Wire {
    let socket: Socket
    /// Requests that got a complete response on this connection.
    var completedExchanges = 0
    /// Bytes read since ``startExchange()``: zero means "no byte of the response yet", which is what makes
    /// a failure safe to retry on a fresh connection.
    private(set) var bytesReceived = 0

    /// Unconsumed bytes are `storage[start...]`.
    private var storage: [UInt8] = []
    private var start = 0
    /// Where ``readLine(budget:deadline:)`` resumes its search for LF.
    private var scanned = 0
    /// `read(2)` lands here first; one allocation per connection.
    private var scratch = [UInt8](repeating: 0, count: 64 * 1024)

    init(socket: Socket) {
        self.socket = socket
    }

    var unconsumedCount: Int { storage.count - start }

    func startExchange() {
        bytesReceived = 0
    }

    /// One `read(2)` into `scratch`; returns the count (throws `.endOfFile` on EOF).
    private func readScratch(deadline: Deadline) throws(SocketFailure) -> Int {
        let socket = self.socket
        let result: Result<Int, SocketFailure> = scratch.withUnsafeMutableBytes { raw in
            Result { () throws(SocketFailure) -> Int in try socket.read(into: raw, deadline: deadline) }
        }
        let count = try result.get()
        bytesReceived += count
        return count
    }

    /// Appends at least one byte to the unconsumed bytes.
    private func fill(deadline: Deadline) throws(SocketFailure) {
        if start > 0, start == storage.count || start >= 32 * 1024 {
            storage.removeFirst(start)
            scanned -= start
            start = 0
        }
        let count = try readScratch(deadline: deadline)
        storage.append(contentsOf: scratch[0..<count])
    }

    /// The next line without its terminator. Lines end in CRLF; a bare LF is accepted too (RFC 9112 §2.2).
    ///
    /// `budget` is what is left of the header-block limit; the line and its terminator are charged to it,
    /// and a line that would exceed it is a protocol error (checked before more bytes are read, so a peer
    /// cannot make us buffer without bound).
    func readLine(budget: inout Int, limitDescription: String, deadline: Deadline) throws(ReceiveFailure) -> ArraySlice<UInt8> {
        scanned = max(scanned, start)
        while true {
            if let newline = storage[scanned...].firstIndex(of: 0x0A) {
                let consumed = newline + 1 - start
                if consumed > budget { throw .malformed(limitDescription) }
                budget -= consumed
                var end = newline
                if end > start, storage[end - 1] == 0x0D { end -= 1 }
                let line = storage[start..<end]
                start = newline + 1
                scanned = start
                return line
            }
            scanned = storage.count
            if storage.count - start >= budget { throw .malformed(limitDescription) }
            do throws(SocketFailure) {
                try fill(deadline: deadline)
            } catch {
                throw .socket(error)
            }
        }
    }

    /// Appends exactly `count` bytes to `body`.
    func readExactly(_ count: Int, into body: inout [UInt8], deadline: Deadline) throws(SocketFailure) {
        var remaining = count
        let buffered = min(remaining, unconsumedCount)
        if buffered > 0 {
            body.append(contentsOf: storage[start..<(start + buffered)])
            start += buffered
            remaining -= buffered
        }
        // Large bodies go from `scratch` straight into `body`; only bytes past the end (which a correct
        // server does not send before we ask) are kept for later.
        while remaining > 0 {
            let got = try readScratch(deadline: deadline)
            let used = min(got, remaining)
            body.append(contentsOf: scratch[0..<used])
            remaining -= used
            if used < got {
                storage.removeFirst(start)
                start = 0
                scanned = 0
                storage.append(contentsOf: scratch[used..<got])
            }
        }
    }

    /// Appends everything up to end-of-file to `body`; more than `limit` bytes in total is an error.
    func readToEnd(into body: inout [UInt8], limit: Int, deadline: Deadline) throws(ReceiveFailure) {
        body.append(contentsOf: storage[start...])
        start = storage.count
        while true {
            if body.count > limit { throw .malformed("the response body exceeds \(limit) bytes") }
            let got: Int
            do throws(SocketFailure) {
                got = try readScratch(deadline: deadline)
            } catch .endOfFile {
                return
            } catch {
                throw .socket(error)
            }
            body.append(contentsOf: scratch[0..<got])
        }
    }
}
