import Foundation
import LMDB
import Testing

private struct Rollback: Error {}

@Suite struct TransactionTests {
    @Test func putGetDeleteRoundTrip() throws {
        try withEnvironment { environment, db, _ in
            try environment.write { txn in
                let readOnly = txn.isReadOnly
                #expect(!readOnly)
                try txn.put(bytes("one"), forKey: bytes("a"), in: db)
                try txn.put(bytes("two"), forKey: bytes("b"), in: db)
                try txn.put(bytes("uno"), forKey: bytes("a"), in: db)  // replaces
                // A write transaction sees its own writes.
                try #expect(txn.value(forKey: bytes("a"), in: db) == bytes("uno"))
            }
            try environment.read { txn in
                let readOnly = txn.isReadOnly
                #expect(readOnly)
                try #expect(txn.value(forKey: bytes("a"), in: db) == bytes("uno"))
                try #expect(txn.value(forKey: bytes("b"), in: db) == bytes("two"))
                try #expect(txn.value(forKey: bytes("c"), in: db) == nil)
                try #expect(txn.contains(key: bytes("b"), in: db))
                try #expect(!txn.contains(key: bytes("c"), in: db))
            }
            let deleted = try environment.write { txn in
                (try txn.delete(key: bytes("a"), in: db), try txn.delete(key: bytes("missing"), in: db))
            }
            #expect(deleted.0)
            #expect(!deleted.1)
            try environment.read { txn in
                try #expect(txn.value(forKey: bytes("a"), in: db) == nil)
                try #expect(txn.count(in: db) == 1)
            }
        }
    }

    @Test func emptyValueIsStoredAndDistinctFromAbsent() throws {
        try withEnvironment { environment, db, _ in
            try environment.write { txn in try txn.put([], forKey: bytes("empty"), in: db) }
            try environment.read { txn in
                try #expect(txn.value(forKey: bytes("empty"), in: db) == [])
                try #expect(txn.withValue(forKey: bytes("empty"), in: db) { $0?.count } == 0)
            }
        }
    }

    @Test func throwingWriteClosureLeavesNothing() throws {
        try withEnvironment { environment, db, _ in
            try environment.write { txn in try txn.put(bytes("kept"), forKey: bytes("k"), in: db) }
            #expect(throws: Rollback.self) {
                try environment.write { txn in
                    try txn.put(bytes("changed"), forKey: bytes("k"), in: db)
                    try txn.put(bytes("new"), forKey: bytes("n"), in: db)
                    try txn.delete(key: bytes("k"), in: db)
                    throw Rollback()
                }
            }
            try environment.read { txn in
                try #expect(txn.value(forKey: bytes("k"), in: db) == bytes("kept"))
                try #expect(!txn.contains(key: bytes("n"), in: db))
                try #expect(txn.count(in: db) == 1)
            }
        }
    }

    @Test func writeReturnsTheBodyResult() throws {
        try withEnvironment { environment, db, _ in
            let count = try environment.write { txn in
                try txn.put(bytes("v"), forKey: bytes("k"), in: db)
                return try txn.count(in: db)
            }
            #expect(count == 1)
        }
    }

    @Test func withValueLendsTheStoredBytes() throws {
        try withEnvironment { environment, db, _ in
            let stored: [UInt8] = [0, 1, 2, 0xFF, 0x80]
            try environment.write { txn in try txn.put(stored, forKey: [9, 9], in: db) }
            try environment.read { txn in
                let lent = try txn.withValue(forKey: [9, 9], in: db) { $0.map { [UInt8]($0) } }
                #expect(lent == stored)
                let key: [UInt8] = [9, 9]
                let viaRawKey = try key.withUnsafeBytes { key in
                    try txn.withValue(forKey: key, in: db) { $0.map { [UInt8]($0) } }
                }
                #expect(viaRawKey == stored)
                let absent = try txn.withValue(forKey: [1], in: db) { $0 == nil }
                #expect(absent)
            }
        }
    }

    @Test func rawBufferPutStoresTheBytes() throws {
        try withEnvironment { environment, db, _ in
            let key = bytes("raw")
            let value = bytes("value")
            try environment.write { txn in
                try key.withUnsafeBytes { key in
                    try value.withUnsafeBytes { value in
                        try txn.put(value, forKey: key, in: db)
                    }
                }
            }
            try environment.read { txn in
                try #expect(txn.value(forKey: key, in: db) == value)
            }
        }
    }

    @Test func reservingPutStoresWhatFillWrote() throws {
        try withEnvironment { environment, db, _ in
            try environment.write { txn in
                try txn.put(reserving: 300, forKey: bytes("reserved"), in: db) { buffer in
                    #expect(buffer.count == 300)
                    for index in buffer.indices { buffer[index] = UInt8(index % 251) }
                }
            }
            try environment.read { txn in
                let expected = (0..<300).map { UInt8($0 % 251) }
                try #expect(txn.value(forKey: bytes("reserved"), in: db) == expected)
            }
        }
    }

    @Test func reservingPutWithNoOverwriteOnAnExistingKeyThrowsWithoutCallingFill() throws {
        try withEnvironment { environment, db, _ in
            try environment.write { txn in try txn.put(bytes("first"), forKey: bytes("k"), in: db) }
            #expect(throws: LMDBError.keyExists) {
                try environment.write { txn in
                    try txn.put(reserving: 4, forKey: bytes("k"), in: db, flags: .noOverwrite) { _ in
                        Issue.record("fill must not run when the put fails")
                    }
                }
            }
            try environment.read { txn in
                try #expect(txn.value(forKey: bytes("k"), in: db) == bytes("first"))
            }
        }
    }

    @Test func reservingPutZeroesTheSpaceWhenFillThrows() throws {
        try withEnvironment { environment, db, _ in
            try environment.write { txn in try txn.put(bytes("secret!"), forKey: bytes("k"), in: db) }
            // Caught inside the transaction: the key holds zeros, not the old or a partial value.
            let inside = try environment.write { txn in
                #expect(throws: Rollback.self) {
                    try txn.put(reserving: 7, forKey: bytes("k"), in: db) { buffer in
                        buffer[0] = 0x41
                        throw Rollback()
                    }
                }
                return try txn.value(forKey: bytes("k"), in: db)
            }
            #expect(inside == [UInt8](repeating: 0, count: 7))
            // Let through, the error aborts the write: the old value stays.
            try environment.write { txn in try txn.put(bytes("secret!"), forKey: bytes("k"), in: db) }
            #expect(throws: Rollback.self) {
                try environment.write { txn in
                    try txn.put(reserving: 7, forKey: bytes("k"), in: db) { _ in throw Rollback() }
                }
            }
            try environment.read { txn in
                try #expect(txn.value(forKey: bytes("k"), in: db) == bytes("secret!"))
            }
        }
    }

    @Test func noOverwriteOnAnExistingKeyThrowsKeyExists() throws {
        try withEnvironment { environment, db, _ in
            try environment.write { txn in
                try txn.put(bytes("first"), forKey: bytes("k"), in: db, flags: .noOverwrite)
            }
            #expect(throws: LMDBError.keyExists) {
                try environment.write { txn in
                    try txn.put(bytes("second"), forKey: bytes("k"), in: db, flags: .noOverwrite)
                }
            }
            try environment.read { txn in
                try #expect(txn.value(forKey: bytes("k"), in: db) == bytes("first"))
            }
        }
    }

    @Test func appendRequiresAscendingKeys() throws {
        try withEnvironment { environment, db, _ in
            try environment.write { txn in
                for key in ["a", "b", "c"] {
                    try txn.put(bytes(key), forKey: bytes(key), in: db, flags: .append)
                }
            }
            #expect(throws: LMDBError.keyExists) {
                try environment.write { txn in
                    try txn.put(bytes("early"), forKey: bytes("b0"), in: db, flags: .append)
                }
            }
            try environment.read { txn in try #expect(txn.count(in: db) == 3) }
        }
    }

    @Test func invalidWritesThrowLMDBErrors() throws {
        try withEnvironment { environment, db, _ in
            #expect(throws: LMDBError.badValueSize) {
                try environment.write { txn in try txn.put(bytes("v"), forKey: [], in: db) }
            }
            #expect(throws: LMDBError.badValueSize) {
                try environment.write { txn in
                    try txn.put(bytes("v"), forKey: [UInt8](repeating: 1, count: 512), in: db)
                }
            }
            #expect(throws: LMDBError(code: EACCES)) {
                try environment.read { txn in try txn.put(bytes("v"), forKey: bytes("k"), in: db) }
            }
        }
    }

    @Test func countLastAndRemoveAll() throws {
        try withEnvironment { environment, db, _ in
            try environment.read { txn in
                try #expect(txn.count(in: db) == 0)
                try #expect(txn.last(in: db) == nil)
            }
            try environment.write { txn in
                for key in ["m", "z", "a"] {
                    try txn.put(bytes("value-" + key), forKey: bytes(key), in: db)
                }
            }
            try environment.read { txn in
                try #expect(txn.count(in: db) == 3)
                let lastEntry = try txn.last(in: db)
                let last = try #require(lastEntry)
                #expect(last.key == bytes("z"))
                #expect(last.value == bytes("value-z"))
            }
            try environment.write { txn in try txn.removeAll(in: db) }
            try environment.read { txn in
                try #expect(txn.count(in: db) == 0)
                try #expect(txn.last(in: db) == nil)
            }
            // The database is still there after removeAll.
            try environment.write { txn in try txn.put(bytes("v"), forKey: bytes("again"), in: db) }
            try environment.read { txn in try #expect(txn.count(in: db) == 1) }
        }
    }

    @Test func databasesAreSeparateKeySpaces() throws {
        try withTemporaryDirectory { directory in
            let environment = try Environment(path: directory + "/env", databases: ["one", "two"])
            defer { environment.close() }
            let one = environment.database("one")
            let two = environment.database("two")
            #expect(one != two)
            #expect(one.name == "one")
            try environment.write { txn in try txn.put(bytes("1"), forKey: bytes("k"), in: one) }
            try environment.read { txn in
                try #expect(txn.value(forKey: bytes("k"), in: one) == bytes("1"))
                try #expect(txn.value(forKey: bytes("k"), in: two) == nil)
                try #expect(txn.count(in: two) == 0)
            }
        }
    }

    @Test func throwingChildIsRolledBackWhileTheParentCommits() throws {
        try withEnvironment { environment, db, _ in
            try environment.write { txn in
                try txn.put(bytes("parent"), forKey: bytes("p"), in: db)
                #expect(throws: Rollback.self) {
                    try txn.withChild { child in
                        try child.put(bytes("child"), forKey: bytes("c"), in: db)
                        try child.put(bytes("overwritten"), forKey: bytes("p"), in: db)
                        // The child sees its parent's and its own writes.
                        try #expect(child.value(forKey: bytes("p"), in: db) == bytes("overwritten"))
                        throw Rollback()
                    }
                }
                // The parent is usable and unaffected.
                try #expect(txn.value(forKey: bytes("p"), in: db) == bytes("parent"))
                try #expect(!txn.contains(key: bytes("c"), in: db))
                try txn.put(bytes("after"), forKey: bytes("a"), in: db)
            }
            try environment.read { txn in
                try #expect(txn.value(forKey: bytes("p"), in: db) == bytes("parent"))
                try #expect(txn.value(forKey: bytes("a"), in: db) == bytes("after"))
                try #expect(!txn.contains(key: bytes("c"), in: db))
            }
        }
    }

    @Test func successfulChildCommitsWithTheParent() throws {
        try withEnvironment { environment, db, _ in
            let childResult = try environment.write { txn in
                try txn.put(bytes("parent"), forKey: bytes("p"), in: db)
                let result = try txn.withChild { child in
                    try child.put(bytes("child"), forKey: bytes("c"), in: db)
                    return try txn_count(child, db)
                }
                // Merged into the parent.
                try #expect(txn.value(forKey: bytes("c"), in: db) == bytes("child"))
                return result
            }
            #expect(childResult == 2)
            try environment.read { txn in
                try #expect(txn.value(forKey: bytes("p"), in: db) == bytes("parent"))
                try #expect(txn.value(forKey: bytes("c"), in: db) == bytes("child"))
            }
        }
    }

    @Test func successfulChildIsDiscardedWhenTheParentAborts() throws {
        try withEnvironment { environment, db, _ in
            #expect(throws: Rollback.self) {
                try environment.write { txn in
                    try txn.withChild { child in try child.put(bytes("child"), forKey: bytes("c"), in: db) }
                    throw Rollback()
                }
            }
            try environment.read { txn in try #expect(txn.count(in: db) == 0) }
        }
    }

    @Test func childOfAReadTransactionIsRefused() throws {
        try withEnvironment { environment, _, _ in
            try environment.read { txn -> Void in
                #expect(throws: LMDBError(code: EINVAL)) {
                    try txn.withChild { _ in () }
                }
            }
        }
    }
}

/// `count(in:)` through a borrowed transaction, to show a child can be passed on like its parent.
private func txn_count(_ txn: borrowing Transaction, _ db: Database) throws -> Int {
    try txn.count(in: db)
}
