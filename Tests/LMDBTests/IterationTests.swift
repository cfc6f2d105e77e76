import LMDB
import Testing

/// Keys of the fixture, in LMDB (memcmp) order.
private let fixtureKeys = ["a1", "a2", "a3", "b1", "b2", "c"]

private func withFixture(_ body: (Environment, Database) throws -> Void) throws {
    try withEnvironment { environment, db, _ in
        try environment.write { txn in
            for key in fixtureKeys.shuffled() {
                try txn.put(bytes("v-" + key), forKey: bytes(key), in: db)
            }
        }
        try body(environment, db)
    }
}

/// One iteration: where it starts, the prefix, and the keys it must visit in order.
struct IterationCase: Sendable, CustomTestStringConvertible {
    let from: String?
    let prefix: String?
    let expected: [String]

    var testDescription: String {
        "from: \(from.map { "\"\($0)\"" } ?? "nil"), prefix: \(prefix.map { "\"\($0)\"" } ?? "nil")"
    }
}

@Suite struct IterationTests {
    static let forwardCases: [IterationCase] = [
        .init(from: nil, prefix: nil, expected: fixtureKeys),
        .init(from: "a2", prefix: nil, expected: ["a2", "a3", "b1", "b2", "c"]),  // on a key
        .init(from: "a25", prefix: nil, expected: ["a3", "b1", "b2", "c"]),  // between keys
        .init(from: "0", prefix: nil, expected: fixtureKeys),  // before the first
        .init(from: "d", prefix: nil, expected: []),  // past the end
        .init(from: "", prefix: nil, expected: fixtureKeys),  // empty start = from the first
        .init(from: nil, prefix: "b", expected: ["b1", "b2"]),
        .init(from: nil, prefix: "a", expected: ["a1", "a2", "a3"]),
        .init(from: nil, prefix: "c", expected: ["c"]),
        .init(from: "b2", prefix: "b", expected: ["b2"]),
        .init(from: "a", prefix: "b", expected: ["b1", "b2"]),  // start below the prefix
        .init(from: "b3", prefix: "b", expected: []),  // start past the prefix's keys
        .init(from: nil, prefix: "x", expected: []),  // no match, past the end
        .init(from: nil, prefix: "a0", expected: []),  // no match, between keys
        .init(from: nil, prefix: "a1", expected: ["a1"]),  // prefix equal to a key
        .init(from: nil, prefix: "", expected: fixtureKeys),
    ]

    @Test(arguments: forwardCases)
    func forEachVisitsKeysInOrder(_ testCase: IterationCase) throws {
        try withFixture { environment, db in
            var visited: [String] = []
            try environment.read { txn in
                try txn.forEach(in: db, from: testCase.from.map(bytes), prefix: testCase.prefix.map(bytes)) { key, value in
                    #expect(text(value) == "v-" + text(key))
                    visited.append(text(key))
                    return .continue
                }
            }
            #expect(visited == testCase.expected)
        }
    }

    static let reverseCases: [IterationCase] = [
        .init(from: nil, prefix: nil, expected: fixtureKeys.reversed()),
        .init(from: "b1", prefix: nil, expected: ["b1", "a3", "a2", "a1"]),  // exactly on a key
        .init(from: "a25", prefix: nil, expected: ["a2", "a1"]),  // between keys
        .init(from: "z", prefix: nil, expected: fixtureKeys.reversed()),  // past the end
        .init(from: "a1", prefix: nil, expected: ["a1"]),  // the first key
        .init(from: "a0", prefix: nil, expected: []),  // before the first
        .init(from: "", prefix: nil, expected: []),  // no key is <= the empty key
        .init(from: nil, prefix: "a", expected: ["a3", "a2", "a1"]),
        .init(from: nil, prefix: "b", expected: ["b2", "b1"]),
        .init(from: nil, prefix: "c", expected: ["c"]),  // the prefix's keys end the database
        .init(from: "a2", prefix: "a", expected: ["a2", "a1"]),  // on a key within the prefix
        .init(from: "a25", prefix: "a", expected: ["a2", "a1"]),  // between keys within the prefix
        .init(from: "zz", prefix: "a", expected: ["a3", "a2", "a1"]),  // start past the prefix's keys
        .init(from: "b", prefix: "a", expected: ["a3", "a2", "a1"]),  // start just past them
        .init(from: "a9", prefix: "b", expected: []),  // start below the prefix
        .init(from: nil, prefix: "x", expected: []),  // no match, past the end
        .init(from: nil, prefix: "0", expected: []),  // no match, before the start
        .init(from: nil, prefix: "a0", expected: []),  // no match, between keys
        .init(from: nil, prefix: "b1", expected: ["b1"]),  // prefix equal to a key
        .init(from: nil, prefix: "", expected: fixtureKeys.reversed()),
    ]

    @Test(arguments: reverseCases)
    func forEachReversedVisitsKeysInDescendingOrder(_ testCase: IterationCase) throws {
        try withFixture { environment, db in
            var visited: [String] = []
            try environment.read { txn in
                try txn.forEachReversed(in: db, from: testCase.from.map(bytes), prefix: testCase.prefix.map(bytes)) { key, value in
                    #expect(text(value) == "v-" + text(key))
                    visited.append(text(key))
                    return .continue
                }
            }
            #expect(visited == testCase.expected)
        }
    }

    @Test func stopEndsTheIteration() throws {
        try withFixture { environment, db in
            var forward: [String] = []
            var backward: [String] = []
            try environment.read { txn in
                try txn.forEach(in: db) { key, _ in
                    forward.append(text(key))
                    return forward.count == 2 ? .stop : .continue
                }
                // "The last entry with a prefix".
                try txn.forEachReversed(in: db, prefix: bytes("a")) { key, _ in
                    backward.append(text(key))
                    return .stop
                }
            }
            #expect(forward == ["a1", "a2"])
            #expect(backward == ["a3"])
        }
    }

    @Test func reversedPrefixEndingIn0xFFFindsItsLastKey() throws {
        try withEnvironment { environment, db, _ in
            let keys: [[UInt8]] = [[0x01, 0xFE], [0x01, 0xFF], [0x01, 0xFF, 0x00], [0x01, 0xFF, 0xFF], [0x02], [0xFF], [0xFF, 0xFF, 0x01]]
            try environment.write { txn in
                for key in keys { try txn.put(key, forKey: key, in: db) }
            }
            func reversed(prefix: [UInt8], from: [UInt8]? = nil) throws -> [[UInt8]] {
                var visited: [[UInt8]] = []
                try environment.read { txn in
                    try txn.forEachReversed(in: db, from: from, prefix: prefix) { key, _ in
                        visited.append([UInt8](key))
                        return .continue
                    }
                }
                return visited
            }
            try #expect(reversed(prefix: [0x01, 0xFF]) == [[0x01, 0xFF, 0xFF], [0x01, 0xFF, 0x00], [0x01, 0xFF]])
            try #expect(reversed(prefix: [0x01]) == [[0x01, 0xFF, 0xFF], [0x01, 0xFF, 0x00], [0x01, 0xFF], [0x01, 0xFE]])
            // All-0xFF prefix: no successor key, so the search starts at the last key.
            try #expect(reversed(prefix: [0xFF]) == [[0xFF, 0xFF, 0x01], [0xFF]])
            try #expect(reversed(prefix: [0xFF, 0xFF]) == [[0xFF, 0xFF, 0x01]])
            try #expect(reversed(prefix: [0x01, 0xFF], from: [0x01, 0xFF, 0x80]) == [[0x01, 0xFF, 0x00], [0x01, 0xFF]])
        }
    }

    @Test func errorsFromTheBodyPropagate() throws {
        struct Stop: Error {}
        try withFixture { environment, db in
            var visited = 0
            #expect(throws: Stop.self) {
                try environment.read { txn in
                    try txn.forEach(in: db) { _, _ in
                        visited += 1
                        throw Stop()
                    }
                }
            }
            #expect(visited == 1)
        }
    }

    @Test func iterationInAWriteTransactionSeesItsWrites() throws {
        try withFixture { environment, db in
            let keys = try environment.write { txn in
                try txn.put(bytes("v-b15"), forKey: bytes("b15"), in: db)
                try txn.delete(key: bytes("b1"), in: db)
                var keys: [String] = []
                try txn.forEach(in: db, prefix: bytes("b")) { key, _ in
                    keys.append(text(key))
                    return .continue
                }
                return keys
            }
            #expect(keys == ["b15", "b2"])
        }
    }

    @Test func deletingTheVisitedKeyWhileIteratingVisitsEachKeyOnce() throws {
        try withEnvironment { environment, db, _ in
            try environment.write { txn in
                for index in 0..<1000 {
                    try txn.put([1], forKey: bytes(String(format: "%@%04d", index % 2 == 0 ? "a" : "b", index)), in: db)
                }
            }
            var visited: [[UInt8]] = []
            try environment.write { txn in
                try txn.forEach(in: db, prefix: bytes("a")) { key, _ in
                    let copy = [UInt8](key)  // `key` dies with the delete below
                    visited.append(copy)
                    try txn.delete(key: copy, in: db)
                    return .continue
                }
            }
            #expect(visited.count == 500)
            #expect(Set(visited).count == 500)
            try environment.read { txn in
                #expect(try txn.count(in: db) == 500)
                var remaining = 0
                try txn.forEach(in: db, prefix: bytes("a")) { _, _ in
                    remaining += 1
                    return .continue
                }
                #expect(remaining == 0)
            }
        }
    }
}
