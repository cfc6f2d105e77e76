import Foundation
import Sodium
import FuzzSupport
import Testing
import VaultAPI

// MARK: - Helpers

/// Runs a throwing scanner call over `bytes` and captures its outcome.
private func outcome<R>(_ bytes: [UInt8], _ body: (UnsafeRawBufferPointer) throws(JSONError) -> R) -> Result<R, JSONError> {
    bytes.withUnsafeBytes { buffer in
        Result { () throws(JSONError) -> R in try body(buffer) }
    }
}

private func outcome<R>(_ text: String, _ body: (UnsafeRawBufferPointer) throws(JSONError) -> R) -> Result<R, JSONError> {
    outcome(Array(text.utf8), body)
}

/// The error of a failed outcome, or nil (recording an issue) when it succeeded.
private func failure<R>(_ result: Result<R, JSONError>, sourceLocation: SourceLocation = #_sourceLocation) -> JSONError? {
    switch result {
    case .success:
        Issue.record("expected a JSONError", sourceLocation: sourceLocation)
        return nil
    case .failure(let error):
        return error
    }
}

private func slice(_ bytes: [UInt8], _ range: Range<Int>) -> String {
    String(decoding: bytes[range], as: UTF8.self)
}

/// Parses with Foundation, wrapping in an array so that scalars need no fragment option.
private func foundationParse(_ json: [UInt8]) throws -> Any {
    let wrapped = Array("[".utf8) + json + Array("]".utf8)
    let array = try JSONSerialization.jsonObject(with: Data(wrapped)) as? [Any]
    return try #require(array?.first)
}

private let booleanType = ObjectIdentifier(type(of: NSNumber(value: true) as AnyObject))

/// Foundation returns booleans as a dedicated NSNumber subclass; anything else is a number.
private func isFoundationBoolean(_ value: Any) -> Bool {
    ObjectIdentifier(type(of: value as AnyObject)) == booleanType
}

// MARK: - Scanner: valid documents

struct ValidDocument: Sendable, CustomTestStringConvertible {
    let name: String
    let text: String
    let kind: JSONKind
    var testDescription: String { name }
}

@Suite("JSONScanner accepts valid JSON")
struct JSONScannerValidTests {
    static let documents: [ValidDocument] = [
        // RFC 8259 section 13, first example.
        ValidDocument(name: "RFC 8259 image object", text: """
            {
                  "Image": {
                      "Width":  800,
                      "Height": 600,
                      "Title":  "View from 15th Floor",
                      "Thumbnail": {
                          "Url":    "http://www.example.com/image/481989943",
                          "Height": 125,
                          "Width":  100
                      },
                      "Animated" : false,
                      "IDs": [116, 943, 234, 38793]
                    }
                }
            """, kind: .object),
        // RFC 8259 section 13, second example.
        ValidDocument(name: "RFC 8259 array of locations", text: """
            [
                    {
                       "precision": "zip",
                       "Latitude":  37.7668,
                       "Longitude": -122.3959,
                       "Address":   "",
                       "City":      "SAN FRANCISCO",
                       "State":     "CA",
                       "Zip":       "94107",
                       "Country":   "US"
                    },
                    {
                       "precision": "zip",
                       "Latitude":  37.371991,
                       "Longitude": -122.026020,
                       "Address":   "",
                       "City":      "SUNNYVALE",
                       "State":     "CA",
                       "Zip":       "94085",
                       "Country":   "US"
                    }
            ]
            """, kind: .array),
        // RFC 8259 section 13, the three small texts containing only values.
        ValidDocument(name: "RFC 8259 string", text: #""Hello world!""#, kind: .string),
        ValidDocument(name: "RFC 8259 number", text: "42", kind: .number),
        ValidDocument(name: "RFC 8259 true", text: "true", kind: .bool),
        // RFC 8259 section 7 examples.
        ValidDocument(name: "RFC 8259 escaped G clef", text: #""\uD834\uDD1E""#, kind: .string),
        ValidDocument(name: "RFC 8259 reverse solidus", text: #""\u005C""#, kind: .string),
        ValidDocument(name: "false", text: "false", kind: .bool),
        ValidDocument(name: "null", text: "null", kind: .null),
        ValidDocument(name: "whitespace around", text: " \t\r\n{ } \n", kind: .object),
        ValidDocument(name: "empty array", text: "[]", kind: .array),
        ValidDocument(name: "empty string", text: #""""#, kind: .string),
        ValidDocument(name: "every short escape", text: #""\" \\ \/ \b \f \n \r \t""#, kind: .string),
        ValidDocument(name: "upper and lower hex", text: #""\u00e9\u00E9\uABCD\uabcd""#, kind: .string),
        ValidDocument(name: "escaped NUL", text: #""\u0000""#, kind: .string),
        ValidDocument(name: "raw UTF-8 of every length", text: "\"é € 😀 \u{10FFFF} \u{FFFF} \u{E000} \u{D7FF} \u{800} \u{80}\"", kind: .string),
        ValidDocument(name: "DEL is not a control character for JSON", text: "\"\u{7F}\"", kind: .string),
        ValidDocument(name: "zero", text: "0", kind: .number),
        ValidDocument(name: "negative zero", text: "-0", kind: .number),
        ValidDocument(name: "fraction and exponent", text: "-1.5e10", kind: .number),
        ValidDocument(name: "exponent forms", text: "[1E+2, 1e-2, 1e2, 0.0, 0e0, -0.0E-0]", kind: .array),
        ValidDocument(name: "big integer (syntax has no range)", text: "123456789012345678901234567890", kind: .number),
        ValidDocument(name: "nested mixed", text: #"{"a":[1,{"b":null},[],{}],"c":{"d":[true,false,"x"]}}"#, kind: .object),
        ValidDocument(name: "duplicate keys nested in data are the payload's business", text: #"{"data":{"k":1,"k":2}}"#, kind: .object),
    ]

    @Test(arguments: documents)
    func validates(_ document: ValidDocument) throws {
        let kind = try outcome(document.text) { p throws(JSONError) in try JSONScanner.validate(p) }.get()
        #expect(kind == document.kind)
        switch document.kind {
        case .object:
            _ = try outcome(document.text) { p throws(JSONError) in try JSONScanner.objectMembers(p) }.get()
        case .array:
            _ = try outcome(document.text) { p throws(JSONError) in try JSONScanner.arrayElements(p) }.get()
        default:
            break
        }
    }

    @Test func rfcImageMembers() throws {
        let text = Self.documents[0].text
        let members = try outcome(text) { p throws(JSONError) in try JSONScanner.objectMembers(p) }.get()
        #expect(members.map(\.key) == ["Image"])
        let bytes = Array(text.utf8)
        let image = try #require(members.first)
        #expect(image.kind == .object)
        let inner = try outcome(Array(bytes[image.range])) { p throws(JSONError) in try JSONScanner.objectMembers(p) }.get()
        #expect(inner.map(\.key) == ["Width", "Height", "Title", "Thumbnail", "Animated", "IDs"])
        #expect(inner.map(\.kind) == [.number, .number, .string, .object, .bool, .array])
    }

    @Test func rfcLocationElements() throws {
        let text = Self.documents[1].text
        let elements = try outcome(text) { p throws(JSONError) in try JSONScanner.arrayElements(p) }.get()
        #expect(elements.count == 2)
        #expect(elements.allSatisfy { $0.kind == .object })
        let bytes = Array(text.utf8)
        for element in elements {
            #expect(bytes[element.range.lowerBound] == UInt8(ascii: "{"))
            #expect(bytes[element.range.upperBound - 1] == UInt8(ascii: "}"))
        }
    }
}

// MARK: - Scanner: malformed documents

struct Malformed: Sendable, CustomTestStringConvertible {
    let name: String
    let bytes: [UInt8]
    /// Where the error must point.
    let offset: Int

    init(_ name: String, _ text: String, at offset: Int) {
        self.name = name
        self.bytes = Array(text.utf8)
        self.offset = offset
    }

    init(_ name: String, bytes: [UInt8], at offset: Int) {
        self.name = name
        self.bytes = bytes
        self.offset = offset
    }

    var testDescription: String { name }
}

private let quote = UInt8(ascii: "\"")

@Suite("JSONScanner rejects malformed JSON")
struct JSONScannerMalformedTests {
    static let cases: [Malformed] = [
        Malformed("trailing comma in array", "[1,2,]", at: 5),
        Malformed("trailing comma in object", #"{"a":1,}"#, at: 7),
        Malformed("leading comma in array", "[,1]", at: 1),
        Malformed("lone comma in object", "{,}", at: 1),
        Malformed("leading zero", "01", at: 1),
        Malformed("negative leading zero", "-01", at: 2),
        Malformed("leading zero in array", "[00]", at: 2),
        Malformed("dot without fraction digits", "1.", at: 2),
        Malformed("fraction without integer part", ".5", at: 0),
        Malformed("lone minus", "-", at: 1),
        Malformed("exponent without digits", "1e", at: 2),
        Malformed("signed exponent without digits", "1e+", at: 3),
        Malformed("explicit plus sign", "+1", at: 0),
        Malformed("hex number", "0x1F", at: 1),
        Malformed("unescaped control character", bytes: [quote, 0x61, 0x01, 0x62, quote], at: 2),
        Malformed("raw newline in string", "\"a\nb\"", at: 2),
        Malformed("raw tab in string", "\"a\tb\"", at: 2),
        Malformed("invalid escape \\x", #""\x41""#, at: 1),
        Malformed("escaped single quote", #""\'""#, at: 1),
        Malformed("lone high surrogate", #""\ud800""#, at: 1),
        Malformed("lone low surrogate", #""\udc00""#, at: 1),
        Malformed("high surrogate then a non-surrogate", #""\ud800\u0041""#, at: 1),
        Malformed("two high surrogates", #""\ud800\ud800""#, at: 1),
        Malformed("non-hex \\u digits", #""\u12g4""#, at: 1),
        Malformed("truncated \\u escape", #""\u00""#, at: 1),
        Malformed("UTF-8 C0 80 (overlong NUL)", bytes: [quote, 0xC0, 0x80, quote], at: 1),
        Malformed("UTF-8 FF", bytes: [quote, 0x61, 0xFF, quote], at: 2),
        Malformed("UTF-8 truncated 3-byte sequence", bytes: [quote, 0xE2, 0x82, quote], at: 1),
        Malformed("UTF-8 truncated at end of input", bytes: [quote, 0xF0, 0x9F], at: 1),
        Malformed("UTF-8 overlong 3-byte slash", bytes: [quote, 0xE0, 0x80, 0xAF, quote], at: 1),
        Malformed("UTF-8 overlong 4-byte", bytes: [quote, 0xF0, 0x8F, 0xBF, 0xBF, quote], at: 1),
        Malformed("UTF-8 encoded surrogate U+D800", bytes: [quote, 0xED, 0xA0, 0x80, quote], at: 1),
        Malformed("UTF-8 above U+10FFFF", bytes: [quote, 0xF4, 0x90, 0x80, 0x80, quote], at: 1),
        Malformed("UTF-8 lone continuation byte", bytes: [quote, 0x80, quote], at: 1),
        Malformed("non-ASCII byte outside a string", bytes: [UInt8(ascii: "["), 0xFF, UInt8(ascii: "]")], at: 1),
        Malformed("byte-order mark", bytes: [0xEF, 0xBB, 0xBF, UInt8(ascii: "{"), UInt8(ascii: "}")], at: 0),
        Malformed("unterminated string", #""abc"#, at: 4),
        Malformed("unterminated string after escape", #""ab\"#, at: 4),
        Malformed("unterminated object", #"{"a":1"#, at: 6),
        Malformed("unterminated object after colon", #"{"a":"#, at: 5),
        Malformed("unterminated array", "[1,2", at: 4),
        Malformed("two top-level values", "{} {}", at: 3),
        Malformed("two top-level numbers", "1 2", at: 2),
        Malformed("NaN", "NaN", at: 0),
        Malformed("Infinity", "Infinity", at: 0),
        Malformed("-Infinity", "-Infinity", at: 1),
        Malformed("truncated literal", "tru", at: 0),
        Malformed("capitalized literal", "True", at: 0),
        Malformed("block comment", #"{"a":1 /* c */}"#, at: 7),
        Malformed("line comment", "// c\n{}", at: 0),
        Malformed("single-quoted key", "{'a':1}", at: 1),
        Malformed("single-quoted string", "['a']", at: 1),
        Malformed("missing colon", #"{"a" 1}"#, at: 5),
        Malformed("non-string key", "{1:2}", at: 1),
        Malformed("bare key", "{a:2}", at: 1),
        Malformed("missing comma in array", "[1 2]", at: 3),
        Malformed("missing comma in object", #"{"a":1 "b":2}"#, at: 7),
        Malformed("mismatched brackets", "[1}", at: 2),
        Malformed("empty input", "", at: 0),
        Malformed("only whitespace", " \n\t\r ", at: 5),
    ]

    @Test(arguments: cases)
    func validateRejects(_ input: Malformed) throws {
        let error = try #require(failure(outcome(input.bytes) { p throws(JSONError) in try JSONScanner.validate(p) }))
        #expect(error.offset == input.offset, "\(error)")
        #expect(!error.reason.isEmpty)
        #expect(error.description == "malformed JSON at byte \(error.offset): \(error.reason)")
    }

    @Test(arguments: cases)
    func objectAndArrayReadersReject(_ input: Malformed) {
        _ = failure(outcome(input.bytes) { p throws(JSONError) in try JSONScanner.objectMembers(p) })
        _ = failure(outcome(input.bytes) { p throws(JSONError) in try JSONScanner.arrayElements(p) })
    }

    @Test(arguments: [
        ("[1,2,]", "expected a value"),
        (#"{"a":1,}"#, "expected a string key"),
        (#"{"a" 1}"#, "expected ':'"),
        (#""\x""#, "invalid escape"),
        (#""\ud800""#, "unpaired surrogate escape"),
        (#""\u12""#, "invalid \\u escape"),
        ("01", "leading zero"),
        ("1.", "expected a digit"),
        ("{} {}", "unexpected data after value"),
        ("", "unexpected end of input"),
        ("[1", "unterminated array"),
        (#"{"a":1"#, "unterminated object"),
        (#""abc"#, "unterminated string"),
        ("[1 2]", "expected ',' or ']'"),
        (#"{"a":1 "b":2}"#, "expected ',' or '}'"),
        ("nul", "invalid literal"),
    ])
    func reasons(_ text: String, _ reason: String) throws {
        let error = try #require(failure(outcome(text) { p throws(JSONError) in try JSONScanner.validate(p) }))
        #expect(error.reason == reason)
    }

    @Test(arguments: [
        ("\"\u{1}\"", "control character in string"),
        ("\"\u{1F}\"", "control character in string"),
    ])
    func controlCharacterReason(_ text: String, _ reason: String) throws {
        let error = try #require(failure(outcome(text) { p throws(JSONError) in try JSONScanner.validate(p) }))
        #expect(error.reason == reason)
    }

    @Test func invalidUTF8Reason() throws {
        let error = try #require(failure(outcome([quote, 0xC0, 0x80, quote]) { p throws(JSONError) in try JSONScanner.validate(p) }))
        #expect(error == JSONError(offset: 1, reason: "invalid UTF-8"))
    }

    @Test(arguments: ["[]", "\"x\"", "1", "null", "true"])
    func objectMembersNeedsAnObject(_ text: String) throws {
        let error = try #require(failure(outcome(text) { p throws(JSONError) in try JSONScanner.objectMembers(p) }))
        #expect(error == JSONError(offset: 0, reason: "expected an object"))
    }

    @Test(arguments: ["{}", "\"x\"", "1", "null", "false"])
    func arrayElementsNeedsAnArray(_ text: String) throws {
        let error = try #require(failure(outcome(text) { p throws(JSONError) in try JSONScanner.arrayElements(p) }))
        #expect(error == JSONError(offset: 0, reason: "expected an array"))
    }

    @Test func duplicateTopLevelKey() throws {
        let text = #"{"category":"a", "subject":"b", "category":"c"}"#
        let error = try #require(failure(outcome(text) { p throws(JSONError) in try JSONScanner.objectMembers(p) }))
        #expect(error == JSONError(offset: 32, reason: #"duplicate key "category""#))
        #expect(error.description == #"malformed JSON at byte 32: duplicate key "category""#)
        // validate() does not look at keys: duplicates are only a record-body rule.
        #expect(throws: Never.self) { try outcome(text) { p throws(JSONError) in try JSONScanner.validate(p) }.get() }
    }

    @Test func duplicateKeyAfterUnescaping() throws {
        let text = #"{"ab":1,"a\u0062":2}"#
        let error = try #require(failure(outcome(text) { p throws(JSONError) in try JSONScanner.objectMembers(p) }))
        #expect(error == JSONError(offset: 8, reason: #"duplicate key "ab""#))
    }

    @Test func canonicallyEquivalentKeysAreDuplicates() throws {
        // "é" precomposed and "e" + combining acute compare equal as Swift Strings.
        let text = #"{"caf\u00e9":1,"cafe\u0301":2}"#
        let error = try #require(failure(outcome(text) { p throws(JSONError) in try JSONScanner.objectMembers(p) }))
        #expect(error.reason == "duplicate key")  // non-ASCII: not quoted
    }

    @Test(arguments: ["Jane Doe 078-05-1120", "caf\\u00e9", String(repeating: "k", count: 65), ""])
    func unusualDuplicateKeysAreNotQuoted(_ key: String) throws {
        let text = "{\"\(key)\":1,\"\(key)\":2}"
        let error = try #require(failure(outcome(text) { p throws(JSONError) in try JSONScanner.objectMembers(p) }))
        #expect(error.reason == "duplicate key")
    }
}

// MARK: - Scanner: UTF-8 against the standard library

@Suite("JSONScanner UTF-8 validation agrees with the standard library")
struct JSONScannerUTF8Tests {
    /// Whether `sequence`, quoted, is a valid JSON string: well-formed UTF-8 (as
    /// `String(validating:)` decides) with no control character and no quote.
    static func expected(_ sequence: [UInt8]) -> Bool {
        String(validating: sequence, as: UTF8.self) != nil && !sequence.contains { $0 < 0x20 || $0 == quote }
    }

    /// Whether the scanner agrees; sequences with a backslash are skipped (escapes have their own tests).
    static func check(_ sequence: [UInt8]) -> Bool {
        guard !sequence.contains(UInt8(ascii: "\\")) else { return true }
        let document = [quote] + sequence + [quote]
        let accepted = document.withUnsafeBytes { (try? JSONScanner.validate($0)) != nil }
        return accepted == expected(sequence)
    }

    /// Continuation-byte boundaries of Unicode Table 3-7, plus ASCII and never-valid bytes.
    static let tails: [UInt8] = [0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xFF]

    @Test func everyTwoByteSequence() {
        var mismatches: [[UInt8]] = []
        for first in UInt8.min...UInt8.max {
            for second in UInt8.min...UInt8.max where !Self.check([first, second]) {
                mismatches.append([first, second])
            }
        }
        #expect(mismatches.isEmpty, "\(mismatches.prefix(10))")
    }

    @Test(arguments: Array(UInt8(0xE0)...0xF4))
    func threeAndFourByteSequences(lead: UInt8) {
        var mismatches: [[UInt8]] = []
        for second in UInt8.min...UInt8.max {
            for third in Self.tails {
                if !Self.check([lead, second, third]) { mismatches.append([lead, second, third]) }
                for fourth in Self.tails where lead >= 0xF0 && !Self.check([lead, second, third, fourth]) {
                    mismatches.append([lead, second, third, fourth])
                }
            }
        }
        #expect(mismatches.isEmpty, "\(mismatches.prefix(10))")
    }

    @Test func writerCopiesValidSequencesAndReplacesInvalidBytes() throws {
        for lead in UInt8(0x80)...0xFF {
            for second in Self.tails {
                for third in Self.tails {
                    let input: [UInt8] = [lead, second, third, 0x80]
                    var writer = JSONWriter()
                    input.withUnsafeBytes { writer.string(bytes: $0) }
                    let read = try outcome(writer.bytes) { p throws(JSONError) in try JSONRead.string(p) }.get()
                    // The reader gets back exactly the standard library's decoding
                    // when the input is valid, and something valid in any case.
                    if let valid = String(validating: input, as: UTF8.self) {
                        #expect(Array(read.utf8) == Array(valid.utf8))
                    }
                }
            }
        }
    }
}

// MARK: - Scanner: ranges and kinds

@Suite("JSONScanner ranges and kinds")
struct JSONScannerRangeTests {
    @Test func memberRangesAreExact() throws {
        let text = """
             {  "subject" : "Jane \\"JD\\" Doe" ,
              "data":{"a":[1, 2, {"b": "c"}], "n": null}\t,"n":-12.5e+3,
            "t":true,"f" :false , "z": null, "arr" : [ ], "e\\u0301": "x", "obj":{}
            }\r\n
            """
        let bytes = Array(text.utf8)
        let members = try outcome(bytes) { p throws(JSONError) in try JSONScanner.objectMembers(p) }.get()
        let expected: [(String, String, JSONKind)] = [
            ("subject", #""Jane \"JD\" Doe""#, .string),
            ("data", #"{"a":[1, 2, {"b": "c"}], "n": null}"#, .object),
            ("n", "-12.5e+3", .number),
            ("t", "true", .bool),
            ("f", "false", .bool),
            ("z", "null", .null),
            ("arr", "[ ]", .array),
            ("e\u{301}", #""x""#, .string),
            ("obj", "{}", .object),
        ]
        #expect(members.count == expected.count)
        for (member, (key, raw, kind)) in zip(members, expected) {
            #expect(Array(member.key.utf8) == Array(key.utf8))
            #expect(slice(bytes, member.range) == raw)
            #expect(member.kind == kind)
        }
        // Each range is itself a valid value of the reported kind.
        for member in members {
            let kind = try outcome(Array(bytes[member.range])) { p throws(JSONError) in try JSONScanner.validate(p) }.get()
            #expect(kind == member.kind)
        }
    }

    @Test func memberEquality() throws {
        let members = try outcome(#"{"a":1}"#) { p throws(JSONError) in try JSONScanner.objectMembers(p) }.get()
        #expect(members == [JSONMember(key: "a", range: 5..<6, kind: .number)])
    }

    @Test func emptyObjectHasNoMembers() throws {
        #expect(try outcome(" { \n } ") { p throws(JSONError) in try JSONScanner.objectMembers(p) }.get().isEmpty)
        #expect(try outcome(" [ \n ] ") { p throws(JSONError) in try JSONScanner.arrayElements(p) }.get().isEmpty)
    }

    @Test func elementRangesAreExact() throws {
        let text = #" [ "a\n" , 0 ,-1.25E2,[[]], {"k" : [1]},true,false,null ] "#
        let bytes = Array(text.utf8)
        let elements = try outcome(bytes) { p throws(JSONError) in try JSONScanner.arrayElements(p) }.get()
        let expected: [(String, JSONKind)] = [
            (#""a\n""#, .string), ("0", .number), ("-1.25E2", .number), ("[[]]", .array),
            (#"{"k" : [1]}"#, .object), ("true", .bool), ("false", .bool), ("null", .null),
        ]
        #expect(elements.map { slice(bytes, $0.range) } == expected.map(\.0))
        #expect(elements.map(\.kind) == expected.map(\.1))
    }
}

// MARK: - Scanner: nesting

@Suite("JSONScanner nesting limits")
struct JSONScannerNestingTests {
    static func arrays(_ depth: Int) -> [UInt8] {
        Array(repeating: UInt8(ascii: "["), count: depth) + Array(repeating: UInt8(ascii: "]"), count: depth)
    }

    static func objects(_ depth: Int) -> [UInt8] {
        Array(String(repeating: #"{"k":"#, count: depth).utf8) + Array("1".utf8) + Array(repeating: UInt8(ascii: "}"), count: depth)
    }

    @Test func depth64IsAccepted() throws {
        #expect(try outcome(Self.arrays(64)) { p throws(JSONError) in try JSONScanner.validate(p) }.get() == .array)
        #expect(try outcome(Self.objects(64)) { p throws(JSONError) in try JSONScanner.validate(p) }.get() == .object)
        #expect(try outcome(Self.objects(64)) { p throws(JSONError) in try JSONScanner.objectMembers(p) }.get().count == 1)
        #expect(try outcome(Self.arrays(64)) { p throws(JSONError) in try JSONScanner.arrayElements(p) }.get().count == 1)
    }

    @Test func depth65IsRejected() throws {
        let expected = JSONError(offset: 64, reason: "nesting deeper than 64")
        #expect(failure(outcome(Self.arrays(65)) { p throws(JSONError) in try JSONScanner.validate(p) }) == expected)
        #expect(failure(outcome(Self.arrays(65)) { p throws(JSONError) in try JSONScanner.arrayElements(p) }) == expected)
        // The 65th object opens at byte 64 * 5.
        let objectError = JSONError(offset: 320, reason: "nesting deeper than 64")
        #expect(failure(outcome(Self.objects(65)) { p throws(JSONError) in try JSONScanner.validate(p) }) == objectError)
        #expect(failure(outcome(Self.objects(65)) { p throws(JSONError) in try JSONScanner.objectMembers(p) }) == objectError)
    }

    @Test func mixedNestingCountsBothKinds() throws {
        // 32 objects each holding an array: 64 levels, then one more.
        let ok = Array((String(repeating: #"{"k":["#, count: 32) + "1" + String(repeating: "]}", count: 32)).utf8)
        #expect(try outcome(ok) { p throws(JSONError) in try JSONScanner.validate(p) }.get() == .object)
        let deeper = Array((String(repeating: #"{"k":["#, count: 32) + "[]" + String(repeating: "]}", count: 32)).utf8)
        let error = try #require(failure(outcome(deeper) { p throws(JSONError) in try JSONScanner.validate(p) }))
        #expect(error.reason == "nesting deeper than 64")
    }

    @Test func hundredThousandOpenBracketsAreRejectedAtTheLimit() throws {
        let bytes = Array(repeating: UInt8(ascii: "["), count: 100_000)
        #expect(failure(outcome(bytes) { p throws(JSONError) in try JSONScanner.validate(p) })
            == JSONError(offset: 64, reason: "nesting deeper than 64"))
        #expect(failure(outcome(bytes) { p throws(JSONError) in try JSONScanner.arrayElements(p) })
            == JSONError(offset: 64, reason: "nesting deeper than 64"))
        let objects = Array(String(repeating: #"{"a":"#, count: 100_000).utf8)
        #expect(failure(outcome(objects) { p throws(JSONError) in try JSONScanner.objectMembers(p) })?.reason
            == "nesting deeper than 64")
    }

    @Test func deepNestingWithinAHugeLimitDoesNotRecurse() throws {
        // 100 000 levels accepted when allowed: proof that the validator keeps its own stack.
        let deep = Self.arrays(100_000)
        #expect(try outcome(deep) { p throws(JSONError) in try JSONScanner.validate(p, maxDepth: 100_000) }.get() == .array)
        #expect(failure(outcome(deep) { p throws(JSONError) in try JSONScanner.validate(p, maxDepth: 99_999) })
            == JSONError(offset: 99_999, reason: "nesting deeper than 99999"))
    }

    @Test func customLimits() throws {
        #expect(try outcome("1") { p throws(JSONError) in try JSONScanner.validate(p, maxDepth: 0) }.get() == .number)
        #expect(failure(outcome("[]") { p throws(JSONError) in try JSONScanner.validate(p, maxDepth: 0) })
            == JSONError(offset: 0, reason: "nesting deeper than 0"))
        #expect(failure(outcome("{}") { p throws(JSONError) in try JSONScanner.objectMembers(p, maxDepth: 0) })
            == JSONError(offset: 0, reason: "nesting deeper than 0"))
        #expect(try outcome(#"{"a":1}"#) { p throws(JSONError) in try JSONScanner.objectMembers(p, maxDepth: 1) }.get().count == 1)
        #expect(failure(outcome(#"{"a":[]}"#) { p throws(JSONError) in try JSONScanner.objectMembers(p, maxDepth: 1) })
            == JSONError(offset: 5, reason: "nesting deeper than 1"))
    }
}

// MARK: - Errors never echo values

struct SecretDocument: Sendable, CustomTestStringConvertible {
    let name: String
    let bytes: [UInt8]
    init(_ name: String, _ text: String) {
        self.name = name
        self.bytes = Array(text.utf8)
    }
    init(_ name: String, bytes: [UInt8]) {
        self.name = name
        self.bytes = bytes
    }
    var testDescription: String { name }
}

@Suite("JSON errors never contain values")
struct JSONErrorRedactionTests {
    static let marker = "SECRET-MARKER"

    static let documents: [SecretDocument] = [
        SecretDocument("duplicate key after the secret", #"{"subject":"SECRET-MARKER","subject":"x"}"#),
        SecretDocument("invalid escape in the secret", #"{"subject":"SECRET-MARKER\x"}"#),
        SecretDocument("unterminated secret", #"{"subject":"SECRET-MARKER"#),
        SecretDocument("control character in the secret", "{\"subject\":\"SECRET-MARKER\u{1}\"}"),
        SecretDocument("lone surrogate after the secret", #"{"subject":"SECRET-MARKER\udc00"}"#),
        SecretDocument("invalid UTF-8 after the secret", bytes: Array(#"{"subject":"SECRET-MARKER"#.utf8) + [0xFF, quote, UInt8(ascii: "}")]),
        SecretDocument("secret as a nested key, trailing comma", #"{"data":{"SECRET-MARKER":1,}}"#),
        SecretDocument("secret as a nested key, missing colon", #"{"data":{"SECRET-MARKER" 1}}"#),
        SecretDocument("duplicate nested object of secrets", #"{"data":{"SECRET-MARKER":"SECRET-MARKER"},"data":1}"#),
        SecretDocument("garbage after the secret document", #"{"subject":"SECRET-MARKER"} SECRET-MARKER"#),
        SecretDocument("secret then missing comma", #"["SECRET-MARKER" "SECRET-MARKER"]"#),
        SecretDocument("secret then trailing comma", #"{"subject":"SECRET-MARKER","data":[1,2,]}"#),
        SecretDocument("secret too deep", String(repeating: "[", count: 70) + #""SECRET-MARKER""#),
        SecretDocument("secret as an unquoted value", #"{"subject":SECRET-MARKER}"#),
        SecretDocument("secret in single quotes", #"{"subject":'SECRET-MARKER'}"#),
        SecretDocument("duplicate key that is itself personal data", #"{"SECRET-MARKER Jane":1,"SECRET-MARKER Jane":2}"#),
    ]

    static func expectRedacted(_ error: JSONError, sourceLocation: SourceLocation = #_sourceLocation) {
        var dumped = ""
        dump(error, to: &dumped)
        for rendering in [error.description, error.reason, "\(error)", String(reflecting: error), dumped] {
            #expect(!rendering.contains(marker), "\(rendering)", sourceLocation: sourceLocation)
            #expect(!rendering.contains("Jane"), sourceLocation: sourceLocation)
        }
    }

    @Test(arguments: documents)
    func scannerErrors(_ document: SecretDocument) throws {
        let members = try #require(failure(outcome(document.bytes) { p throws(JSONError) in try JSONScanner.objectMembers(p) }))
        Self.expectRedacted(members)
        // validate() accepts some of these (duplicate keys are only a record-body rule).
        if let validate = failure(outcome(document.bytes) { p throws(JSONError) in try JSONScanner.validate(p) }, allowSuccess: true) {
            Self.expectRedacted(validate)
        }
        if let array = failure(outcome(document.bytes) { p throws(JSONError) in try JSONScanner.arrayElements(p) }, allowSuccess: true) {
            Self.expectRedacted(array)
        }
    }

    @Test func duplicateKeyNamesOnlyTheField() throws {
        let error = try #require(failure(outcome(Self.documents[0].bytes) { p throws(JSONError) in try JSONScanner.objectMembers(p) }))
        #expect(error.description == #"malformed JSON at byte 27: duplicate key "subject""#)
    }

    @Test(arguments: [#""SECRET-MARKER""#, #"["SECRET-MARKER"]"#, #"{"k":"SECRET-MARKER"}"#, #""SECRET-MARKER\x""#, "SECRET-MARKER"])
    func readerErrors(_ text: String) {
        let bytes = Array(text.utf8)
        var errors: [JSONError] = []
        for result in [
            outcome(bytes) { p throws(JSONError) in _ = try JSONRead.int64(p) },
            outcome(bytes) { p throws(JSONError) in _ = try JSONRead.bool(p) },
            outcome(bytes) { p throws(JSONError) in _ = try JSONRead.stringArray(p) },
            outcome(bytes) { p throws(JSONError) in _ = try JSONRead.string(p) },
            outcome(bytes) { p throws(JSONError) in _ = try JSONRead.sensitiveString(p) },
        ] {
            if case .failure(let error) = result { errors.append(error) }
        }
        #expect(errors.count >= 3)
        for error in errors { Self.expectRedacted(error) }
    }

    @Test func stringArrayWithANonStringElement() throws {
        let error = try #require(failure(outcome(#"["ok","SECRET-MARKER",7]"#) { p throws(JSONError) in try JSONRead.stringArray(p) }))
        #expect(error == JSONError(offset: 22, reason: "expected an array of strings"))
        Self.expectRedacted(error)
    }
}

/// `failure` for calls that may legitimately succeed (no issue recorded).
private func failure<R>(_ result: Result<R, JSONError>, allowSuccess: Bool) -> JSONError? {
    if case .failure(let error) = result { return error }
    return nil
}

// MARK: - Readers

struct Unescape: Sendable, CustomTestStringConvertible {
    let raw: String
    let expected: [UInt8]
    init(_ raw: String, _ expected: [UInt8]) {
        self.raw = raw
        self.expected = expected
    }
    var testDescription: String { raw }
}

@Suite("JSONRead")
struct JSONReadTests {
    static let unescapes: [Unescape] = [
        Unescape(#""""#, []),
        Unescape(#""plain""#, Array("plain".utf8)),
        Unescape(#""\"""#, [0x22]),
        Unescape(#""\\""#, [0x5C]),
        Unescape(#""\/""#, [0x2F]),
        Unescape(#""\b\f\n\r\t""#, [0x08, 0x0C, 0x0A, 0x0D, 0x09]),
        Unescape(#""\u0000""#, [0x00]),
        Unescape(#""\u001f\u0020\u007F""#, [0x1F, 0x20, 0x7F]),
        Unescape(#""\u00e9""#, [0xC3, 0xA9]),
        Unescape(#""\u00E9""#, [0xC3, 0xA9]),
        Unescape(#""\u0080\u07ff""#, [0xC2, 0x80, 0xDF, 0xBF]),
        Unescape(#""\u0800\u20ac\uffff""#, [0xE0, 0xA0, 0x80, 0xE2, 0x82, 0xAC, 0xEF, 0xBF, 0xBF]),
        Unescape(#""\u2028\u2029""#, [0xE2, 0x80, 0xA8, 0xE2, 0x80, 0xA9]),
        Unescape(#""\ud83d\ude00""#, [0xF0, 0x9F, 0x98, 0x80]),
        Unescape(#""\uD834\uDD1E""#, [0xF0, 0x9D, 0x84, 0x9E]),
        Unescape(#""\ud800\udc00\udbff\udfff""#, [0xF0, 0x90, 0x80, 0x80, 0xF4, 0x8F, 0xBF, 0xBF]),
        Unescape("\"caf\u{E9} 😀\"", Array("café 😀".utf8)),
        Unescape(#""a\"b\\c\/d\u0041""#, Array(#"a"b\c/dA"#.utf8)),
        Unescape("  \"padded\"\n", Array("padded".utf8)),
    ]

    @Test(arguments: unescapes)
    func string(_ row: Unescape) throws {
        let value = try outcome(row.raw) { p throws(JSONError) in try JSONRead.string(p) }.get()
        #expect(Array(value.utf8) == row.expected)
    }

    @Test(arguments: unescapes)
    func sensitiveStringGivesTheSameBytes(_ row: Unescape) throws {
        let value = try outcome(row.raw) { p throws(JSONError) in try JSONRead.sensitiveString(p) }.get()
        #expect(value.count == row.expected.count)
        #expect(value.withUnsafeBytes { Array($0) } == row.expected)
    }

    @Test(arguments: unescapes)
    func agreesWithFoundation(_ row: Unescape) throws {
        let parsed = try foundationParse(Array(row.raw.utf8)) as? String
        #expect(parsed.map { Array($0.utf8) } == row.expected)
    }

    @Test(arguments: ["1", "null", "true", #"["a"]"#, #"{"a":"b"}"#, #""a" "b""#, "", "   "])
    func stringRejectsOtherTypes(_ text: String) throws {
        for result in [
            outcome(text) { p throws(JSONError) in _ = try JSONRead.string(p) },
            outcome(text) { p throws(JSONError) in _ = try JSONRead.sensitiveString(p) },
        ] {
            let error = try #require(failure(result))
            #expect(error.reason == "expected a string")
        }
    }

    @Test(arguments: [#""abc"#, #""\x""#, #""\ud800""#, "\"\u{1}\""])
    func stringRejectsMalformedStrings(_ text: String) throws {
        let plain = try #require(failure(outcome(text) { p throws(JSONError) in try JSONRead.string(p) }))
        let sensitive = try #require(failure(outcome(text) { p throws(JSONError) in try JSONRead.sensitiveString(p) }))
        #expect(plain == sensitive)
    }

    @Test func invalidUTF8IsRejectedByBothStringReaders() throws {
        for bytes: [UInt8] in [[quote, 0xC0, 0x80, quote], [quote, 0xED, 0xA0, 0x80, quote], [quote, 0xFF, quote]] {
            #expect(failure(outcome(bytes) { p throws(JSONError) in try JSONRead.string(p) })?.reason == "invalid UTF-8")
            #expect(failure(outcome(bytes) { p throws(JSONError) in try JSONRead.sensitiveString(p) })?.reason == "invalid UTF-8")
        }
    }

    @Test(arguments: [
        ("0", Int64(0)), ("-0", 0), ("42", 42), (" 7 ", 7), ("-17", -17),
        ("9223372036854775807", .max), ("-9223372036854775808", .min),
    ])
    func int64(_ text: String, _ expected: Int64) throws {
        #expect(try outcome(text) { p throws(JSONError) in try JSONRead.int64(p) }.get() == expected)
    }

    @Test(arguments: [
        ("1.5", "expected an integer"), ("1e3", "expected an integer"), ("1E3", "expected an integer"),
        ("1.0", "expected an integer"), ("01", "expected an integer"), ("-", "expected an integer"),
        ("+1", "expected an integer"), (#""1""#, "expected an integer"), ("true", "expected an integer"),
        ("null", "expected an integer"), ("", "expected an integer"), ("1 2", "expected an integer"),
        ("[1]", "expected an integer"), ("0x10", "expected an integer"),
        ("9223372036854775808", "expected a 64-bit integer"),
        ("-9223372036854775809", "expected a 64-bit integer"),
        ("99999999999999999999999", "expected a 64-bit integer"),
        ("18446744073709551615", "expected a 64-bit integer"),
        ("18446744073709551616", "expected a 64-bit integer"),  // 2^64: wraps to 0 if addition is unchecked
        ("-18446744073709551616", "expected a 64-bit integer"),
        ("184467440737095516160", "expected a 64-bit integer"),  // 10 * 2^64: wraps if multiplication is unchecked
    ])
    func int64Rejects(_ text: String, _ reason: String) throws {
        let error = try #require(failure(outcome(text) { p throws(JSONError) in try JSONRead.int64(p) }))
        #expect(error.reason == reason)
        #expect(error.offset == 0)
    }

    @Test func offsetsAreRelativeToTheMember() throws {
        let body = Array(#"{"category": 12, "limit": "x"}"#.utf8)
        let members = try outcome(body) { p throws(JSONError) in try JSONScanner.objectMembers(p) }.get()
        let category = try #require(members.first { $0.key == "category" })
        let limit = try #require(members.first { $0.key == "limit" })
        let categoryError = try #require(failure(outcome(Array(body[category.range])) { p throws(JSONError) in
            try JSONRead.string(p, at: category.range.lowerBound)
        }))
        #expect(categoryError == JSONError(offset: 13, reason: "expected a string"))
        let limitError = try #require(failure(outcome(Array(body[limit.range])) { p throws(JSONError) in
            try JSONRead.int64(p, at: limit.range.lowerBound)
        }))
        #expect(limitError == JSONError(offset: 26, reason: "expected an integer"))
        // Without `at:`, offsets are relative to the raw value.
        #expect(failure(outcome(Array(body[limit.range])) { p throws(JSONError) in try JSONRead.int64(p) })?.offset == 0)
    }

    @Test(arguments: [("true", true), ("false", false), (" true\n", true)])
    func bool(_ text: String, _ expected: Bool) throws {
        #expect(try outcome(text) { p throws(JSONError) in try JSONRead.bool(p) }.get() == expected)
    }

    @Test(arguments: ["1", "0", #""true""#, "null", "True", "tru", "truee", "", "[true]"])
    func boolRejects(_ text: String) throws {
        let error = try #require(failure(outcome(text) { p throws(JSONError) in try JSONRead.bool(p) }))
        #expect(error.reason == "expected a boolean")
    }

    @Test func isNull() {
        for (text, expected) in [("null", true), (" null ", true), ("nul", false), ("\"null\"", false), ("0", false), ("", false), ("nulll", false)] {
            #expect(Array(text.utf8).withUnsafeBytes { JSONRead.isNull($0) } == expected, "\(text)")
        }
    }

    @Test(arguments: [
        ("[]", [String]()), (" [ ] ", []), (#"["a"]"#, ["a"]),
        (#"[ "a" , "b\n" ,"\u00e9" ]"#, ["a", "b\n", "é"]), (#"["",""]"#, ["", ""]),
    ])
    func stringArray(_ text: String, _ expected: [String]) throws {
        #expect(try outcome(text) { p throws(JSONError) in try JSONRead.stringArray(p) }.get() == expected)
    }

    @Test(arguments: [
        (#"["a",1]"#, "expected an array of strings"), (#"[null]"#, "expected an array of strings"),
        (#"[["a"]]"#, "expected an array of strings"), (#""a""#, "expected an array of strings"),
        (#"{"a":"b"}"#, "expected an array of strings"), (#"["a",]"#, "expected an array of strings"),
        (#"["a" "b"]"#, "expected ',' or ']'"), (#"["a""#, "unterminated array"),
        (#"["a"] x"#, "expected an array of strings"), (#"["\x"]"#, "invalid escape"),
    ])
    func stringArrayRejects(_ text: String, _ reason: String) throws {
        let error = try #require(failure(outcome(text) { p throws(JSONError) in try JSONRead.stringArray(p) }))
        #expect(error.reason == reason)
    }

    @Test func recordBodyEndToEnd() throws {
        let body = Array(#"""
            {"subject":"J\u00f6rg \"JD\" M\u00fcller","data":{"ssn":"078-05-1120","tags":[1,2]},
             "category":"hr","retain_days":30,"legal_hold":false,"labels":["a","b"],"reference":null}
            """#.utf8)
        let members = try outcome(body) { p throws(JSONError) in try JSONScanner.objectMembers(p) }.get()
        #expect(members.map(\.key) == ["subject", "data", "category", "retain_days", "legal_hold", "labels", "reference"])
        func raw(_ key: String) throws -> [UInt8] {
            let member = try #require(members.first { $0.key == key })
            return Array(body[member.range])
        }
        let subjectRaw = try raw("subject")
        let subject = try outcome(subjectRaw) { p throws(JSONError) in try JSONRead.sensitiveString(p) }.get()
        #expect(subject.withUnsafeBytes { Array($0) } == Array(#"Jörg "JD" Müller"#.utf8))
        let data = try raw("data")
        #expect(String(decoding: data, as: UTF8.self) == #"{"ssn":"078-05-1120","tags":[1,2]}"#)
        let category = try raw("category")
        #expect(try outcome(category) { p throws(JSONError) in try JSONRead.string(p) }.get() == "hr")
        let retain = try raw("retain_days")
        #expect(try outcome(retain) { p throws(JSONError) in try JSONRead.int64(p) }.get() == 30)
        let hold = try raw("legal_hold")
        #expect(try outcome(hold) { p throws(JSONError) in try JSONRead.bool(p) }.get() == false)
        let labels = try raw("labels")
        #expect(try outcome(labels) { p throws(JSONError) in try JSONRead.stringArray(p) }.get() == ["a", "b"])
        let reference = try raw("reference")
        #expect(reference.withUnsafeBytes { JSONRead.isNull($0) })
    }
}

// MARK: - Writer

@Suite("JSONWriter")
struct JSONWriterTests {
    static func text(_ writer: JSONWriter) -> String {
        String(decoding: writer.bytes, as: UTF8.self)
    }

    static func validates(_ writer: JSONWriter) -> Bool {
        (try? outcome(writer.bytes) { p throws(JSONError) in try JSONScanner.validate(p) }.get()) != nil
    }

    @Test func structureAndCommas() {
        var writer = JSONWriter()
        writer.beginObject()
        writer.field("a", 1)
        writer.key("b")
        writer.beginArray()
        writer.bool(true)
        writer.null()
        writer.beginObject()
        writer.field("c", "d")
        writer.endObject()
        writer.beginArray()
        writer.endArray()
        writer.int(-5)
        writer.endArray()
        writer.key("e")
        writer.beginObject()
        writer.endObject()
        writer.field("f", false)
        writer.key("g")
        writer.uint(UInt64.max)
        writer.endObject()
        #expect(Self.text(writer) == #"{"a":1,"b":[true,null,{"c":"d"},[],-5],"e":{},"f":false,"g":18446744073709551615}"#)
        #expect(Self.validates(writer))
    }

    @Test func topLevelScalarsAndEmptyContainers() {
        var writer = JSONWriter()
        writer.string("x")
        #expect(Self.text(writer) == #""x""#)
        var object = JSONWriter()
        object.beginObject()
        object.endObject()
        #expect(Self.text(object) == "{}")
        var array = JSONWriter()
        array.beginArray()
        array.beginArray()
        array.endArray()
        array.beginArray()
        array.endArray()
        array.endArray()
        #expect(Self.text(array) == "[[],[]]")
    }

    @Test(arguments: [
        (Int64.min, "-9223372036854775808"), (Int64.max, "9223372036854775807"),
        (0, "0"), (-1, "-1"), (10, "10"), (1_000_000, "1000000"), (-909, "-909"),
    ])
    func integers(_ value: Int64, _ expected: String) {
        var writer = JSONWriter()
        writer.int(value)
        #expect(Self.text(writer) == expected)
    }

    @Test(arguments: [(UInt64(0), "0"), (UInt64.max, "18446744073709551615"), (9, "9"), (10, "10")])
    func unsignedIntegers(_ value: UInt64, _ expected: String) {
        var writer = JSONWriter()
        writer.uint(value)
        #expect(Self.text(writer) == expected)
    }

    @Test func escapesEveryControlCharacterAsUnicodeEscape() {
        var writer = JSONWriter()
        writer.string(String(decoding: (UInt8(0)...0x1F).map { $0 }, as: UTF8.self))
        let expected = "\"" + (0x00...0x1F).map { "\\u00" + ($0 < 0x10 ? "0" : "") + String($0, radix: 16) }.joined() + "\""
        #expect(Self.text(writer) == expected)
    }

    @Test func escapesQuoteBackslashAndLineSeparators() {
        var writer = JSONWriter()
        writer.string("a\"b\\c/d\u{2028}e\u{2029}f\u{7F}é😀")
        #expect(Self.text(writer) == "\"a\\\"b\\\\c/d\\u2028e\\u2029f\u{7F}é😀\"")
    }

    /// Every character that needs escaping, alone and embedded.
    static let escapeWorthy: [Unicode.Scalar] = (UInt8(0)...0x1F).map { Unicode.Scalar($0) }
        + ["\"" as Unicode.Scalar, "\\", "\u{2028}", "\u{2029}"]

    @Test(arguments: escapeWorthy)
    func roundTripsThroughFoundation(_ scalar: Unicode.Scalar) throws {
        for original in [String(Character(scalar)), "a\(Character(scalar))b", "\(Character(scalar))\(Character(scalar))é"] {
            var writer = JSONWriter()
            writer.string(original)
            #expect(Self.validates(writer))
            let parsed = try #require(try foundationParse(writer.bytes) as? String)
            #expect(Array(parsed.utf8) == Array(original.utf8))
            // And through our own reader.
            let read = try outcome(writer.bytes) { p throws(JSONError) in try JSONRead.string(p) }.get()
            #expect(Array(read.utf8) == Array(original.utf8))
        }
    }

    @Test func allEscapeWorthyCharactersInOneKeyAndValue() throws {
        let everything = String(String.UnicodeScalarView(Self.escapeWorthy))
        var writer = JSONWriter()
        writer.beginObject()
        writer.field(everything, everything)
        writer.endObject()
        #expect(Self.validates(writer))
        let parsed = try #require(try foundationParse(writer.bytes) as? [String: Any])
        #expect(parsed.count == 1)
        let (key, value) = try #require(parsed.first)
        #expect(Array(key.utf8) == Array(everything.utf8))
        #expect((value as? String).map { Array($0.utf8) } == Array(everything.utf8))
    }

    @Test func stringFromBytesMatchesStringFromString() {
        let subject = "Jörg \"JD\" Müller\n\u{2028}😀"
        var fromString = JSONWriter()
        fromString.string(subject)
        var fromBytes = JSONWriter()
        let sensitive = SensitiveBytes(copying: Array(subject.utf8))
        sensitive.withUnsafeBytes { fromBytes.string(bytes: $0) }
        #expect(fromBytes.bytes == fromString.bytes)
    }

    @Test func invalidUTF8BytesBecomeReplacementCharacters() throws {
        var writer = JSONWriter()
        let bytes: [UInt8] = [0x61, 0xFF, 0xC0, 0x80, 0xED, 0xA0, 0x80, 0xE2, 0x82, 0x62]
        bytes.withUnsafeBytes { writer.string(bytes: $0) }
        #expect(Self.validates(writer))
        #expect(Self.text(writer) == #""a\ufffd\ufffd\ufffd\ufffd\ufffd\ufffd\ufffd\ufffdb""#)
    }

    @Test func rawIsInsertedVerbatim() {
        let data = Array(#"{"ssn": "078-05-1120", "n": [1, 2.5e3]}"#.utf8)
        var writer = JSONWriter()
        writer.beginObject()
        writer.field("id", "r1")
        writer.key("data")
        data.withUnsafeBytes { writer.raw($0) }
        writer.field("n", 1)
        writer.endObject()
        #expect(Self.text(writer) == #"{"id":"r1","data":{"ssn": "078-05-1120", "n": [1, 2.5e3]},"n":1}"#)
        var array = JSONWriter()
        array.beginArray()
        Array("1".utf8).withUnsafeBytes { array.raw($0) }
        Array(#""x""#.utf8).withUnsafeBytes { array.raw($0) }
        array.endArray()
        #expect(Self.text(array) == #"[1,"x"]"#)
    }

    @Test func wipeEmptiesAndTheWriterStartsOver() {
        var writer = JSONWriter(capacity: 8)
        writer.beginObject()
        writer.field("subject", "SECRET-MARKER")
        writer.endObject()
        #expect(!writer.bytes.isEmpty)
        writer.wipe()
        #expect(writer.bytes.isEmpty)
        writer.beginArray()
        writer.int(1)
        writer.endArray()
        #expect(Self.text(writer) == "[1]")
    }

    @Test func growsFarBeyondItsInitialCapacity() throws {
        var writer = JSONWriter(capacity: 0)
        writer.beginArray()
        for index in 0..<2_000 {
            writer.beginObject()
            writer.field("i", Int64(index))
            writer.field("s", String(repeating: "\u{1}x", count: index % 7))
            writer.endObject()
        }
        writer.endArray()
        #expect(Self.validates(writer))
        let parsed = try #require(try foundationParse(writer.bytes) as? [[String: Any]])
        #expect(parsed.count == 2_000)
        #expect((parsed[1_999]["i"] as? NSNumber)?.int64Value == 1_999)
    }
}

// MARK: - Randomized round trip


/// A JSON value as the test builds it (object members in order, keys unique).
indirect enum Value {
    case null
    case bool(Bool)
    case int(Int64)
    case uint(UInt64)
    case string(String)
    case array([Value])
    case object([(String, Value)])

    var kind: JSONKind {
        switch self {
        case .null: .null
        case .bool: .bool
        case .int, .uint: .number
        case .string: .string
        case .array: .array
        case .object: .object
        }
    }

    static func random(depth: Int, using rng: inout SplitMix64) -> Value {
        let containers = depth > 0 ? 2 : 0
        switch Int.random(in: 0..<(5 + containers), using: &rng) {
        case 0: return .null
        case 1: return .bool(Bool.random(using: &rng))
        case 2:
            let edges: [Int64] = [.min, .max, 0, -1, 1]
            return Bool.random(using: &rng) ? .int(edges.randomElement(using: &rng)!) : .int(Int64.random(in: .min ... .max, using: &rng))
        case 3: return Bool.random(using: &rng) ? .uint(UInt64.random(in: UInt64(Int64.max)...UInt64.max, using: &rng)) : .string(randomString(using: &rng))
        case 4: return .string(randomString(using: &rng))
        case 5:
            return .array((0..<Int.random(in: 0...5, using: &rng)).map { _ in random(depth: depth - 1, using: &rng) })
        default:
            var members: [(String, Value)] = []
            for _ in 0..<Int.random(in: 0...5, using: &rng) {
                let key = randomString(using: &rng)
                // Unique as Swift Strings (what Foundation's dictionary and our duplicate check use).
                guard !members.contains(where: { $0.0 == key }) else { continue }
                members.append((key, random(depth: depth - 1, using: &rng)))
            }
            return .object(members)
        }
    }

    static let scalarPool: [Unicode.Scalar] = (0x00...0x1F).map { Unicode.Scalar(UInt8($0)) } + [
        "\"", "\\", "/", "\u{2028}", "\u{2029}", "\u{7F}", "\u{80}", "é", "\u{301}", "\u{7FF}", "\u{800}",
        "€", "\u{D7FF}", "\u{E000}", "\u{FFFD}", "\u{FFFF}", "😀", "\u{10000}", "\u{10FFFF}",
    ]

    static func randomString(using rng: inout SplitMix64) -> String {
        var scalars = String.UnicodeScalarView()
        for _ in 0..<Int.random(in: 0...12, using: &rng) {
            if Int.random(in: 0..<3, using: &rng) == 0 {
                scalars.append(scalarPool.randomElement(using: &rng)!)
            } else {
                scalars.append(Unicode.Scalar(UInt8.random(in: 0x20...0x7E, using: &rng)))
            }
        }
        return String(scalars)
    }

    func write(to writer: inout JSONWriter, using rng: inout SplitMix64) {
        switch self {
        case .null: writer.null()
        case .bool(let value): writer.bool(value)
        case .int(let value): writer.int(value)
        case .uint(let value): writer.uint(value)
        case .string(let value):
            // Alternate between the two string entry points.
            if Bool.random(using: &rng) {
                writer.string(value)
            } else {
                Array(value.utf8).withUnsafeBytes { writer.string(bytes: $0) }
            }
        case .array(let elements):
            writer.beginArray()
            for element in elements { element.write(to: &writer, using: &rng) }
            writer.endArray()
        case .object(let members):
            writer.beginObject()
            for (key, value) in members {
                if case .string(let text) = value, Bool.random(using: &rng) {
                    writer.field(key, text)
                } else if case .int(let number) = value, Bool.random(using: &rng) {
                    writer.field(key, number)
                } else if case .bool(let flag) = value, Bool.random(using: &rng) {
                    writer.field(key, flag)
                } else {
                    writer.key(key)
                    value.write(to: &writer, using: &rng)
                }
            }
            writer.endObject()
        }
    }

    /// Whether Foundation's parse of the written text is this value.
    func matches(_ parsed: Any) -> Bool {
        switch self {
        case .null:
            return parsed is NSNull
        case .bool(let value):
            return isFoundationBoolean(parsed) && (parsed as? Bool) == value
        case .int(let value):
            guard !isFoundationBoolean(parsed), let number = parsed as? NSNumber else { return false }
            return number.int64Value == value
        case .uint(let value):
            guard !isFoundationBoolean(parsed), let number = parsed as? NSNumber else { return false }
            return number.uint64Value == value
        case .string(let value):
            return (parsed as? String).map { Array($0.utf8) == Array(value.utf8) } ?? false
        case .array(let elements):
            guard let array = parsed as? [Any], array.count == elements.count else { return false }
            return zip(elements, array).allSatisfy { $0.matches($1) }
        case .object(let members):
            guard let dictionary = parsed as? [String: Any], dictionary.count == members.count else { return false }
            return members.allSatisfy { key, value in
                guard let index = dictionary.index(forKey: key) else { return false }
                return Array(dictionary[index].key.utf8) == Array(key.utf8) && value.matches(dictionary[index].value)
            }
        }
    }

    /// A Foundation object graph for the reverse direction (Foundation writes, we scan).
    var foundationObject: Any {
        switch self {
        case .null: NSNull()
        case .bool(let value): value
        case .int(let value): NSNumber(value: value)
        case .uint(let value): NSNumber(value: value)
        case .string(let value): value
        case .array(let elements): elements.map(\.foundationObject)
        case .object(let members): Dictionary(uniqueKeysWithValues: members.map { ($0.0, $0.1.foundationObject) })
        }
    }
}

@Suite("JSON randomized round trip")
struct JSONRoundTripTests {
    @Test(arguments: [UInt64(1), 2, 3, 5, 8, 13, 21, 0x5EED_5EED])
    func writerOutputScansAndParsesToTheSameStructure(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        for _ in 0..<60 {
            let value = Value.random(depth: 5, using: &rng)
            var writer = JSONWriter(capacity: Int.random(in: 0...64, using: &rng))
            value.write(to: &writer, using: &rng)
            let bytes = writer.bytes

            let kind = try outcome(bytes) { p throws(JSONError) in try JSONScanner.validate(p) }.get()
            #expect(kind == value.kind)
            let parsed = try foundationParse(bytes)
            #expect(value.matches(parsed), "\(String(decoding: bytes, as: UTF8.self))")

            switch value {
            case .object(let members):
                let scanned = try outcome(bytes) { p throws(JSONError) in try JSONScanner.objectMembers(p) }.get()
                #expect(scanned.map { Array($0.key.utf8) } == members.map { Array($0.0.utf8) })
                #expect(scanned.map(\.kind) == members.map(\.1.kind))
                for (member, (_, expected)) in zip(scanned, members) {
                    if case .string(let text) = expected {
                        let read = try outcome(Array(bytes[member.range])) { p throws(JSONError) in try JSONRead.string(p) }.get()
                        #expect(Array(read.utf8) == Array(text.utf8))
                    }
                }
            case .array(let elements):
                let scanned = try outcome(bytes) { p throws(JSONError) in try JSONScanner.arrayElements(p) }.get()
                #expect(scanned.map(\.kind) == elements.map(\.kind))
            default:
                break
            }
            writer.wipe()
            #expect(writer.bytes.isEmpty)
        }
    }

    @Test(arguments: [UInt64(34), 55, 89])
    func foundationOutputIsAccepted(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        for _ in 0..<60 {
            let value = Value.random(depth: 5, using: &rng)
            let wrapped = try JSONSerialization.data(withJSONObject: [value.foundationObject])
            let elements = try outcome(Array(wrapped)) { p throws(JSONError) in try JSONScanner.arrayElements(p) }.get()
            #expect(elements.map(\.kind) == [value.kind])
        }
    }
}
