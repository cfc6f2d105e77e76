#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Serialises a request head, refusing anything that would not be valid HTTP/1.1 — in particular CR or LF
/// in the path or a header, which would let a caller-supplied string add header lines of its own.
///
/// Error messages say which part is invalid, never its content: a rejected value may be a credential.
enum RequestEncoder {
    struct Encoded {
        var head: [UInt8]
        /// The caller sent `Connection: close`: drop the connection after the response.
        var closeAfter: Bool
    }

    /// - Parameter rawHeaderLines: complete, already validated `name: value\r\n` lines appended as they are
    ///   (the bearer token, which never becomes a `String`).
    static func encode(method: String, path: String, headers: [(String, String)], rawHeaderLines: [UInt8],
                       bodyCount: Int?, defaultHost: String) throws(ClientError) -> Encoded {
        guard !method.isEmpty, method.utf8.allSatisfy(isTokenByte) else {
            throw invalid("the method is not an HTTP token")
        }
        // origin-form or asterisk-form; bytes outside visible ASCII must be percent-encoded by the caller.
        guard !path.isEmpty, path.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw invalid("the request target must be visible ASCII without spaces (percent-encode the rest)")
        }

        var head: [UInt8] = []
        head.reserveCapacity(128 + method.utf8.count + path.utf8.count + rawHeaderLines.count
            + headers.reduce(0) { $0 + $1.0.utf8.count + $1.1.utf8.count + 4 })
        head += method.utf8
        head.append(0x20)
        head += path.utf8
        head += " HTTP/1.1\r\n".utf8

        var hasHost = false
        var hasContentLength = false
        var closeAfter = false
        for (index, (name, value)) in headers.enumerated() {
            guard !name.isEmpty, name.utf8.allSatisfy(isTokenByte) else {
                throw invalid("header field \(index + 1) has a name that is not an HTTP token")
            }
            guard value.utf8.allSatisfy(isFieldValueByte) else {
                throw invalid("the value of header field \(name) contains CR, LF or another control character")
            }
            if asciiCaseInsensitiveEquals(name, "host") {
                hasHost = true
            } else if asciiCaseInsensitiveEquals(name, "content-length") {
                let expected = bodyCount ?? 0
                let digits = value.trimmingSpaces
                guard !hasContentLength, !digits.isEmpty, digits.utf8.allSatisfy(isDigit),
                      let given = Int(digits), given == expected
                else {
                    throw invalid("the Content-Length header does not match the \(expected)-byte body")
                }
                hasContentLength = true
            } else if asciiCaseInsensitiveEquals(name, "transfer-encoding") {
                throw invalid("request bodies are always sent with Content-Length; Transfer-Encoding is not supported")
            } else if asciiCaseInsensitiveEquals(name, "connection") {
                if Framing.list(value).contains(where: { asciiCaseInsensitiveEquals(String($0), "close") }) {
                    closeAfter = true
                }
            }
            head += name.utf8
            head += ": ".utf8
            head += value.utf8
            head += "\r\n".utf8
        }
        head += rawHeaderLines
        if !hasHost {
            head += "Host: ".utf8
            head += defaultHost.utf8
            head += "\r\n".utf8
        }
        // A body is always framed by Content-Length; POST/PUT/PATCH without one say "0" (RFC 9110 §8.6:
        // a user agent SHOULD send it when the method defines a meaning for content).
        if !hasContentLength, bodyCount != nil || ["POST", "PUT", "PATCH"].contains(method) {
            head += "Content-Length: ".utf8
            head += String(bodyCount ?? 0).utf8
            head += "\r\n".utf8
        }
        head += "\r\n".utf8
        return Encoded(head: head, closeAfter: closeAfter)
    }

    private static func invalid(_ what: String) -> ClientError {
        ClientError(code: .protocolError, message: "invalid request: \(what)")
    }
}

extension String {
    fileprivate var trimmingSpaces: Substring {
        var s = self[...]
        while let c = s.first, c == " " || c == "\t" { s = s.dropFirst() }
        while let c = s.last, c == " " || c == "\t" { s = s.dropLast() }
        return s
    }
}

/// Overwrites `bytes` with zeros in a way the optimiser may not drop (`explicit_bzero` / `memset_s`):
/// used on request heads that carried a bearer token, so it does not linger in freed heap memory.
func wipe(_ bytes: inout [UInt8]) {
    bytes.withUnsafeMutableBytes { raw in
        guard let base = raw.baseAddress, raw.count > 0 else { return }
        #if canImport(Darwin)
        _ = memset_s(base, raw.count, 0, raw.count)
        #else
        explicit_bzero(base, raw.count)
        #endif
    }
}
