import CLMDB
import Foundation
import LMDB
import Testing

@Suite struct LMDBErrorTests {
    @Test func namedConstantsCarryLMDBCodes() {
        #expect(LMDBError.notFound.code == MDB_NOTFOUND)
        #expect(LMDBError.keyExists.code == MDB_KEYEXIST)
        #expect(LMDBError.mapFull.code == MDB_MAP_FULL)
        #expect(LMDBError.readersFull.code == MDB_READERS_FULL)
        #expect(LMDBError.txnFull.code == MDB_TXN_FULL)
        #expect(LMDBError.cursorFull.code == MDB_CURSOR_FULL)
        #expect(LMDBError.pageFull.code == MDB_PAGE_FULL)
        #expect(LMDBError.mapResized.code == MDB_MAP_RESIZED)
        #expect(LMDBError.corrupted.code == MDB_CORRUPTED)
        #expect(LMDBError.panic.code == MDB_PANIC)
        #expect(LMDBError.versionMismatch.code == MDB_VERSION_MISMATCH)
        #expect(LMDBError.invalid.code == MDB_INVALID)
        #expect(LMDBError.dbsFull.code == MDB_DBS_FULL)
        #expect(LMDBError.badTxn.code == MDB_BAD_TXN)
        #expect(LMDBError.badValueSize.code == MDB_BAD_VALSIZE)
        #expect(LMDBError.badDBI.code == MDB_BAD_DBI)
        #expect(LMDBError(code: MDB_MAP_FULL) == .mapFull)
    }

    @Test func ourCodesAreOutsideLMDBAndErrnoRanges() {
        for error in [LMDBError.alreadyOpen, .closed] {
            #expect(error.code < 0)
            #expect(error.code > MDB_KEYEXIST)  // MDB_KEYEXIST (-30799) is the lowest LMDB code
        }
        #expect(LMDBError.alreadyOpen != .closed)
    }

    @Test func isMapFullOnlyForMapFull() {
        #expect(LMDBError.mapFull.isMapFull)
        #expect(!LMDBError.notFound.isMapFull)
        #expect(!LMDBError.txnFull.isMapFull)
        #expect(!LMDBError(code: ENOSPC).isMapFull)
    }

    @Test func descriptionsContainTheLMDBMessageAndCode() {
        #expect(LMDBError.mapFull.description.contains("MDB_MAP_FULL: Environment mapsize limit reached"))
        #expect(LMDBError.notFound.description.contains("MDB_NOTFOUND: No matching key/data pair found"))
        #expect(LMDBError.keyExists.description.contains("MDB_KEYEXIST"))
        #expect(LMDBError.mapFull.description.contains("-30792"))
        // errno values go through mdb_strerror too (strerror text).
        #expect(LMDBError(code: ENOENT).description.contains("No such file or directory"))
        #expect(LMDBError.alreadyOpen.description.contains("already open"))
        #expect(LMDBError.closed.description.contains("closed"))
    }

    @Test func errorsAreCaughtByNamedConstant() throws {
        try withEnvironment { environment, db, _ in
            try environment.write { txn in try txn.put(bytes("v"), forKey: bytes("k"), in: db) }
            var caught: LMDBError?
            do {
                try environment.write { txn in
                    try txn.put(bytes("w"), forKey: bytes("k"), in: db, flags: .noOverwrite)
                }
            } catch let error as LMDBError where error == .keyExists {
                caught = error
            }
            #expect(caught == .keyExists)
        }
    }
}
