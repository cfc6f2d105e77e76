import LMDB
#if canImport(Glibc)
import Glibc
#endif

/// Compacts the keystore: `mdb_env_copy2(MDB_CP_COMPACT)` into `keystore.new/`, fsync,
/// then a swap by two renames (`keystore` → `keystore.old`, `keystore.new` → `keystore`),
/// and the old copy is overwritten and removed. LMDB does not wipe freed pages; the copy
/// holds only live pages, so the swap also drops the stale wrapped keys of old pages.
///
/// Start-up finishes or undoes an interrupted swap (`recoverInterruptedSwap`).
struct Compaction {
    let stores: Stores
    let configuration: VaultConfiguration

    static func fileSize(_ path: String) -> Int {
        var st = stat()
        return stat(path, &st) == 0 ? Int(st.st_size) : 0
    }

    func run() throws {
        let path = stores.keystore.path
        let fresh = path + ".new", old = path + ".old"
        if Posix.exists(fresh) { try Posix.shredTree(fresh) }
        try Posix.makeDirectory(fresh)
        try stores.keystore.copy(to: fresh, compact: true)
        let fd = open(fresh + "/data.mdb", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw VaultError.io("open \(fresh)/data.mdb: \(Posix.errnoText())") }
        defer { close(fd) }
        try Posix.retrying("fsync \(fresh)/data.mdb") { fsync(fd) }
        try Posix.fsyncDirectory(fresh)
        try configuration.faultInjector?(.compactionCopied)

        stores.keystore.close()
        do {
            try Posix.rename(path, old)
            try configuration.faultInjector?(.compactionBetweenRenames)
            try Posix.rename(fresh, path)
            try Posix.fsyncDirectory(MasterKeyFile.directory(of: path))
        } catch let crash as SimulatedCrash {
            throw crash
        } catch {
            // Put a usable keystore back before reporting the failure.
            try Compaction.recoverInterruptedSwap(keystorePath: path)
            try reopen(path)
            throw error
        }
        try reopen(path)
        try Posix.shredTree(old)
    }

    private func reopen(_ path: String) throws {
        let env = try Environment(path: path, options: Vault.environmentOptions(mapSize: configuration.keystoreMapSize),
                                  databases: Layout.keystoreDatabases)
        stores.replaceKeystore(env)
    }

    /// Brings the keystore directory back to one complete copy after a crash during a swap.
    static func recoverInterruptedSwap(keystorePath path: String) throws {
        let fresh = path + ".new", old = path + ".old"
        if !Posix.exists(path) {
            if Posix.exists(fresh) && Posix.exists(old) {
                // Between the two renames: the copy was complete and synced before the first.
                try Posix.rename(fresh, path)
            } else if Posix.exists(old) {
                try Posix.rename(old, path)
            }
            try Posix.fsyncDirectory(MasterKeyFile.directory(of: path))
        }
        if Posix.exists(fresh) { try Posix.shredTree(fresh) }
        if Posix.exists(old) { try Posix.shredTree(old) }
    }
}

/// Thrown by a test's fault injector: the writer stops as a crashed process would,
/// leaving the files exactly as they are at that point.
struct SimulatedCrash: Error {}
