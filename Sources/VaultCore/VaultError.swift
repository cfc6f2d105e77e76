import LMDB
#if canImport(Glibc)
import Glibc
#endif

/// What callers of the vault switch on. Messages may name record ids, tenants and key
/// versions, never plaintext, key bytes, subjects or tokens.
public enum VaultError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The record is unknown, belongs to another tenant, has expired or was erased.
    /// Deliberately one case: the caller cannot tell which (docs/architecture.md, Lifecycles).
    case notFound
    /// No such tenant, or it was offboarded.
    case tenantNotFound(String)
    case tenantExists(String)
    /// Malformed or out-of-range input; the message names the field, never its content.
    case invalidArgument(String)
    /// Well-formed but refused by policy (retention above the allowed maximum without a contract).
    case refused(String)
    /// A legal hold blocks the operation; nothing was changed (the refusal is audited).
    case legalHold(String)
    /// The keystore or the record store is full (LMDB MDB_MAP_FULL); nothing was written.
    case storageFull
    /// The vault is closing and takes no new operations.
    case shuttingDown
    /// Stored bytes failed authentication (tampering, a moved blob, a wrong key).
    case integrity(String)
    /// Stored bytes are not in a format this version reads.
    case corrupt(String)
    /// The master key file is missing, unsafe (permissions) or does not match the keystore.
    case masterKey(String)
    /// The audit signing key file (`keys/audit.key`) is missing, unsafe or not this vault's.
    case auditKey(String)
    /// The data directory is unsafe, unusable or held by another process.
    case dataDirectory(String)
    /// The journal cannot take the change set (unreachable, full, fenced by a newer primary):
    /// the batch failed and nothing of it was acknowledged.
    case journal(String)
    /// A system call failed.
    case io(String)

    public var description: String {
        switch self {
        case .notFound: "not found"
        case .tenantNotFound(let t): "tenant not found: \(t)"
        case .tenantExists(let t): "tenant already exists: \(t)"
        case .invalidArgument(let m): "invalid argument: \(m)"
        case .refused(let m): "refused: \(m)"
        case .legalHold(let m): "blocked by a legal hold: \(m)"
        case .storageFull: "storage full: nothing was written"
        case .shuttingDown: "the vault is shutting down"
        case .integrity(let m): "integrity failure: \(m)"
        case .corrupt(let m): "corrupt data: \(m)"
        case .masterKey(let m): "master key: \(m)"
        case .auditKey(let m): "audit key: \(m)"
        case .dataDirectory(let m): "data directory: \(m)"
        case .journal(let m): "journal: \(m)"
        case .io(let m): "I/O error: \(m)"
        }
    }
}

extension VaultError {
    /// Maps any error from below into what callers switch on; LMDB's map-full and a full
    /// disk become `.storageFull` so the daemon can answer 503 with nothing half-written.
    static func mapping(_ error: any Error) -> VaultError {
        switch error {
        case let e as VaultError: return e
        case let e as AuditedRefusal: return e.error
        case let e as NothingWritten: return e.error
        case let e as LMDBError where e.isMapFull: return .storageFull
        // The file system is full (or the quota or file size limit is reached): LMDB's
        // page write failed and the transaction was aborted, nothing was written.
        case let e as LMDBError where e.code == ENOSPC || e.code == EDQUOT || e.code == EFBIG: return .storageFull
        case let e as LMDBError: return .io("LMDB: \(e)")
        default: return .io("\(error)")
        }
    }
}

extension VaultError {
    /// `mapping`, for a failed commit: LMDB reports a short page write as EIO, and a write
    /// that runs out of disk is often short, so an EIO on a file system with (almost) no
    /// space left is a full disk (503, nothing written), not a broken one.
    static func mapping(_ error: any Error, writingTo paths: [String]) -> VaultError {
        if let e = error as? LMDBError, e.code == EIO, paths.contains(where: { freeBytes(at: $0).map { $0 < 16 << 20 } ?? false }) {
            return .storageFull
        }
        return mapping(error)
    }

    /// Bytes the daemon may still write on the file system holding `path` (root may use the
    /// reserved blocks too).
    static func freeBytes(at path: String) -> Int? {
        var fs = statvfs()
        guard statvfs(path, &fs) == 0 else { return nil }
        let blocks = geteuid() == 0 ? fs.f_bfree : fs.f_bavail
        return Int(clamping: UInt64(blocks) &* UInt64(fs.f_frsize))
    }
}
