import Hummingbird
import NIOCore
import Sodium
import VaultAPI
import VaultCore

/// A JSON object body, scanned once (strict RFC 8259). Its bytes are wiped when released:
/// they carry personal data. Field readers name the field in errors, never its value.
final class JSONBody {
    private var bytes: [UInt8]
    private let members: [String: JSONMember]

    init(bytes: [UInt8], allowed: Set<String>) throws {
        self.bytes = bytes
        let scanned: [JSONMember]
        do {
            scanned = try bytes.withUnsafeBytes { b throws(JSONError) in try JSONScanner.objectMembers(b) }
        } catch let error as JSONError {
            self.bytes.withUnsafeMutableBytes { secureZero($0) }
            throw Problem(.badRequest, error.description)
        }
        var byKey: [String: JSONMember] = [:]
        for m in scanned {
            guard allowed.contains(m.key) else {
                self.bytes.withUnsafeMutableBytes { secureZero($0) }
                throw Problem(.badRequest, "unknown field \(JSONBody.quotedName(m.key))")
            }
            byKey[m.key] = m
        }
        members = byKey
    }

    /// Wraps an element of a JSON array that is itself an object (batch writes).
    convenience init(slice: UnsafeRawBufferPointer, allowed: Set<String>) throws {
        try self.init(bytes: Array(slice), allowed: allowed)
    }

    deinit { bytes.withUnsafeMutableBytes { secureZero($0) } }

    /// A client-sent key is quoted back only when it looks like a field name: a client that
    /// mistakenly sends a subject or an e-mail address as a key must not get it echoed.
    static func quotedName(_ key: String) -> String {
        let u = Array(key.utf8)
        let plain = (1...32).contains(u.count) && u.allSatisfy { ($0 >= 0x61 && $0 <= 0x7a) || $0 == 0x5f }
        return plain ? "\"\(key)\"" : "(a name that is not a field name)"
    }

    func has(_ key: String) -> Bool { members[key] != nil }

    private func raw<R>(_ key: String, _ body: (UnsafeRawBufferPointer, JSONKind) throws -> R) throws -> R? {
        guard let m = members[key] else { return nil }
        return try bytes.withUnsafeBytes { b in try body(UnsafeRawBufferPointer(rebasing: b[m.range]), m.kind) }
    }

    private func typed<R>(_ key: String, _ type: String, _ read: (UnsafeRawBufferPointer) throws(JSONError) -> R) throws -> R? {
        try raw(key) { r, kind in
            if kind == .null { return nil }
            do { return try read(r) } catch { throw Problem(.badRequest, "field \"\(key)\" must be \(type)") }
        } ?? nil
    }

    func string(_ key: String) throws -> String? { try typed(key, "a string") { r throws(JSONError) in try JSONRead.string(r) } }
    func requiredString(_ key: String) throws -> String {
        guard let s = try string(key) else { throw Problem(.badRequest, "field \"\(key)\" is required") }
        return s
    }
    func bool(_ key: String) throws -> Bool? { try typed(key, "a boolean") { r throws(JSONError) in try JSONRead.bool(r) } }
    func int(_ key: String) throws -> Int64? { try typed(key, "an integer") { r throws(JSONError) in try JSONRead.int64(r) } }
    func stringArray(_ key: String) throws -> [String]? {
        try typed(key, "an array of strings") { r throws(JSONError) in try JSONRead.stringArray(r) }
    }

    /// A string read straight into wiped memory (subjects).
    func sensitiveString(_ key: String) throws -> SensitiveBytes? {
        try typed(key, "a string") { r throws(JSONError) in try JSONRead.sensitiveString(r) }
    }

    /// The raw JSON of a member, copied into wiped memory (record data).
    func rawJSON(_ key: String) throws -> SensitiveBytes? {
        try raw(key) { r, _ in SensitiveBytes(copying: r) }
    }

    /// An object member's own members (e.g. retention "categories").
    func object(_ key: String) throws -> [(String, String)]? {
        try raw(key) { r, kind -> [(String, String)]? in
            if kind == .null { return nil }
            guard kind == .object else { throw Problem(.badRequest, "field \"\(key)\" must be an object") }
            let inner: [JSONMember]
            do { inner = try JSONScanner.objectMembers(r) } catch let error as JSONError {
                throw Problem(.badRequest, "field \"\(key)\": \(error.description)")
            }
            return try inner.map { m in
                let v = UnsafeRawBufferPointer(rebasing: r[m.range])
                do { return (m.key, try JSONRead.string(v)) } catch {
                    throw Problem(.badRequest, "field \"\(key)\" must map names to strings")
                }
            }
        } ?? nil
    }

    /// The elements of an array member that must be objects (batch writes).
    func objectArray(_ key: String, max: Int, allowed: Set<String>) throws -> [Result<JSONBody, Problem>]? {
        try raw(key) { r, kind in
            guard kind == .array else { throw Problem(.badRequest, "field \"\(key)\" must be an array") }
            let elements: [(range: Range<Int>, kind: JSONKind)]
            do { elements = try JSONScanner.arrayElements(r) } catch let error as JSONError {
                throw Problem(.badRequest, "field \"\(key)\": \(error.description)")
            }
            guard elements.count <= max else { throw Problem(.badRequest, "field \"\(key)\" holds more than \(max) items") }
            return elements.map { e in
                guard e.kind == .object else { return .failure(Problem(.badRequest, "each item must be an object")) }
                do { return .success(try JSONBody(slice: UnsafeRawBufferPointer(rebasing: r[e.range]), allowed: allowed)) }
                catch let p as Problem { return .failure(p) }
                catch { return .failure(Problem(.badRequest, "malformed item")) }
            }
        }
    }
}

extension VaultServer {
    /// Reads a JSON object body of at most `maxBody` bytes: 413 at once when the declared
    /// length is larger (before reading it), or as soon as a chunked body passes the limit.
    func body(_ request: inout Request, allowed: Set<String>) async throws -> JSONBody {
        if let declared = request.headers[.contentLength].flatMap({ Int($0) }), declared > configuration.maxBody {
            throw Problem(.contentTooLarge, "request body is larger than \(configuration.maxBody) bytes")
        }
        // `body.collect` (not `collectBody`) so the request keeps no second reference: the
        // zeroing below then writes the buffer itself rather than a copy-on-write copy.
        // NIO's own read buffers are outside our reach.
        var buffer: ByteBuffer
        do {
            buffer = try await request.body.collect(upTo: configuration.maxBody)
        } catch is NIOTooManyBytesError {
            // A chunked body (no declared length) that passed the limit.
            throw Problem(.contentTooLarge, "request body is larger than \(configuration.maxBody) bytes")
        } catch let error as CancellationError {
            throw error
        } catch {
            // The body broke HTTP framing (a bad chunk size) or broke off (the connection
            // closed before Content-Length bytes came): the client's fault, not a 500.
            throw Problem(.badRequest, "the request body could not be read")
        }
        let bytes = buffer.readableBytesView.withUnsafeBytes { Array($0) }
        buffer.withUnsafeMutableReadableBytes { secureZero($0) }
        return try JSONBody(bytes: bytes, allowed: allowed)
    }

    func duration(_ text: String?, field: String) throws -> Int64? {
        guard let text else { return nil }
        do { return try ISODuration.seconds(text, field: field) } catch let e as VaultError { throw Problem.from(e) }
    }
}

/// A JSON response.
func jsonResponse(_ status: HTTPResponse.Status = .ok, _ build: (inout JSONWriter) -> Void) -> Response {
    var w = JSONWriter(capacity: 256)
    build(&w)
    let response = Response(status: status, headers: [.contentType: "application/json"],
                            body: .init(byteBuffer: ByteBuffer(bytes: w.bytes)))
    w.wipe()
    return response
}

extension JSONWriter {
    mutating func time(_ k: String, _ ms: Int64) { field(k, RFC3339.format(milliseconds: ms)) }
    mutating func optionalString(_ k: String, _ s: String?) {
        key(k)
        if let s { string(s) } else { null() }
    }
}
