#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Why a socket operation did not complete.
enum SocketFailure: Error {
    /// A system call failed (after `EINTR` retries).
    case system(SystemCallError)
    /// The deadline passed while waiting for the socket.
    case timedOut
    /// `read` returned 0: the peer closed its end.
    case endOfFile
}

/// One connected, non-blocking stream socket; the descriptor is closed in `deinit`.
///
/// Non-blocking so that every wait goes through `poll(2)` with the request's deadline: a blocking
/// `read` could not honour a timeout without `SO_RCVTIMEO`, which does not cover `connect` and restarts
/// its clock after each partial read.
final class Socket {
    let fd: Int32

    private init(fd: Int32) {
        self.fd = fd
    }

    deinit {
        closeDescriptor(fd)
    }

    // MARK: Connecting

    /// Opens a socket to `endpoint`, waiting until `deadline` at most.
    static func connect(to endpoint: ClientEndpoint, deadline: Deadline) throws(ClientError) -> Socket {
        let what = "connecting to \(endpoint.displayName)"
        switch endpoint {
        case .unixSocket(let path):
            var address = try unixAddress(path, what: what)
            let socket = try makeSocket(family: AF_UNIX, what: what)
            try withUnsafeBytes(of: &address) { (raw) throws(ClientError) in
                try socket.connect(raw, deadline: deadline, what: what)
            }
            return socket
        case .tcp(let host, let port):
            var address = try ipv4Address(host: host, port: port, what: what)
            let socket = try makeSocket(family: AF_INET, what: what)
            var one: Int32 = 1
            // Requests go out in one sendmsg, but a body bigger than the send buffer would otherwise wait
            // for the ACK of the first segment (Nagle) on every request.
            _ = try? syscall("setsockopt") {
                setsockopt(socket.fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            }
            try withUnsafeBytes(of: &address) { (raw) throws(ClientError) in
                try socket.connect(raw, deadline: deadline, what: what)
            }
            return socket
        }
    }

    /// A `sockaddr_un` for `path`, refusing paths `sun_path` cannot hold.
    private static func unixAddress(_ path: String, what: String) throws(ClientError) -> sockaddr_un {
        var address = sockaddr_un()
        let capacity = MemoryLayout.size(ofValue: address.sun_path)  // 108 on Linux, 104 on Darwin
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty else {
            throw ClientError(code: .connect, message: "\(what) failed: the socket path is empty")
        }
        guard !bytes.contains(0) else {
            throw ClientError(code: .connect, message: "\(what) failed: the socket path contains a NUL byte")
        }
        guard bytes.count < capacity else {
            throw ClientError(
                code: .connect,
                message: "\(what) failed: the socket path is \(bytes.count) bytes long, but a Unix socket "
                    + "path (sun_path) holds at most \(capacity - 1) bytes plus the terminating NUL; "
                    + "use a shorter path (or a relative one, from the socket's directory)"
            )
        }
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)  // the rest stays zero: the NUL terminator
        }
        return address
    }

    /// A `sockaddr_in` for an IPv4 literal or `localhost`: loopback tools only, so no name resolution.
    private static func ipv4Address(host: String, port: Int, what: String) throws(ClientError) -> sockaddr_in {
        guard (1...65535).contains(port) else {
            throw ClientError(code: .connect, message: "\(what) failed: port \(port) is not in 1...65535")
        }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        let literal = host == "localhost" ? "127.0.0.1" : host
        guard inet_pton(AF_INET, literal, &address.sin_addr) == 1 else {
            throw ClientError(
                code: .connect,
                message: "\(what) failed: the host must be an IPv4 literal or \"localhost\" (no name resolution)"
            )
        }
        return address
    }

    /// `socket(2)`: close-on-exec, non-blocking, and on Darwin `SO_NOSIGPIPE` (Linux uses `MSG_NOSIGNAL`
    /// on each `sendmsg` instead), so a write to a closed peer returns `EPIPE` rather than killing us.
    private static func makeSocket(family: Int32, what: String) throws(ClientError) -> Socket {
        do throws(SystemCallError) {
            #if canImport(Darwin)
            let fd = try syscall("socket") { Darwin.socket(family, SOCK_STREAM, 0) }
            let socket = Socket(fd: fd)
            let flags = try syscall("fcntl") { fcntl(fd, F_GETFL) }
            _ = try syscall("fcntl") { fcntl(fd, F_SETFL, flags | O_NONBLOCK) }
            _ = try syscall("fcntl") { fcntl(fd, F_SETFD, FD_CLOEXEC) }
            var one: Int32 = 1
            _ = try syscall("setsockopt") {
                setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, socklen_t(MemoryLayout<Int32>.size))
            }
            return socket
            #else
            let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue)
            let fd = try syscall("socket") { socket(family, type, 0) }
            return Socket(fd: fd)
            #endif
        } catch {
            throw ClientError(code: .connect, message: "\(what) failed: \(error.description)")
        }
    }

    /// A non-blocking `connect(2)` bounded by `deadline`.
    ///
    /// TCP answers `EINPROGRESS` and reports the outcome through `SO_ERROR` once writable. A Unix socket
    /// whose listen backlog is full answers `EAGAIN` instead and has started nothing, so we retry with a
    /// short back-off until the deadline.
    private func connect(_ address: UnsafeRawBufferPointer, deadline: Deadline, what: String) throws(ClientError) {
        let sockaddrPointer = address.baseAddress!.assumingMemoryBound(to: sockaddr.self)
        let length = socklen_t(address.count)
        var backoffMilliseconds: Int32 = 1
        while true {
            do throws(SystemCallError) {
                _ = try syscall("connect") {
                    #if canImport(Darwin)
                    Darwin.connect(fd, sockaddrPointer, length)
                    #elseif canImport(Musl)
                    Musl.connect(fd, sockaddrPointer, length)
                    #else
                    Glibc.connect(fd, sockaddrPointer, length)
                    #endif
                }
                return
            } catch {
                switch error.errno {
                case EISCONN:
                    return  // an EINTR retry found the first attempt finished
                case EINPROGRESS, EALREADY:
                    try finishConnect(deadline: deadline, what: what)
                    return
                case EAGAIN where !deadline.hasPassed:
                    let left = deadline.pollTimeoutMilliseconds  // -1: no deadline
                    let pause = left < 0 ? backoffMilliseconds : max(1, min(backoffMilliseconds, left))
                    _ = try? syscall("poll") { poll(nil, 0, pause) }  // a sleep that EINTR cannot cut short
                    backoffMilliseconds = min(backoffMilliseconds * 2, 50)
                case EAGAIN:
                    throw ClientError(
                        code: .connect,
                        message: "\(what) failed: the server's listen backlog stayed full for \(deadline.timeoutDescription)"
                    )
                default:
                    throw ClientError(code: .connect, message: "\(what) failed: \(error.description)")
                }
            }
        }
    }

    private func finishConnect(deadline: Deadline, what: String) throws(ClientError) {
        do throws(SocketFailure) {
            try wait(for: Int16(POLLOUT), deadline: deadline)
        } catch {
            switch error {
            case .timedOut:
                throw ClientError(code: .connect, message: "\(what) failed: no connection within \(deadline.timeoutDescription)")
            case .system(let failure):
                throw ClientError(code: .connect, message: "\(what) failed: \(failure.description)")
            case .endOfFile:
                throw ClientError(code: .connect, message: "\(what) failed: the connection was closed")
            }
        }
        var pending: Int32 = 0
        var size = socklen_t(MemoryLayout<Int32>.size)
        do throws(SystemCallError) {
            _ = try syscall("getsockopt") { getsockopt(fd, SOL_SOCKET, SO_ERROR, &pending, &size) }
        } catch {
            throw ClientError(code: .connect, message: "\(what) failed: \(error.description)")
        }
        if pending != 0 {
            let failure = SystemCallError(function: "connect", errno: pending)
            throw ClientError(code: .connect, message: "\(what) failed: \(failure.description)")
        }
    }

    // MARK: I/O

    /// Waits with `poll(2)` until `events` (or an error/hang-up) is reported, or `deadline` passes.
    func wait(for events: Int16, deadline: Deadline) throws(SocketFailure) {
        var descriptor = pollfd(fd: fd, events: events, revents: 0)
        while true {
            if deadline.hasPassed { throw .timedOut }
            let ready: Int32
            do throws(SystemCallError) {
                // The timeout is computed inside the closure so an EINTR retry uses the time left.
                ready = try syscall("poll") { poll(&descriptor, 1, deadline.pollTimeoutMilliseconds) }
            } catch {
                throw .system(error)
            }
            if ready > 0 {
                if descriptor.revents & Int16(POLLNVAL) != 0 {
                    throw .system(SystemCallError(function: "poll", errno: EBADF))
                }
                // POLLERR/POLLHUP: the next read or write reports the condition itself.
                return
            }
        }
    }

    /// True when nothing is pending on the socket: no data, no end-of-file, no error. A kept-alive
    /// connection that fails this was closed by the server (or received bytes it should not have) and must
    /// not carry a new request.
    func isIdleAndOpen() -> Bool {
        var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard let ready = try? syscall("poll", { poll(&descriptor, 1, 0) }) else { return false }
        return ready == 0
    }

    /// Reads at most `buffer.count` bytes, waiting until `deadline` for some. Throws `.endOfFile` when the
    /// peer has closed.
    func read(into buffer: UnsafeMutableRawBufferPointer, deadline: Deadline) throws(SocketFailure) -> Int {
        while true {
            let count: Int
            do throws(SystemCallError) {
                count = try syscall("read") {
                    #if canImport(Darwin)
                    Darwin.read(fd, buffer.baseAddress, buffer.count)
                    #elseif canImport(Musl)
                    Musl.read(fd, buffer.baseAddress, buffer.count)
                    #else
                    Glibc.read(fd, buffer.baseAddress, buffer.count)
                    #endif
                }
            } catch where error.wouldBlock {
                try wait(for: Int16(POLLIN), deadline: deadline)
                continue
            } catch {
                throw .system(error)
            }
            if count == 0 { throw .endOfFile }
            return count
        }
    }

    /// Writes `head` then `body` completely with `sendmsg(2)` (one gathering call in the usual case),
    /// continuing after partial writes and waiting for buffer space until `deadline`.
    ///
    /// `MSG_NOSIGNAL` (Linux) / `SO_NOSIGPIPE` (Darwin) turn a write to a closed peer into `EPIPE`.
    func writeAll(_ head: [UInt8], _ body: [UInt8], deadline: Deadline) throws(SocketFailure) {
        let total = head.count + body.count
        var sent = 0
        while sent < total {
            let result: Result<Int, SystemCallError> = head.withUnsafeBytes { headBytes in
                body.withUnsafeBytes { bodyBytes in
                    var vectors: [iovec] = []
                    if sent < headBytes.count {
                        vectors.append(iovec(
                            iov_base: UnsafeMutableRawPointer(mutating: headBytes.baseAddress! + sent),
                            iov_len: headBytes.count - sent
                        ))
                        if bodyBytes.count > 0 {
                            vectors.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: bodyBytes.baseAddress!),
                                                 iov_len: bodyBytes.count))
                        }
                    } else {
                        let offset = sent - headBytes.count
                        vectors.append(iovec(
                            iov_base: UnsafeMutableRawPointer(mutating: bodyBytes.baseAddress! + offset),
                            iov_len: bodyBytes.count - offset
                        ))
                    }
                    return vectors.withUnsafeMutableBufferPointer { iov in
                        var message = msghdr()
                        message.msg_iov = iov.baseAddress
                        message.msg_iovlen = numericCast(iov.count)
                        return Result { () throws(SystemCallError) -> Int in
                            try syscall("sendmsg") { sendmsg(fd, &message, Socket.sendFlags) }
                        }
                    }
                }
            }
            switch result {
            case .success(let count):
                sent += count
            case .failure(let error) where error.wouldBlock:
                try wait(for: Int16(POLLOUT), deadline: deadline)
            case .failure(let error):
                throw .system(error)
            }
        }
    }

    #if canImport(Darwin)
    private static let sendFlags: Int32 = 0  // SO_NOSIGPIPE is set on the socket
    #else
    private static let sendFlags = Int32(MSG_NOSIGNAL)
    #endif
}
