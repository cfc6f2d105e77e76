import Dispatch
import Foundation
import LMDB
import Testing

@Suite struct EnvironmentTests {
    @Test func committedValueSurvivesCloseAndReopen() throws {
        try withTemporaryDirectory { directory in
            let path = directory + "/env"
            let first = try Environment(path: path, databases: ["main", "other"])
            try first.write { txn in
                try txn.put(bytes("kept"), forKey: bytes("key"), in: first.database("main"))
                try txn.put(bytes("elsewhere"), forKey: bytes("key"), in: first.database("other"))
            }
            first.close()

            let second = try Environment(path: path, databases: ["main", "other"])
            defer { second.close() }
            try second.read { txn in
                try #expect(txn.value(forKey: bytes("key"), in: second.database("main")) == bytes("kept"))
                try #expect(txn.value(forKey: bytes("key"), in: second.database("other")) == bytes("elsewhere"))
            }
        }
    }

    @Test func readAheadIsOnByDefaultAndOffWhenAsked() throws {
        try withTemporaryDirectory { directory in
            let plain = try Environment(path: directory + "/plain", databases: ["main"])
            defer { plain.close() }
            #expect(try plain.readsAhead())
            let random = try Environment(path: directory + "/random", options: .init(readAhead: false), databases: ["main"])
            defer { random.close() }
            #expect(try !random.readsAhead())
            try random.write { txn in try txn.put(bytes("v"), forKey: bytes("k"), in: random.database("main")) }
            try random.read { txn in try #expect(txn.value(forKey: bytes("k"), in: random.database("main")) == bytes("v")) }
        }
    }

    @Test func createsMissingDirectoriesWithMode0700AndFilesWithFileMode() throws {
        try withTemporaryDirectory { directory in
            let path = directory + "/a/b/env"
            let environment = try Environment(path: path, databases: ["main"])
            defer { environment.close() }
            try #expect(permissions(directory + "/a") == 0o700)
            try #expect(permissions(path) == 0o700)
            try #expect(permissions(path + "/data.mdb") == 0o600)
            try #expect(permissions(path + "/lock.mdb") == 0o600)
            #expect(environment.path == path)
        }
    }

    @Test func secondOpenOfTheSamePathThrowsAlreadyOpenUntilClosed() throws {
        try withTemporaryDirectory { directory in
            let path = directory + "/env"
            let first = try Environment(path: path, databases: ["main"])
            #expect(throws: LMDBError.alreadyOpen) {
                _ = try Environment(path: path, databases: ["main"])
            }
            // Another spelling of the same directory is the same environment (registry keyed by realpath).
            #expect(throws: LMDBError.alreadyOpen) {
                _ = try Environment(path: directory + "/./env/", databases: ["main"])
            }
            try FileManager.default.createSymbolicLink(atPath: directory + "/link", withDestinationPath: path)
            #expect(throws: LMDBError.alreadyOpen) {
                _ = try Environment(path: directory + "/link", databases: ["main"])
            }
            // The failed opens did not disturb the open environment.
            try first.write { txn in try txn.put(bytes("1"), forKey: bytes("k"), in: first.database("main")) }
            first.close()

            let second = try Environment(path: path, databases: ["main"])
            defer { second.close() }
            try second.read { txn in
                try #expect(txn.value(forKey: bytes("k"), in: second.database("main")) == bytes("1"))
            }
        }
    }

    @Test func failedOpenReleasesThePath() throws {
        try withTemporaryDirectory { directory in
            let path = directory + "/env"
            // Fails after mdb_env_open, while opening the databases.
            #expect(throws: LMDBError.dbsFull) {
                _ = try Environment(path: path, options: .init(maxDatabases: 1), databases: ["a", "b"])
            }
            // Fails in mdb_env_open: the path is a file.
            #expect(FileManager.default.createFile(atPath: directory + "/file", contents: Data()))
            #expect(throws: LMDBError(code: ENOTDIR)) {
                _ = try Environment(path: directory + "/file", databases: ["main"])
            }
            // Fails before the registry: a parent that is a file.
            #expect(throws: LMDBError(code: ENOTDIR)) {
                _ = try Environment(path: directory + "/file/env", databases: ["main"])
            }

            let environment = try Environment(path: path, options: .init(maxDatabases: 2), databases: ["a", "b"])
            defer { environment.close() }
            try environment.write { txn in try txn.put(bytes("v"), forKey: bytes("k"), in: environment.database("b")) }
        }
    }

    @Test func closeIsIdempotentAndLaterUseThrowsClosed() throws {
        try withTemporaryDirectory { directory in
            let environment = try Environment(path: directory + "/env", databases: ["main"])
            environment.close()
            environment.close()
            #expect(throws: LMDBError.closed) { try environment.read { _ in () } }
            #expect(throws: LMDBError.closed) { try environment.write { _ in () } }
            #expect(throws: LMDBError.closed) { try environment.sync() }
            #expect(throws: LMDBError.closed) { _ = try environment.info() }
            #expect(throws: LMDBError.closed) { try environment.setMapSize(1 << 31) }
            #expect(throws: LMDBError.closed) { try environment.copy(to: directory + "/copy", compact: true) }
        }
    }

    @Test func closeInsideATransactionTakesEffectWhenItEnds() throws {
        try withTemporaryDirectory { directory in
            let path = directory + "/env"
            let environment = try Environment(path: path, databases: ["main"])
            let db = environment.database("main")
            try environment.write { txn in try txn.put(bytes("v"), forKey: bytes("k"), in: db) }

            let value = try environment.read { txn in
                environment.close()
                // The transaction in flight keeps working; the environment is still open...
                #expect(throws: LMDBError.alreadyOpen) { _ = try Environment(path: path, databases: ["main"]) }
                // ...but starts nothing new.
                #expect(throws: LMDBError.closed) { try environment.read { _ in () } }
                return try txn.value(forKey: bytes("k"), in: db)
            }
            #expect(value == bytes("v"))

            // The read's end closed the handle and released the path.
            let reopened = try Environment(path: path, databases: ["main"])
            reopened.close()
        }
    }

    @Test func readTransactionSeesASnapshot() throws {
        try withEnvironment { environment, db, _ in
            try environment.write { txn in try txn.put(bytes("old"), forKey: bytes("k"), in: db) }

            let writeFailure = ErrorBox()
            let done = DispatchSemaphore(value: 0)
            let (before, after, newKeyVisible) = try environment.read { txn in
                let before = try txn.value(forKey: bytes("k"), in: db)
                // The write runs and commits on another thread while this read is open
                // (MDB_NOTLS: the read does not hold this thread's reader slot against it).
                let writer = Thread {
                    do {
                        try environment.write { txn in
                            try txn.put(bytes("new"), forKey: bytes("k"), in: db)
                            try txn.put(bytes("x"), forKey: bytes("added"), in: db)
                        }
                    } catch {
                        writeFailure.set(error)
                    }
                    done.signal()
                }
                writer.start()
                done.wait()
                return (before, try txn.value(forKey: bytes("k"), in: db), try txn.contains(key: bytes("added"), in: db))
            }
            #expect(writeFailure.get() == nil)

            #expect(before == bytes("old"))
            #expect(after == bytes("old"))
            #expect(!newKeyVisible)
            try environment.read { txn in
                try #expect(txn.value(forKey: bytes("k"), in: db) == bytes("new"))
                try #expect(txn.contains(key: bytes("added"), in: db))
            }
        }
    }

    @Test func mapFullIsReportedAndTheEnvironmentStaysUsable() throws {
        // 64 KiB = 16 pages of 4 KiB; each 3000-byte value needs its own overflow page.
        let value = [UInt8](repeating: 0xA5, count: 3000)
        try withEnvironment(options: .init(mapSize: 64 << 10)) { environment, db, _ in
            var stored = 0
            var failure: LMDBError?
            while failure == nil && stored < 100 {
                do {
                    try environment.write { txn in
                        try txn.put(value, forKey: bytes("key\(stored)"), in: db)
                    }
                    stored += 1
                } catch let error as LMDBError {
                    failure = error
                }
            }
            let error = try #require(failure)
            #expect(error.isMapFull)
            #expect(error == .mapFull)
            #expect(stored > 0)

            // Reads still work and every committed entry is intact; the failed one left nothing.
            try environment.read { txn in
                try #expect(txn.count(in: db) == stored)
                for index in 0..<stored {
                    try #expect(txn.value(forKey: bytes("key\(index)"), in: db) == value)
                }
                try #expect(!txn.contains(key: bytes("key\(stored)"), in: db))
            }

            // A write that frees space still works after the failed transaction...
            try environment.write { txn in
                try #expect(txn.delete(key: bytes("key0"), in: db))
            }
            // ...and so does a small one.
            try environment.write { txn in
                try txn.put(bytes("small"), forKey: bytes("small"), in: db)
            }

            // Growing the map lets the big write through.
            try environment.setMapSize(1 << 20)
            try #expect(environment.info().mapSize == 1 << 20)
            try environment.write { txn in
                try txn.put(value, forKey: bytes("key\(stored)"), in: db)
            }
            try environment.read { txn in
                try #expect(txn.value(forKey: bytes("key\(stored)"), in: db) == value)
                try #expect(txn.value(forKey: bytes("small"), in: db) == bytes("small"))
            }
        }
    }

    @Test func setMapSizeIsRefusedWhileATransactionIsOpen() throws {
        try withEnvironment { environment, _, _ in
            try environment.read { _ -> Void in
                #expect(throws: LMDBError(code: EINVAL)) { try environment.setMapSize(2 << 30) }
            }
            try environment.setMapSize(2 << 30)
            try #expect(environment.info().mapSize == 2 << 30)
        }
    }

    @Test func infoReportsTheEnvironment() throws {
        try withEnvironment(options: .init(mapSize: 8 << 20)) { environment, db, _ in
            let before = try environment.info()
            #expect(before.mapSize == 8 << 20)
            #expect(before.pageSize > 0)
            try environment.write { txn in try txn.put(bytes("v"), forKey: bytes("k"), in: db) }
            let after = try environment.info()
            #expect(after.lastTransactionID == before.lastTransactionID + 1)
            #expect(after.lastPageNumber >= before.lastPageNumber)
            try environment.sync()
        }
    }

    @Test func compactCopyOpensWithTheSameDataAndIsSmaller() throws {
        try withEnvironment(options: .init(mapSize: 64 << 20)) { environment, db, directory in
            let value = [UInt8](repeating: 0x5A, count: 1000)
            try environment.write { txn in
                for index in 0..<2000 {
                    try txn.put(value + bytes("\(index)"), forKey: bytes(String(format: "key%05d", index)), in: db)
                }
            }
            try environment.write { txn in
                for index in 0..<2000 where index % 20 != 0 {
                    try #expect(txn.delete(key: bytes(String(format: "key%05d", index)), in: db))
                }
            }

            let compactPath = directory + "/compact"
            try environment.copy(to: compactPath, compact: true)
            let plainPath = directory + "/plain"
            try environment.copy(to: plainPath, compact: false)

            let originalSize = try fileSize(directory + "/env/data.mdb")
            let compactSize = try fileSize(compactPath + "/data.mdb")
            #expect(compactSize < originalSize / 4)
            try #expect(fileSize(plainPath + "/data.mdb") > compactSize)
            try #expect(permissions(compactPath) == 0o700)
            try #expect(permissions(compactPath + "/data.mdb") == 0o600)

            for path in [compactPath, plainPath] {
                let copy = try Environment(path: path, databases: ["main"])
                defer { copy.close() }
                try copy.read { txn in
                    let copyDB = copy.database("main")
                    try #expect(txn.count(in: copyDB) == 100)
                    for index in stride(from: 0, to: 2000, by: 20) {
                        let key = bytes(String(format: "key%05d", index))
                        try #expect(txn.value(forKey: key, in: copyDB) == value + bytes("\(index)"))
                    }
                }
            }
        }
    }

    @Test func copyRefusesADestinationThatHoldsADatabase() throws {
        try withEnvironment { environment, db, directory in
            try environment.write { txn in try txn.put(bytes("v"), forKey: bytes("k"), in: db) }
            let destination = directory + "/copy"
            try environment.copy(to: destination, compact: true)
            let size = try fileSize(destination + "/data.mdb")
            #expect(throws: LMDBError(code: EEXIST)) {
                try environment.copy(to: destination, compact: false)
            }
            // The existing copy was left alone.
            try #expect(fileSize(destination + "/data.mdb") == size)
            // Copying onto the live environment is refused too.
            #expect(throws: LMDBError(code: EEXIST)) {
                try environment.copy(to: directory + "/env", compact: true)
            }
        }
    }

    @Test func compactCopyHoldsNoBytesOfDeletedValues() throws {
        func marker(_ index: Int) -> [UInt8] { bytes(String(format: "DELETED-OR-KEPT-%03d-marker", index)) }
        func key(_ index: Int) -> [UInt8] { bytes(String(format: "k%03d", index)) }
        try withEnvironment { environment, db, directory in
            try environment.write { txn in
                for index in (0..<300).shuffled() { try txn.put(marker(index), forKey: key(index), in: db) }
            }
            // Half deleted in one transaction, the rest of the odd ones one by one.
            try environment.write { txn in
                for index in stride(from: 1, to: 150, by: 2) { try txn.delete(key: key(index), in: db) }
            }
            for index in stride(from: 151, to: 300, by: 2) {
                try environment.write { txn -> Void in try txn.delete(key: key(index), in: db) }
            }
            try environment.copy(to: directory + "/compact", compact: true)

            func markers(in file: String, _ indices: StrideTo<Int>) throws -> Int {
                let data = try Data(contentsOf: URL(fileURLWithPath: file))
                return indices.filter { data.range(of: Data(marker($0))) != nil }.count
            }
            let deleted = stride(from: 1, to: 300, by: 2)
            let kept = stride(from: 0, to: 300, by: 2)
            // LMDB did not wipe them in the live file...
            #expect(try markers(in: directory + "/env/data.mdb", deleted) > 0)
            // ...but the compacted copy holds every live value and no deleted one.
            #expect(try markers(in: directory + "/compact/data.mdb", kept) == 150)
            #expect(try markers(in: directory + "/compact/data.mdb", deleted) == 0)
        }
    }

    @Test func databaseOfAnotherEnvironmentTraps() async throws {
        // The child process traps before it could clean up: the parent owns the directory.
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("lmdb-tests-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let exit = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) { [directory = directory as String] in
            let base = directory
            let first = try Environment(path: base + "/first", databases: ["x"])
            let second = try Environment(path: base + "/second", databases: ["x"])
            // Same name, same MDB_dbi number: only the environment check tells them apart.
            _ = try second.read { txn in try txn.count(in: first.database("x")) }
        }
        let message = String(decoding: exit?.standardErrorContent ?? [], as: UTF8.self)
        #expect(message.contains("belongs to another"))
    }

    @Test func nestedWriteOnTheSameThreadTrapsInsteadOfDeadlocking() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("lmdb-tests-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let exit = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) { [directory = directory as String] in
            let base = directory
            let environment = try Environment(path: base, databases: ["x"])
            try environment.write { _ in try environment.write { _ in () } }
        }
        let message = String(decoding: exit?.standardErrorContent ?? [], as: UTF8.self)
        #expect(message.contains("inside a write transaction on the same thread"))
    }
}
