import Foundation
import LMDB
import Testing

private struct Rollback: Error {}

/// A change log records what write transactions changed, and applying it to another copy of
/// the environment reproduces their contents exactly (the journal of a vault depends on it).
@Suite struct ChangeLogTests {
    /// Every entry of every database, for comparing two environments.
    static func contents(_ env: Environment, _ names: [String]) throws -> [String: [[UInt8]: [UInt8]]] {
        try env.read { txn in
            var out: [String: [[UInt8]: [UInt8]]] = [:]
            for name in names {
                var entries: [[UInt8]: [UInt8]] = [:]
                try txn.forEach(in: env.database(name)) { k, v in
                    entries[Array(k)] = Array(v)
                    return .continue
                }
                out[name] = entries
            }
            return out
        }
    }

    @Test func aLogAppliedToAnotherCopyReproducesItsContents() throws {
        try withTemporaryDirectory { dir in
            let names = ["a", "b"]
            let source = try Environment(path: dir + "/source", databases: names)
            let copy = try Environment(path: dir + "/copy", databases: names)
            defer { source.close(); copy.close() }
            // Something already in both, which the log then deletes and replaces.
            for env in [source, copy] {
                try env.write { txn in
                    try txn.put(bytes("old"), forKey: bytes("k0"), in: env.database("a"))
                    try txn.put(bytes("x"), forKey: bytes("gone"), in: env.database("b"))
                }
            }
            let log = ChangeLog(codes: [(source.database("a"), 1), (source.database("b"), 2)])
            try source.write(recordingInto: log) { txn in
                let a = source.database("a"), b = source.database("b")
                try txn.put(bytes("new"), forKey: bytes("k0"), in: a)
                try txn.put(reserving: 5, forKey: bytes("k1"), in: a) { $0.copyBytes(from: bytes("filld")) }
                try txn.put([], forKey: bytes("empty"), in: a)
                try txn.delete(key: bytes("gone"), in: b)
                try txn.delete(key: bytes("never-there"), in: b)
                // A child that commits is recorded; one that aborts is not.
                try txn.withChild { child in try child.put(bytes("kept"), forKey: bytes("c1"), in: b) }
                #expect(throws: Rollback.self) {
                    try txn.withChild { child in
                        try child.put(bytes("rolled back"), forKey: bytes("c2"), in: b)
                        throw Rollback()
                    }
                }
                try txn.put([UInt8](repeating: 7, count: 9000), forKey: bytes("big"), in: b)
            }
            #expect(log.count == 7)
            let databases: [UInt8: Database] = [1: copy.database("a"), 2: copy.database("b")]
            try copy.write { txn in try log.bytes.withUnsafeBytes { try txn.apply(changes: $0, databases: databases) } }
            let expected = try Self.contents(source, names)
            #expect(try Self.contents(copy, names) == expected)
            #expect(expected["b"]?[bytes("c2")] == nil && expected["a"]?[bytes("k1")] == bytes("filld"))
            // Applying it again changes nothing.
            try copy.write { txn in try log.bytes.withUnsafeBytes { try txn.apply(changes: $0, databases: databases) } }
            #expect(try Self.contents(copy, names) == expected)

            // A drop empties the database on the copy too.
            log.removeAll()
            try source.write(recordingInto: log) { txn in try txn.removeAll(in: source.database("b")) }
            try copy.write { txn in try log.bytes.withUnsafeBytes { try txn.apply(changes: $0, databases: databases) } }
            #expect(try Self.contents(copy, names) == Self.contents(source, names))
            #expect(try Self.contents(copy, names)["b"]!.isEmpty)
        }
    }

    @Test func aFailedTransactionLeavesItsRecordsForTheCallerToDiscard() throws {
        try withEnvironment { env, db, _ in
            let log = ChangeLog(codes: [(db, 9)])
            #expect(throws: Rollback.self) {
                try env.write(recordingInto: log) { txn in
                    try txn.put(bytes("v"), forKey: bytes("k"), in: db)
                    throw Rollback()
                }
            }
            #expect(log.count == 1)  // recorded, but the transaction aborted: the caller drops the log
            let value = try env.read { txn in try txn.value(forKey: bytes("k"), in: db) }
            #expect(value == nil)
        }
    }

    @Test(arguments: [
        ([UInt8]([9, 1, 0, 1, 65]), "unknown operation 9"),
        ([1, 1, 0, 5, 65], "key runs past the end"),
        ([1, 1, 0, 1, 65, 0, 0, 0, 9, 1], "value runs past the end"),
        ([2, 1, 0, 0], "empty key"),
        ([3], "database code runs past the end"),
        ([2, 7, 0, 1, 65], "unknown database code 7"),
    ])
    func malformedLogsAreRefusedBeforeAnythingIsApplied(encoded: [UInt8], reason: String) throws {
        try withEnvironment { env, db, _ in
            let first: [UInt8] = [1, 1, 0, 1, 90, 0, 0, 0, 1, 90]  // a valid put of Z=Z before the bad record
            do {
                try env.write { txn in
                    try (first + encoded).withUnsafeBytes { try txn.apply(changes: $0, databases: [1: db]) }
                }
                Issue.record("applied a malformed log")
            } catch let error as ChangeLog.FormatError {
                #expect(error.description.contains(reason), "\(error)")
            }
            // The transaction aborted: not even the valid first record is there.
            let count = try env.read { txn in try txn.count(in: db) }
            #expect(count == 0)
        }
    }
}
