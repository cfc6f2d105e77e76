/// Reads one HTTP/1.1 response from a ``Wire``: status line, header fields, then the body framed as
/// RFC 9112 §6.3 says.
struct ResponseParser {
    /// The status line and header fields together may not exceed this (64 KiB); trailer fields get the same.
    static let headerBlockLimit = 64 * 1024
    /// A chunk-size line with its extensions.
    static let chunkLineLimit = 4 * 1024
    /// A guard against a length no vault response has; checked before allocating.
    static let bodyLimit = 1 << 30
    /// Interim (1xx) responses skipped before a final one.
    static let interimLimit = 16

    let wire: Wire
    let deadline: Deadline

    /// Where a failure happened, so the caller can say so.
    enum Stage {
        case head
        case body(expected: Int?)
    }

    private(set) var stage = Stage.head

    struct Head {
        var minorVersion: Int
        var status: Int
        var headers: [(name: String, value: String)]
    }

    /// The response and whether the connection may carry another request.
    mutating func readResponse(requestMethod: String) throws(ReceiveFailure) -> (HTTPResponse, keepAlive: Bool) {
        stage = .head
        var head = try readHead()
        var interim = 0
        // 1xx responses (100 Continue, 103 Early Hints) precede the real one; 101 would switch protocols,
        // which we never ask for, so it is returned and the connection dropped.
        while head.status < 200, head.status != 101 {
            interim += 1
            if interim > ResponseParser.interimLimit { throw .malformed("more than \(ResponseParser.interimLimit) interim (1xx) responses") }
            head = try readHead()
        }

        let framing = try Framing(head.headers)
        var keepAlive: Bool
        if head.minorVersion == 0 {
            keepAlive = framing.connectionTokens.contains("keep-alive") && !framing.connectionTokens.contains("close")
        } else {
            keepAlive = !framing.connectionTokens.contains("close")
        }

        var body: [UInt8] = []
        let bodiless = requestMethod == "HEAD" || head.status < 200 || head.status == 204 || head.status == 304
        if head.status == 101 {
            keepAlive = false
        } else if bodiless {
            // A HEAD response's Content-Length describes the GET body; 204/304 have none (RFC 9112 §6.3 (1)).
        } else if framing.chunked {
            stage = .body(expected: nil)
            try readChunkedBody(into: &body)
        } else if let length = framing.contentLength {
            guard length <= ResponseParser.bodyLimit else {
                throw .malformed("Content-Length \(length) exceeds the \(ResponseParser.bodyLimit)-byte limit")
            }
            stage = .body(expected: length)
            body.reserveCapacity(min(length, 16 << 20))
            do throws(SocketFailure) {
                try wire.readExactly(length, into: &body, deadline: deadline)
            } catch {
                throw .socket(error)
            }
        } else {
            // No length: the body runs to end-of-file (RFC 9112 §6.3 (8)), so the connection cannot be reused.
            stage = .body(expected: nil)
            keepAlive = false
            try wire.readToEnd(into: &body, limit: ResponseParser.bodyLimit, deadline: deadline)
        }
        return (HTTPResponse(status: head.status, headers: head.headers, body: body), keepAlive)
    }

    // MARK: Head

    func readHead() throws(ReceiveFailure) -> Head {
        var budget = ResponseParser.headerBlockLimit
        let limit = "the response header block exceeds \(ResponseParser.headerBlockLimit) bytes"
        let statusLine = try wire.readLine(budget: &budget, limitDescription: limit, deadline: deadline)
        let (minor, status) = try ResponseParser.parseStatusLine(statusLine)
        var headers: [(name: String, value: String)] = []
        while true {
            let line = try wire.readLine(budget: &budget, limitDescription: limit, deadline: deadline)
            if line.isEmpty { break }
            headers.append(try ResponseParser.parseField(line))
        }
        return Head(minorVersion: minor, status: status, headers: headers)
    }

    /// `HTTP/1.x SP 3DIGIT [SP reason-phrase]`.
    static func parseStatusLine(_ line: ArraySlice<UInt8>) throws(ReceiveFailure) -> (minor: Int, status: Int) {
        let bytes = Array(line)
        let prefix: [UInt8] = Array("HTTP/1.".utf8)
        guard bytes.count >= 12, bytes.starts(with: prefix), isDigit(bytes[7]), bytes[8] == 0x20,
              isDigit(bytes[9]), isDigit(bytes[10]), isDigit(bytes[11])
        else {
            throw .malformed("the status line is not \"HTTP/1.x NNN reason\"")
        }
        if bytes.count > 12 {
            guard bytes[12] == 0x20 else { throw .malformed("the status code is not 3 digits followed by a space") }
            for byte in bytes[13...] where !isFieldValueByte(byte) {
                throw .malformed("the reason phrase contains a control character")
            }
        }
        let status = Int(bytes[9] - 0x30) * 100 + Int(bytes[10] - 0x30) * 10 + Int(bytes[11] - 0x30)
        guard (100...599).contains(status) else { throw .malformed("status code \(status) is outside 100...599") }
        return (Int(bytes[7] - 0x30), status)
    }

    /// `field-name ":" OWS field-value OWS` (RFC 9110 §5); obsolete line folding is refused.
    static func parseField(_ line: ArraySlice<UInt8>) throws(ReceiveFailure) -> (name: String, value: String) {
        guard let first = line.first else { throw .malformed("an empty header field line") }
        if first == 0x20 || first == 0x09 {
            throw .malformed("a header field uses obsolete line folding")
        }
        guard let colon = line.firstIndex(of: 0x3A) else {
            throw .malformed("a header field line has no colon")
        }
        let name = line[line.startIndex..<colon]
        guard !name.isEmpty, name.allSatisfy(isTokenByte) else {
            throw .malformed("a header field name is empty or not a token (no whitespace before the colon)")
        }
        var value = line[(colon + 1)...]
        while let byte = value.first, byte == 0x20 || byte == 0x09 { value = value.dropFirst() }
        while let byte = value.last, byte == 0x20 || byte == 0x09 { value = value.dropLast() }
        guard value.allSatisfy(isFieldValueByte) else {
            throw .malformed("the value of header field \(String(decoding: name, as: UTF8.self)) contains a control character")
        }
        return (String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self))
    }

    // MARK: Chunked

    /// `*chunk last-chunk trailer-section CRLF` (RFC 9112 §7.1). Extensions are skipped; trailer fields are
    /// parsed (so a malformed one is caught) and dropped.
    private mutating func readChunkedBody(into body: inout [UInt8]) throws(ReceiveFailure) {
        while true {
            var lineBudget = ResponseParser.chunkLineLimit
            let line = try wire.readLine(
                budget: &lineBudget, limitDescription: "a chunk-size line exceeds \(ResponseParser.chunkLineLimit) bytes",
                deadline: deadline)
            let size = try ResponseParser.parseChunkSize(line)
            if size == 0 { break }
            guard size <= ResponseParser.bodyLimit - body.count else {
                throw .malformed("the chunked body exceeds \(ResponseParser.bodyLimit) bytes")
            }
            do throws(SocketFailure) {
                try wire.readExactly(size, into: &body, deadline: deadline)
            } catch {
                throw .socket(error)
            }
            var terminatorBudget = 2
            let terminator = try wire.readLine(
                budget: &terminatorBudget, limitDescription: "chunk data is not followed by CRLF", deadline: deadline)
            guard terminator.isEmpty else { throw .malformed("chunk data is not followed by CRLF") }
        }
        var trailerBudget = ResponseParser.headerBlockLimit
        while true {
            let line = try wire.readLine(
                budget: &trailerBudget,
                limitDescription: "the trailer section exceeds \(ResponseParser.headerBlockLimit) bytes",
                deadline: deadline)
            if line.isEmpty { return }
            _ = try ResponseParser.parseField(line)
        }
    }

    /// `chunk-size [ BWS ";" chunk-ext ]` with chunk-size = 1*HEXDIG.
    static func parseChunkSize(_ line: ArraySlice<UInt8>) throws(ReceiveFailure) -> Int {
        var size = 0
        var digits = 0
        var index = line.startIndex
        while index < line.endIndex, let digit = hexValue(line[index]) {
            let (shifted, overflow) = size.multipliedReportingOverflow(by: 16)
            guard !overflow, shifted <= Int.max - digit else { throw .malformed("a chunk size overflows") }
            size = shifted + digit
            digits += 1
            index += 1
        }
        guard digits > 0 else { throw .malformed("a chunk-size line does not start with a hexadecimal size") }
        var rest = line[index...]
        while let byte = rest.first, byte == 0x20 || byte == 0x09 { rest = rest.dropFirst() }
        if let byte = rest.first {
            guard byte == 0x3B else { throw .malformed("a chunk size is followed by something other than an extension") }
            guard rest.allSatisfy(isFieldValueByte) else { throw .malformed("a chunk extension contains a control character") }
        }
        return size
    }
}

/// What the header fields say about the body and the connection.
struct Framing {
    var chunked = false
    var contentLength: Int?
    /// Lowercased tokens of every `Connection` field.
    var connectionTokens: Set<String> = []

    init(_ headers: [(name: String, value: String)]) throws(ReceiveFailure) {
        var codings: [String] = []
        var lengths: [Substring] = []
        for field in headers {
            if asciiCaseInsensitiveEquals(field.name, "transfer-encoding") {
                codings += Framing.list(field.value).map { $0.lowercased() }
            } else if asciiCaseInsensitiveEquals(field.name, "content-length") {
                lengths += Framing.list(field.value)
            } else if asciiCaseInsensitiveEquals(field.name, "connection") {
                connectionTokens.formUnion(Framing.list(field.value).map { $0.lowercased() })
            }
        }
        if !codings.isEmpty {
            // We send no TE header, so chunked is the only coding a server may use (RFC 9112 §6.1).
            guard codings == ["chunked"] else {
                throw .malformed("unsupported Transfer-Encoding (only chunked is accepted)")
            }
            // Both at once is how request smuggling and response splitting start (RFC 9112 §6.3 (3)).
            guard lengths.isEmpty else {
                throw .malformed("the response has both Transfer-Encoding and Content-Length")
            }
            chunked = true
        } else if let first = lengths.first {
            // "Content-Length: 5, 5" or repeated fields are allowed only when every value agrees (§6.3 (5)).
            guard lengths.allSatisfy({ $0 == first }) else {
                throw .malformed("the response has conflicting Content-Length values")
            }
            guard !first.isEmpty, first.utf8.count <= 18, first.utf8.allSatisfy(isDigit), let value = Int(first) else {
                throw .malformed("the Content-Length value is not a decimal number")
            }
            contentLength = value
        }
    }

    /// Comma-separated list elements, trimmed, empty ones dropped.
    static func list(_ value: String) -> [Substring] {
        value.split(separator: ",").compactMap { element in
            var item = element[...]
            while let c = item.first, c == " " || c == "\t" { item = item.dropFirst() }
            while let c = item.last, c == " " || c == "\t" { item = item.dropLast() }
            return item.isEmpty ? nil : item
        }
    }
}

// MARK: Byte classes (RFC 9110 §5.6.2, §5.5)

@inline(__always)
func isDigit(_ byte: UInt8) -> Bool { byte >= 0x30 && byte <= 0x39 }

@inline(__always)
func hexValue(_ byte: UInt8) -> Int? {
    switch byte {
    case 0x30...0x39: Int(byte - 0x30)
    case 0x41...0x46: Int(byte - 0x41 + 10)
    case 0x61...0x66: Int(byte - 0x61 + 10)
    default: nil
    }
}

/// `tchar`: the characters of a token (method, field name).
func isTokenByte(_ byte: UInt8) -> Bool {
    switch byte {
    case 0x30...0x39, 0x41...0x5A, 0x61...0x7A: true
    case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"),
         UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."),
         UInt8(ascii: "^"), UInt8(ascii: "_"), UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"): true
    default: false
    }
}

/// HTAB, SP, VCHAR and obs-text: anything but the other control characters and DEL.
@inline(__always)
func isFieldValueByte(_ byte: UInt8) -> Bool {
    byte == 0x09 || (byte >= 0x20 && byte != 0x7F)
}
