import Foundation
import Testing
import VaultClient
#if canImport(Glibc)
import Glibc
#endif

/// The real binary under SIGTERM with requests in flight: it stops accepting, finishes what
/// it took, commits, removes its socket and exits 0; every write it acknowledged is there
/// after a restart.
@Suite struct ShutdownTests {
    static let binary: String = shredvaultTestBinary

    static func run(_ args: [String], dir: String) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = args
        p.currentDirectoryURL = URL(fileURLWithPath: dir)
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    static func serve(dir: String, log: String) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = ["serve", "--data-dir", dir + "/data", "--key-file", dir + "/keys/master.key"]
        FileManager.default.createFile(atPath: log, contents: nil)
        p.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        return p
    }

    static func waitForSocket(_ path: String, _ process: Process) throws {
        for _ in 0..<600 {
            var st = stat()
            if stat(path, &st) == 0 { return }
            guard process.isRunning else { throw CocoaError(.executableLoad) }
            usleep(50_000)
        }
        process.terminate()
        throw CocoaError(.executableLoad)
    }

    static func waitForExit(_ process: Process, seconds: Int) -> Bool {
        for _ in 0..<(seconds * 20) {
            if !process.isRunning { return true }
            usleep(50_000)
        }
        kill(process.processIdentifier, SIGKILL)
        return false
    }

    @Test func sigtermWithRequestsInFlightLosesNothingAcknowledged() async throws {
        let dir = "/tmp/sv-" + UUID().uuidString.prefix(8).lowercased()
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (status, output) = try Self.run(["init", "--data-dir", dir + "/data", "--key-file", dir + "/keys/master.key"], dir: dir)
        try #require(status == 0)
        let opToken = try #require((try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: String])?["operator_token"])
        let socket = dir + "/data/shredvault.sock"

        let daemon = try Self.serve(dir: dir, log: dir + "/serve.log")
        defer { if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) } }
        try Self.waitForSocket(socket, daemon)
        let op = VaultHTTPClient(endpoint: .unixSocket(path: socket), token: Array(opToken.utf8))
        #expect(try await op.send("POST", "/v1/admin/tenants", body: json(["id": "acme"])).status == 201)
        let issued = try await op.send("POST", "/v1/admin/tokens", body: json(["tenant": "acme", "role": "agent", "name": "load"]))
        let agentToken = Array((try issued.object()["token"] as! String).utf8)

        // 16 connections write until the daemon goes away; SIGTERM arrives mid-stream.
        let acknowledged = try await withThrowingTaskGroup(of: [(String, Int)].self) { group in
            for c in 0..<16 {
                group.addTask {
                    let client = VaultHTTPClient(endpoint: .unixSocket(path: socket), token: agentToken, timeout: 10)
                    var mine: [(String, Int)] = []
                    for i in 0..<2000 {
                        let n = c * 10_000 + i
                        guard let r = try? await client.send("POST", "/v1/records",
                                                             body: json(["subject": "s\(n % 50)", "category": "personal", "channel": "web", "data": ["n": n]]))
                        else { break }
                        if r.status == 201, let id = try? r.object()["id"] as? String { mine.append((id, n)) }
                        else if r.status != 201 { break }
                    }
                    return mine
                }
            }
            group.addTask {
                try await Task.sleep(for: .milliseconds(700))
                kill(daemon.processIdentifier, SIGTERM)
                return []
            }
            var all: [(String, Int)] = []
            for try await part in group { all += part }
            return all
        }
        #expect(Self.waitForExit(daemon, seconds: 30), "the daemon did not exit after SIGTERM")
        #expect(daemon.terminationStatus == 0)
        #expect(!FileManager.default.fileExists(atPath: socket), "the socket was not removed")
        #expect(!acknowledged.isEmpty)

        let again = try Self.serve(dir: dir, log: dir + "/serve2.log")
        defer { if again.isRunning { kill(again.processIdentifier, SIGTERM); _ = Self.waitForExit(again, seconds: 30) } }
        try Self.waitForSocket(socket, again)
        let reader = VaultHTTPClient(endpoint: .unixSocket(path: socket), token: agentToken)
        for (id, n) in acknowledged {
            let r = try await reader.send("GET", "/v1/records/\(id)")
            #expect(r.status == 200, "acknowledged record \(id) lost")
            if r.status == 200 { #expect((try r.object()["data"] as? [String: Any])?["n"] as? Int == n) }
        }
        let verify = try await op.send("GET", "/v1/admin/audit/verify")
        #expect(try verify.object()["intact"] as? Bool == true)
        // The log never holds a token.
        let log = (try? String(contentsOfFile: dir + "/serve.log", encoding: .utf8)) ?? ""
        #expect(!log.contains(opToken) && !log.contains(String(decoding: agentToken, as: UTF8.self)))
    }

    /// Half-closed and garbage connections do not take the daemon down.
    @Test func halfClosedAndGarbageConnectionsAreSurvived() async throws {
        try await ServerHarness.with { (h: ServerHarness) async throws in
            for payload in ["POST /v1/records HTTP/1.1\r\nHost: vault\r\nContent-Length: 100\r\n\r\n{\"subj", "GARBAGE\r\n\r\n", "GET /healthz HTTP/1.1\r\n"] {
                let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
                var addr = sockaddr_un()
                addr.sun_family = sa_family_t(AF_UNIX)
                withUnsafeMutableBytes(of: &addr.sun_path) { p in p.copyBytes(from: Array(h.socket.utf8)) }
                let connected = withUnsafePointer(to: &addr) { p in
                    p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
                }
                #expect(connected == 0)
                _ = payload.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
                shutdown(fd, Int32(SHUT_WR))
                close(fd)
            }
            let health = try await h.client(nil).send("GET", "/healthz")
            #expect(health.status == 200)
        }
    }
}
