import Foundation
import Locking
import Testing
@testable import VaultClient

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - A canned HTTP/1.1 server on a Unix socket (or TCP loopback), one thread per connection

/// A request as the canned server read it.
private struct CannedRequest: Sendable {
    var method: String
    var path: String
    var headers: [(name: String, value: String)]
    var body: [UInt8]

    func values(_ name: String) -> [String] {
        headers.filter { $0.name.lowercased() == name.lowercased() }.map(\.value)
    }

    func header(_ name: String) -> String? { values(name).first }
}

/// The server side of one accepted connection; used only on that connection's thread.
private final class CannedPeer {
    let fd: Int32
    /// Which accepted connection this is, from 0.
    let index: Int
    private var buffer: [UInt8] = []
    private let record: (CannedRequest) -> Void

    init(fd: Int32, index: Int, record: @escaping (CannedRequest) -> Void) {
        self.fd = fd
        self.index = index
        self.record = record
    }

    /// The next request (head and Content-Length body); `nil` at end-of-file.
    func readRequest() -> CannedRequest? {
        let terminator: [UInt8] = Array("\r\n\r\n".utf8)
        var headEnd: Int?
        while headEnd == nil {
            if let range = firstRange(of: terminator) {
                headEnd = range
            } else if !fill() {
                return nil
            }
        }
        let head = String(decoding: buffer[0..<headEnd!], as: UTF8.self)
        buffer.removeFirst(headEnd! + 4)
        var lines = head.components(separatedBy: "\r\n")
        let requestLine = lines.removeFirst().split(separator: " ", maxSplits: 2).map(String.init)
        var headers: [(name: String, value: String)] = []
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers.append((String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
        }
        let length = headers.first { $0.name.lowercased() == "content-length" }.flatMap { Int($0.value) } ?? 0
        while buffer.count < length {
            if !fill() { return nil }
        }
        let body = Array(buffer[0..<length])
        buffer.removeFirst(length)
        let request = CannedRequest(method: requestLine[0], path: requestLine.count > 1 ? requestLine[1] : "",
                                    headers: headers, body: body)
        record(request)
        return request
    }

    private func firstRange(of needle: [UInt8]) -> Int? {
        guard buffer.count >= needle.count else { return nil }
        for start in 0...(buffer.count - needle.count) where buffer[start..<(start + needle.count)].elementsEqual(needle) {
            return start
        }
        return nil
    }

    private func fill() -> Bool {
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count > 0 {
                buffer += chunk[0..<count]
                return true
            }
            if count < 0, errno == EINTR { continue }
            return false
        }
    }

    func write(_ text: String) { write(Array(text.utf8)) }

    func write(_ bytes: [UInt8]) {
        var sent = 0
        while sent < bytes.count {
            let count = bytes.withUnsafeBytes { raw in
                send(fd, raw.baseAddress! + sent, raw.count - sent, Int32(MSG_NOSIGNAL))
            }
            if count < 0 {
                if errno == EINTR { continue }
                return
            }
            sent += count
        }
    }

    /// Writes `text` in pieces of `size` bytes with a pause between them, so the client sees partial reads.
    func writeSlowly(_ text: String, pieceSize: Int, pause: useconds_t = 1_000) {
        let bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let end = min(offset + pieceSize, bytes.count)
            write(Array(bytes[offset..<end]))
            offset = end
            usleep(pause)
        }
    }

    /// Blocks until the client closes (or the server stops): a server that never answers.
    func waitForClose() {
        while fill() { buffer.removeAll() }
    }
}

/// An HTTP server with canned behaviour for client tests. Each accepted connection runs `handler` on its
/// own thread; the counters let tests see how many connections the client made.
///
/// `@unchecked Sendable`: mutable state is in `state` (a `Locked`); `listener` and the paths are immutable.
private final class CannedServer: @unchecked Sendable {
    private struct State {
        var accepted = 0
        var closed = 0
        var requests: [CannedRequest] = []
        var open: Set<Int32> = []
        var stopping = false
    }

    let directory: String
    let endpoint: ClientEndpoint
    private let listener: Int32
    private let state = Locked(State())
    private let threads = DispatchGroup()

    init(tcp: Bool = false, handler: @escaping @Sendable (CannedPeer) -> Void) throws {
        // mkdtemp under /tmp keeps the socket path far below sun_path's 108 bytes.
        var template = Array("/tmp/vcli-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw POSIXError(.EIO)
        }
        directory = String(cString: made)
        let fd: Int32
        if tcp {
            fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
            address.sin_port = 0
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, 4)
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard bound == 0 else { throw POSIXError(.EADDRINUSE) }
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
            }
            endpoint = .tcp(host: "localhost", port: Int(UInt16(bigEndian: address.sin_port)))
        } else {
            let path = directory + "/s.sock"
            fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard bound == 0 else { throw POSIXError(.EADDRINUSE) }
            endpoint = .unixSocket(path: path)
        }
        listener = fd
        guard listen(listener, 64) == 0 else { throw POSIXError(.EIO) }

        threads.enter()
        Thread { [self] in
            acceptLoop(handler)
            threads.leave()
        }.start()
    }

    private func acceptLoop(_ handler: @escaping @Sendable (CannedPeer) -> Void) {
        while true {
            let fd = accept(listener, nil, nil)
            if fd >= 0 { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
            if fd < 0 {
                if errno == EINTR { continue }
                return
            }
            let index: Int? = state.withLock { state in
                if state.stopping { return nil }
                state.accepted += 1
                state.open.insert(fd)
                return state.accepted - 1
            }
            guard let index else {
                close(fd)
                return
            }
            threads.enter()
            Thread { [self] in
                let peer = CannedPeer(fd: fd, index: index) { request in
                    self.state.withLock { $0.requests.append(request) }
                }
                handler(peer)
                // Closed before it is counted: a test that waits for the count then finds the
                // connection closed (counting first raced a loaded machine: CI, 2026-12-07).
                _ = state.withLock { $0.open.remove(fd) }
                close(fd)
                state.withLock { $0.closed += 1 }
                threads.leave()
            }.start()
        }
    }

    var acceptedConnections: Int { state.withLock { $0.accepted } }
    var requests: [CannedRequest] { state.withLock { $0.requests } }

    /// Waits (up to 5 s) until `count` connections have been closed by the server.
    func waitUntilClosed(_ count: Int) {
        for _ in 0..<5_000 {
            if state.withLock({ $0.closed }) >= count { return }
            usleep(1_000)
        }
    }

    func stop() {
        let open: Set<Int32>? = state.withLock { state in
            if state.stopping { return nil }
            state.stopping = true
            return state.open
        }
        guard let open else { return }
        // Wake the accept loop: shutdown does on Linux; a connection of our own does everywhere.
        shutdown(listener, Int32(SHUT_RDWR))
        if case .unixSocket(let path) = endpoint, let wake = try? HTTPConnection(endpoint: .unixSocket(path: path), timeout: 1) {
            wake.close()
        }
        for fd in open { shutdown(fd, Int32(SHUT_RDWR)) }
        _ = threads.wait(timeout: .now() + 10)
        close(listener)
        try? FileManager.default.removeItem(atPath: directory)
    }

    deinit { stop() }
}

/// Runs blocking client code on a thread of its own, so the tests never block the cooperative pool
/// (other suites in this target run a real server on it).
private func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread {
            do {
                continuation.resume(returning: try body())
            } catch {
                continuation.resume(throwing: error)
            }
        }.start()
    }
}

/// The `ClientError` thrown by `body`, or `nil` if it returned.
private func clientError(_ body: () throws -> Void) -> ClientError? {
    do {
        try body()
        return nil
    } catch {
        // The client throws only ClientError (typed throws); anything else is a test bug worth a crash.
        return (error as! ClientError)
    }
}

private func response(_ status: Int = 200, _ body: String, headers: String = "") -> String {
    "HTTP/1.1 \(status) Whatever\r\nContent-Length: \(body.utf8.count)\r\n\(headers)\r\n\(body)"
}

/// Answers every request on every connection with 200 and a body naming the request.
private let answerEverything: @Sendable (CannedPeer) -> Void = { peer in
    while let request = peer.readRequest() {
        peer.write(response(200, "\(request.method) \(request.path)"))
    }
}

private func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

// MARK: - Tests

@Suite("ClientTests")
struct ClientTests {
    @Test("a request and its response round-trip through VaultHTTPClient with the default headers")
    func roundTrip() async throws {
        let server = try CannedServer { peer in
            while let request = peer.readRequest() {
                peer.write("HTTP/1.1 201 Created\r\nx-Echo-Method: \(request.method)\r\ncontent-length: \(request.body.count)\r\n\r\n")
                peer.write(request.body)
            }
        }
        defer { server.stop() }
        let client = VaultHTTPClient(endpoint: server.endpoint, token: Array("tok-123".utf8), timeout: 5)
        let payload = Array(#"{"subject":"s-1","data":"aGk="}"#.utf8)

        let created = try await offPool { try client.request("POST", "/v1/records", body: payload) }
        #expect(created.status == 201)
        #expect(created.body == payload)
        #expect(created.header("X-ECHO-METHOD") == "POST")
        #expect(created.header("Content-Length") == "\(payload.count)")
        #expect(created.headers.map(\.name) == ["x-Echo-Method", "content-length"])  // names as received
        #expect(created.header("missing") == nil)

        let fetched = try await client.send("GET", "/v1/records/r-1")
        #expect(fetched.status == 201)
        #expect(fetched.body.isEmpty)

        let seen = server.requests
        try #require(seen.count == 2)
        #expect(seen[0].method == "POST")
        #expect(seen[0].path == "/v1/records")
        #expect(seen[0].values("host") == ["vault"])
        #expect(seen[0].values("authorization") == ["Bearer tok-123"])
        #expect(seen[0].values("content-type") == ["application/json"])
        #expect(seen[0].values("content-length") == ["\(payload.count)"])
        #expect(seen[1].method == "GET")
        #expect(seen[1].values("host") == ["vault"])
        #expect(seen[1].values("authorization") == ["Bearer tok-123"])
        #expect(seen[1].values("content-type").isEmpty)
        #expect(seen[1].values("content-length").isEmpty)
        #expect(server.acceptedConnections == 1)
    }

    @Test("headers given by the caller replace the defaults; without a token there is no Authorization")
    func callerHeadersOverrideDefaults() async throws {
        let server = try CannedServer(handler: answerEverything)
        defer { server.stop() }
        let withToken = VaultHTTPClient(endpoint: server.endpoint, token: Array("default".utf8), timeout: 5)
        _ = try await withToken.send("PUT", "/x", body: [1, 2, 3], headers: [
            ("host", "other"), ("Authorization", "Bearer explicit"), ("Content-Type", "application/octet-stream"),
        ])
        let anonymous = VaultHTTPClient(endpoint: server.endpoint, token: nil, timeout: 5)
        _ = try await anonymous.send("POST", "/y")
        let seen = server.requests
        try #require(seen.count == 2)
        #expect(seen[0].values("host") == ["other"])
        #expect(seen[0].values("authorization") == ["Bearer explicit"])
        #expect(seen[0].values("content-type") == ["application/octet-stream"])
        #expect(seen[0].body == [1, 2, 3])
        #expect(seen[1].values("authorization").isEmpty)
        #expect(seen[1].values("content-length") == ["0"])  // POST without a body still says so
    }

    @Test("five requests on one HTTPConnection use one keep-alive connection")
    func keepAliveReuse() async throws {
        let server = try CannedServer(handler: answerEverything)
        defer { server.stop() }
        let bodies = try await offPool {
            let connection = try HTTPConnection(endpoint: server.endpoint, timeout: 5)
            return try (0..<5).map { i throws(ClientError) in text(try connection.send(method: "GET", path: "/r/\(i)").body) }
        }
        #expect(bodies == (0..<5).map { "GET /r/\($0)" })
        #expect(server.acceptedConnections == 1)
        #expect(server.requests.allSatisfy { $0.values("host") == ["vault"] })
    }

    @Test("concurrent async sends on one VaultHTTPClient are serialised over one connection")
    func concurrentAsyncSends() async throws {
        let server = try CannedServer(handler: answerEverything)
        defer { server.stop() }
        let client = VaultHTTPClient(endpoint: server.endpoint, token: Array("t".utf8), timeout: 5)
        let bodies = try await withThrowingTaskGroup(of: String.self) { group in
            for i in 0..<20 {
                group.addTask { text(try await client.send("GET", "/n/\(i)").body) }
            }
            return try await group.reduce(into: Set<String>()) { $0.insert($1) }
        }
        #expect(bodies == Set((0..<20).map { "GET /n/\($0)" }))
        #expect(server.acceptedConnections == 1)
    }

    @Test("chunked bodies are decoded (extensions, trailers, fragmented delivery) and the connection is reused")
    func chunkedDecoding() async throws {
        let server = try CannedServer { peer in
            guard peer.readRequest() != nil else { return }
            peer.writeSlowly(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + "5;name=value\r\nhello\r\n7\r\n, world\r\nA \r\n0123456789\r\n0\r\nX-Trailer: yes\r\nX-Other: 1\r\n\r\n",
                pieceSize: 7)
            guard peer.readRequest() != nil else { return }
            peer.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            guard peer.readRequest() != nil else { return }
            peer.write(response(200, "after"))
        }
        defer { server.stop() }
        let bodies = try await offPool {
            let connection = try HTTPConnection(endpoint: server.endpoint, timeout: 5)
            return try (0..<3).map { _ throws(ClientError) in text(try connection.send(method: "GET", path: "/c").body) }
        }
        #expect(bodies == ["hello, world0123456789", "", "after"])
        #expect(server.acceptedConnections == 1)
    }

    @Test("Connection: close without a length: the body runs to EOF and the next request reconnects")
    func connectionCloseReadsToEOF() async throws {
        let server = try CannedServer { peer in
            guard peer.readRequest() != nil else { return }
            peer.write("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            peer.writeSlowly("all of it, until the end", pieceSize: 5)
        }
        defer { server.stop() }
        let bodies = try await offPool {
            let connection = try HTTPConnection(endpoint: server.endpoint, timeout: 5)
            return try (0..<2).map { _ throws(ClientError) in text(try connection.send(method: "GET", path: "/e").body) }
        }
        #expect(bodies == ["all of it, until the end", "all of it, until the end"])
        #expect(server.acceptedConnections == 2)
    }

    @Test("an HTTP/1.0 response without keep-alive ends the connection")
    func http10ClosesAfterResponse() async throws {
        let server = try CannedServer { peer in
            while peer.readRequest() != nil {
                peer.write("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
            }
        }
        defer { server.stop() }
        let statuses = try await offPool {
            let connection = try HTTPConnection(endpoint: server.endpoint, timeout: 5)
            return try (0..<2).map { _ throws(ClientError) in try connection.send(method: "GET", path: "/").status }
        }
        #expect(statuses == [200, 200])
        #expect(server.acceptedConnections == 2)
    }

    @Test("responses to HEAD and 204/304 have no body, and 1xx interim responses are skipped")
    func bodilessAndInterimResponses() async throws {
        let server = try CannedServer { peer in
            guard peer.readRequest() != nil else { return }
            peer.write("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")  // HEAD: the GET body's length, no body
            guard peer.readRequest() != nil else { return }
            peer.write("HTTP/1.1 204 No Content\r\n\r\n")
            guard peer.readRequest() != nil else { return }
            peer.write("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n")
            guard peer.readRequest() != nil else { return }
            peer.write("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
            peer.write(response(200, "final"))
        }
        defer { server.stop() }
        let results = try await offPool {
            let connection = try HTTPConnection(endpoint: server.endpoint, timeout: 5)
            return try [("HEAD", "/h"), ("DELETE", "/d"), ("GET", "/n"), ("POST", "/p")].map { (method, path) throws(ClientError) in
                let r = try connection.send(method: method, path: path, body: method == "POST" ? [1] : nil)
                return "\(r.status):\(text(r.body))"
            }
        }
        #expect(results == ["200:", "204:", "304:", "200:final"])
        #expect(server.acceptedConnections == 1)
    }

    @Test("request and response bodies larger than the socket buffers")
    func largeBodies() async throws {
        let server = try CannedServer { peer in
            while let request = peer.readRequest() {
                peer.write("HTTP/1.1 200 OK\r\nContent-Length: \(request.body.count)\r\n\r\n")
                peer.write(request.body)
            }
        }
        defer { server.stop() }
        let big = (0..<(4 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let client = VaultHTTPClient(endpoint: server.endpoint, token: nil, timeout: 20)
        let echoed = try await client.send("PUT", "/big", body: big)
        #expect(echoed.body == big)
        #expect(server.requests.first?.body == big)
    }

    @Test("a kept-alive connection the server closed while idle is replaced before sending, for GET and POST")
    func idleConnectionClosedByServer() async throws {
        // One response per connection, then the server closes (without saying Connection: close).
        let server = try CannedServer { peer in
            guard let request = peer.readRequest() else { return }
            peer.write(response(200, "\(request.method) on \(peer.index)"))
        }
        defer { server.stop() }
        let bodies = try await offPool {
            let connection = try HTTPConnection(endpoint: server.endpoint, timeout: 5)
            var bodies = [text(try connection.send(method: "GET", path: "/1").body)]
            server.waitUntilClosed(1)
            bodies.append(text(try connection.send(method: "GET", path: "/2").body))
            server.waitUntilClosed(2)
            bodies.append(text(try connection.send(method: "POST", path: "/3", body: [7]).body))
            return bodies
        }
        #expect(bodies == ["GET on 0", "GET on 1", "POST on 2"])
        #expect(server.acceptedConnections == 3)
        #expect(server.requests.map(\.method) == ["GET", "GET", "POST"])  // each sent exactly once
    }

    @Test("closed idle connection found only on write/EOF: GET is retried once on a new connection, POST throws .closed")
    func staleConnectionRetryRules() async throws {
        let server = try CannedServer { peer in
            guard let request = peer.readRequest() else { return }
            peer.write(response(200, "\(request.method) on \(peer.index)"))
        }
        defer { server.stop() }
        let (bodies, postError) = try await offPool {
            let connection = try HTTPConnection(endpoint: server.endpoint, timeout: 5)
            connection.detectsClosedIdleConnection = false  // reach the EPIPE / EOF path
            var bodies = [text(try connection.send(method: "GET", path: "/1").body)]
            server.waitUntilClosed(1)
            bodies.append(text(try connection.send(method: "GET", path: "/2").body))
            server.waitUntilClosed(2)
            let postError = clientError { _ = try connection.send(method: "POST", path: "/3", body: Array("x".utf8)) }
            // The connection is usable again afterwards.
            bodies.append(text(try connection.send(method: "DELETE", path: "/4").body))
            return (bodies, postError)
        }
        #expect(bodies == ["GET on 0", "GET on 1", "DELETE on 2"])
        #expect(postError?.code == .closed)
        #expect(postError?.message.contains("not idempotent") == true)
        #expect(server.requests.map(\.method) == ["GET", "GET", "DELETE"])  // the POST never reached a server
    }

    @Test("the server reads a request on a reused connection and closes without answering: GET retried once, POST not")
    func closeAfterReadingRequest() async throws {
        // Connection 0 answers its first request and drops its second; later connections answer everything.
        let server = try CannedServer { peer in
            if peer.index == 0 {
                guard peer.readRequest() != nil else { return }
                peer.write(response(200, "first"))
                _ = peer.readRequest()
                return
            }
            answerEverything(peer)
        }
        defer { server.stop() }
        let body = try await offPool {
            let connection = try HTTPConnection(endpoint: server.endpoint, timeout: 5)
            _ = try connection.send(method: "GET", path: "/a")
            return text(try connection.send(method: "GET", path: "/b").body)
        }
        #expect(body == "GET /b")
        #expect(server.requests.map(\.path) == ["/a", "/b", "/b"])
        #expect(server.acceptedConnections == 2)

        let postServer = try CannedServer { peer in
            guard peer.readRequest() != nil else { return }
            peer.write(response(200, "first"))
            _ = peer.readRequest()
        }
        defer { postServer.stop() }
        let error = try await offPool {
            let connection = try HTTPConnection(endpoint: postServer.endpoint, timeout: 5)
            _ = try connection.send(method: "GET", path: "/a")
            return clientError { _ = try connection.send(method: "POST", path: "/b", body: [1]) }
        }
        #expect(error?.code == .closed)
        #expect(postServer.requests.map(\.method) == ["GET", "POST"])  // the POST was processed once, not resent
        #expect(postServer.acceptedConnections == 1)
    }

    @Test("the retry happens once only: a second drop on the fresh connection is reported")
    func retryOnlyOnce() async throws {
        let server = try CannedServer { peer in
            if peer.index == 0 {
                guard peer.readRequest() != nil else { return }
                peer.write(response(200, "first"))
            }
            _ = peer.readRequest()  // then close without answering
        }
        defer { server.stop() }
        let error = try await offPool {
            let connection = try HTTPConnection(endpoint: server.endpoint, timeout: 5)
            _ = try connection.send(method: "GET", path: "/a")
            return clientError { _ = try connection.send(method: "GET", path: "/b") }
        }
        #expect(error?.code == .closed)
        #expect(server.requests.map(\.path) == ["/a", "/b", "/b"])
        #expect(server.acceptedConnections == 2)
    }

    @Test("a server that closes in the middle of a response: .closed, and no retry once bytes arrived")
    func serverClosesMidResponse() async throws {
        let partials = [
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
            "HTTP/1.1 200 OK\r\nContent-Len",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc",
        ]
        for partial in partials {
            let server = try CannedServer { peer in
                guard peer.readRequest() != nil else { return }
                peer.write(response(200, "ok"))
                guard peer.readRequest() != nil else { return }
                peer.write(partial)
            }
            defer { server.stop() }
            let error = try await offPool {
                let connection = try HTTPConnection(endpoint: server.endpoint, timeout: 5)
                _ = try connection.send(method: "GET", path: "/a")
                return clientError { _ = try connection.send(method: "GET", path: "/b") }
            }
            #expect(error?.code == .closed, "\(partial)")
            #expect(error?.message.contains("in the middle of the response") == true, "\(String(describing: error))")
            #expect(server.requests.count == 2)
            #expect(server.acceptedConnections == 1)
        }
    }

    @Test("a server that never answers: .timeout after the per-request timeout, connection dropped")
    func timeout() async throws {
        let server = try CannedServer { peer in
            _ = peer.readRequest()
            peer.waitForClose()
        }
        defer { server.stop() }
        let (error, elapsed) = try await offPool {
            let connection = try HTTPConnection(endpoint: server.endpoint, timeout: 0.3)
            let start = Date()
            let error = clientError { _ = try connection.send(method: "GET", path: "/slow") }
            return (error, Date().timeIntervalSince(start))
        }
        #expect(error?.code == .timeout)
        #expect(error?.message.contains("no response within 0.3 s") == true, "\(String(describing: error))")
        // Functional, not a performance assertion: it waited about the timeout, and did not hang.
        #expect(elapsed >= 0.25)
        #expect(elapsed < 10)
    }

    @Test("the async form times out too, without blocking the caller's executor")
    func asyncTimeout() async throws {
        let server = try CannedServer { peer in
            _ = peer.readRequest()
            peer.waitForClose()
        }
        defer { server.stop() }
        let client = VaultHTTPClient(endpoint: server.endpoint, token: nil, timeout: 0.3)
        await #expect(throws: ClientError.self) { _ = try await client.send("GET", "/slow") }
        do {
            _ = try await client.send("GET", "/slow")
        } catch let error as ClientError {
            #expect(error.code == .timeout)
        }
    }

    @Test("a socket path longer than 107 bytes is refused at connect with a clear message")
    func socketPathTooLong() async throws {
        let long = "/tmp/" + String(repeating: "p", count: 103)  // 108 bytes
        #expect(long.utf8.count == 108)
        let error = clientError { _ = try HTTPConnection(endpoint: .unixSocket(path: long), timeout: 1) }
        #expect(error?.code == .connect)
        #expect(error?.message.contains("108 bytes long") == true, "\(String(describing: error))")
        #expect(error?.message.contains("at most 107 bytes") == true)

        let viaClient = VaultHTTPClient(endpoint: .unixSocket(path: long), token: nil)
        #expect(clientError { _ = try viaClient.request("GET", "/") }?.code == .connect)

        // 107 bytes fits: the failure is then the missing file, not the length.
        let longest = "/tmp/" + String(repeating: "q", count: 102)
        let missing = clientError { _ = try HTTPConnection(endpoint: .unixSocket(path: longest), timeout: 1) }
        #expect(missing?.code == .connect)
        #expect(missing?.message.contains("ENOENT") == true, "\(String(describing: missing))")
    }

    @Test("a full listen backlog is waited out until the timeout, then reported as .connect")
    func listenBacklogFull() async throws {
        // A listener with backlog 0 that accepts nothing: Linux queues one connection, the next connect gets
        // EAGAIN (non-blocking AF_UNIX), which the client retries with back-off until its deadline.
        var template = Array("/tmp/vcli-XXXXXX".utf8CString)
        let directory = String(cString: try #require(template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }))
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/b.sock"
        let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        defer { close(listener) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        try #require(bound == 0 && listen(listener, 0) == 0)

        let (queued, full, late) = try await offPool {
            let queued = clientError { _ = try HTTPConnection(endpoint: .unixSocket(path: path), timeout: 1) }
            let full = clientError { _ = try HTTPConnection(endpoint: .unixSocket(path: path), timeout: 0.3) }
            // Space appears while the client is backing off: the connect then succeeds.
            Thread {
                usleep(100_000)
                let accepted = accept(listener, nil, nil)
                if accepted >= 0 { _ = fcntl(accepted, F_SETFD, FD_CLOEXEC) }
                if accepted >= 0 { close(accepted) }
            }.start()
            let late = clientError { _ = try HTTPConnection(endpoint: .unixSocket(path: path), timeout: 5) }
            return (queued, full, late)
        }
        #expect(queued == nil)
        #expect(full?.code == .connect)
        #expect(full?.message.contains("listen backlog") == true, "\(String(describing: full))")
        #expect(late == nil)
    }

    @Test("connecting to a missing socket, or to an unsupported TCP host, is a .connect error naming the endpoint")
    func connectFailures() async throws {
        let path = "/tmp/vcli-missing-\(UUID().uuidString.prefix(8))/none.sock"
        let error = clientError { _ = try HTTPConnection(endpoint: .unixSocket(path: path), timeout: 1) }
        #expect(error?.code == .connect)
        #expect(error?.message.contains(path) == true)
        #expect(error?.message.contains("ENOENT") == true)

        let named = clientError { _ = try HTTPConnection(endpoint: .tcp(host: "vault.example", port: 80), timeout: 1) }
        #expect(named?.code == .connect)
        #expect(named?.message.contains("IPv4 literal") == true)
        let badPort = clientError { _ = try HTTPConnection(endpoint: .tcp(host: "127.0.0.1", port: 0), timeout: 1) }
        #expect(badPort?.code == .connect)
        #expect(clientError { _ = try HTTPConnection(endpoint: .unixSocket(path: ""), timeout: 1) }?.code == .connect)
    }

    @Test("TCP loopback endpoints work the same way")
    func tcpEndpoint() async throws {
        let server = try CannedServer(tcp: true, handler: answerEverything)
        defer { server.stop() }
        let client = VaultHTTPClient(endpoint: server.endpoint, token: Array("tcp".utf8), timeout: 5)
        for i in 0..<3 {
            let r = try await client.send("GET", "/t/\(i)")
            #expect(text(r.body) == "GET /t/\(i)")
        }
        #expect(server.acceptedConnections == 1)
    }

    @Test("close() ends the connection; later sends throw .closed")
    func explicitClose() async throws {
        let server = try CannedServer(handler: answerEverything)
        defer { server.stop() }
        let error = try await offPool {
            let connection = try HTTPConnection(endpoint: server.endpoint, timeout: 5)
            _ = try connection.send(method: "GET", path: "/")
            connection.close()
            connection.close()
            return clientError { _ = try connection.send(method: "GET", path: "/") }
        }
        #expect(error?.code == .closed)
        #expect(server.acceptedConnections == 1)
    }

    @Test("requests that are not valid HTTP/1.1 are refused before anything is sent", arguments: [
        ("GET", "/a\r\nX-Injected: 1", [(String, String)]()),
        ("GET", "/a b", []),
        ("GET", "", []),
        ("G T", "/", []),
        ("GET", "/", [("X-Evil", "v\r\nX-Injected: 1")]),
        ("GET", "/", [("X Bad", "v")]),
        ("GET", "/", [("", "v")]),
        ("GET", "/", [("X-Nul", "a\u{0}b")]),
        ("POST", "/", [("Transfer-Encoding", "chunked")]),
        ("POST", "/", [("Content-Length", "5")]),
    ])
    func invalidRequests(method: String, path: String, headers: [(String, String)]) async throws {
        let server = try CannedServer(handler: answerEverything)
        defer { server.stop() }
        let (error, after) = try await offPool {
            let connection = try HTTPConnection(endpoint: server.endpoint, timeout: 5)
            let error = clientError { _ = try connection.send(method: method, path: path, headers: headers, body: [1, 2]) }
            return (error, try connection.send(method: "GET", path: "/ok").status)
        }
        #expect(error?.code == .protocolError)
        #expect(error?.message.contains("Injected") == false)
        #expect(after == 200)
        #expect(server.requests.map(\.path) == ["/ok"])
        #expect(server.acceptedConnections == 1)
    }

    @Test("malformed responses are protocol errors", arguments: [
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 20 OK\r\n\r\n",
        "HTTP/2 200 OK\r\n\r\n",
        "FOO/1.1 200 OK\r\n\r\n",
        "HTTP/1.1 099 Low\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nNo-Colon-Here\r\n\r\n",
        "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nName : x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX-A: a\u{1}b\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFF\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nBad Trailer\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX-Big: <70000 bytes>\r\n\r\n",
    ])
    func malformedResponses(raw: String) async throws {
        let raw = raw.replacingOccurrences(of: "<70000 bytes>", with: String(repeating: "b", count: 70_000))
        let server = try CannedServer { peer in
            guard peer.readRequest() != nil else { return }
            peer.write(raw)
            peer.waitForClose()
        }
        defer { server.stop() }
        let error = try await offPool {
            let connection = try HTTPConnection(endpoint: server.endpoint, timeout: 5)
            return clientError { _ = try connection.send(method: "GET", path: "/") }
        }
        #expect(error?.code == .protocolError, "\(String(describing: error))")
        #expect(error?.message.contains("malformed response") == true)
    }

    @Test("lenient but valid framing: bare LF line ends, repeated equal Content-Length, empty reason phrase")
    func lenientFraming() async throws {
        let server = try CannedServer { peer in
            guard peer.readRequest() != nil else { return }
            peer.write("HTTP/1.1 200 OK\nContent-Length: 2\nX-A:   padded value \t\n\nok")
            guard peer.readRequest() != nil else { return }
            peer.write("HTTP/1.1 404\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\nnot")
        }
        defer { server.stop() }
        let (first, second) = try await offPool {
            let connection = try HTTPConnection(endpoint: server.endpoint, timeout: 5)
            return (try connection.send(method: "GET", path: "/1"), try connection.send(method: "GET", path: "/2"))
        }
        #expect(text(first.body) == "ok")
        #expect(first.header("x-a") == "padded value")
        #expect(second.status == 404)
        #expect(text(second.body) == "not")
        #expect(server.acceptedConnections == 1)
    }

    @Test("error messages never contain the token or the request body")
    func errorsNeverLeakSecrets() async throws {
        let tokenMarker = "TOKEN-MARKER-7f3a9c"
        let bodyMarker = "BODY-MARKER-91c2e4"
        let token = Array(tokenMarker.utf8)
        let body = Array(#"{"data":"\#(bodyMarker)"}"#.utf8)
        var errors: [ClientError] = []

        // connect
        let nowhere = VaultHTTPClient(endpoint: .unixSocket(path: "/tmp/vcli-none-\(UUID().uuidString.prefix(6)).sock"), token: token)
        errors += [clientError { _ = try nowhere.request("POST", "/v1/records", body: body) }].compactMap { $0 }

        // Connection 0 never answers (timeout), 1 sends a malformed header, 2 closes mid-body, 3 answers a GET
        // then drops the POST that follows (non-idempotent → .closed).
        let server = try CannedServer { peer in
            guard peer.readRequest() != nil else { return }
            switch peer.index {
            case 0:
                peer.waitForClose()
            case 1:
                peer.write("HTTP/1.1 200 OK\r\nBad Header\r\n\r\n")
                peer.waitForClose()
            case 2:
                peer.write("HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\npartial")
            default:
                peer.write(response(200, "ok"))
                _ = peer.readRequest()
            }
        }
        defer { server.stop() }
        func post(_ client: VaultHTTPClient) async {
            do {
                _ = try await client.send("POST", "/v1/records", body: body, headers: [("X-Trace", "t")])
            } catch let error as ClientError {
                errors.append(error)
            } catch {
                Issue.record("unexpected \(error)")
            }
        }
        await post(VaultHTTPClient(endpoint: server.endpoint, token: token, timeout: 0.3))
        await post(VaultHTTPClient(endpoint: server.endpoint, token: token, timeout: 5))
        await post(VaultHTTPClient(endpoint: server.endpoint, token: token, timeout: 5))
        let reused = VaultHTTPClient(endpoint: server.endpoint, token: token, timeout: 5)
        _ = try await reused.send("GET", "/first")
        await post(reused)
        // a header value with a control character that carries the marker
        let headerClient = VaultHTTPClient(endpoint: server.endpoint, token: token)
        errors += [clientError {
            _ = try headerClient.request("GET", "/", headers: [("X-Secret", "\(tokenMarker)\r\n\(bodyMarker)")])
        }].compactMap { $0 }
        // an invalid token
        let badToken = VaultHTTPClient(endpoint: server.endpoint, token: Array("\(tokenMarker)\n".utf8))
        errors += [clientError { _ = try badToken.request("GET", "/") }].compactMap { $0 }

        #expect(errors.map(\.code) == [.connect, .timeout, .protocolError, .closed, .closed, .protocolError, .protocolError])
        for error in errors {
            for rendered in [error.message, error.description, String(describing: error), "\(error)"] {
                #expect(!rendered.contains(tokenMarker), "\(rendered)")
                #expect(!rendered.contains(bodyMarker), "\(rendered)")
                #expect(!rendered.contains("/v1/records"), "\(rendered)")  // paths may name subjects
            }
        }
    }
}
