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
        case .dataDirectory(let m): "data directory: \(m)"
        case .journal(let m): "journal: \(m)"
        case .io(let m): "I/O error: \(m)"
        }
    }
}
