import Sodium

/// RFC 9162's Merkle tree hashing (§2.1), over SHA-256: the structure of the audit's
/// transparency log (docs/architecture.md, Audit). A leaf is `H(0x00 || entry)`, a node
/// `H(0x01 || left || right)`, the empty tree `H("")`; a tree of `n` leaves splits at the largest
/// power of two below `n`. Its inclusion and consistency proofs let a client company check,
/// offline and with any SHA-256, that an entry is in a signed tree head and that a later head
/// extends an earlier one (nothing removed, nothing rewritten).
///
/// `MerkleTree` holds the leaf hashes of one log in memory and computes heads and proofs from
/// them; the verification functions take nothing but hashes and sizes, as a verifier does.
public struct MerkleTree: Sendable {
    public typealias Hash = [UInt8]

    /// Leaf hashes, in log order.
    public private(set) var leaves: [Hash] = []

    public init() {}

    public init(leafHashes: [Hash]) {
        precondition(leafHashes.allSatisfy { $0.count == SHA256.digestCount }, "leaf hashes are SHA-256 digests")
        leaves = leafHashes
    }

    public var size: UInt64 { UInt64(leaves.count) }

    /// Appends `entry` (its leaf hash); returns its index.
    @discardableResult
    public mutating func append(entry: [UInt8]) -> UInt64 {
        leaves.append(Self.leafHash(entry))
        return size - 1
    }

    // MARK: Hashing

    public static func leafHash(_ entry: [UInt8]) -> Hash {
        [UInt8(0)].withUnsafeBytes { prefix in entry.withUnsafeBytes { SHA256.hash(prefix, $0) } }
    }

    public static func nodeHash(_ left: Hash, _ right: Hash) -> Hash {
        [UInt8(1)].withUnsafeBytes { prefix in
            left.withUnsafeBytes { l in right.withUnsafeBytes { r in SHA256.hash(prefix, l, r) } }
        }
    }

    public static let emptyRoot: Hash = SHA256.hash([])

    /// The largest power of two strictly below `n` (`n` ≥ 2): RFC 9162's split point.
    static func split(_ n: UInt64) -> UInt64 {
        precondition(n >= 2)
        var k: UInt64 = 1
        while k << 1 < n { k <<= 1 }
        return k
    }

    // MARK: Heads and proofs

    /// MTH of the first `size` leaves (the tree head's root hash at that size).
    public func root(size: UInt64? = nil) throws -> Hash {
        let n = size ?? self.size
        guard n <= self.size else { throw MerkleError.sizeBeyondLog(n, self.size) }
        return Self.root(size: n, subtree: complete)
    }

    /// The audit path of leaf `index` in the tree of the first `size` leaves (RFC 9162 PATH).
    public func inclusionProof(index: UInt64, size: UInt64) throws -> [Hash] {
        guard size <= self.size else { throw MerkleError.sizeBeyondLog(size, self.size) }
        return try Self.inclusionProof(index: index, size: size, subtree: complete)
    }

    /// The consistency proof from the tree of `old` leaves to the tree of `new` (RFC 9162 PROOF):
    /// empty when `old` is 0 or equals `new`.
    public func consistencyProof(from old: UInt64, to new: UInt64) throws -> [Hash] {
        guard new <= size else { throw MerkleError.sizeBeyondLog(new, size) }
        return try Self.consistencyProof(from: old, to: new, subtree: complete)
    }

    /// The hash of the complete subtree of `count` leaves from `lo`, computed from the leaves.
    private func complete(_ lo: UInt64, _ count: UInt64) -> Hash {
        count == 1 ? leaves[Int(lo)] : Self.nodeHash(complete(lo, count / 2), complete(lo + count / 2, count / 2))
    }

    // MARK: The algorithms, over any store of complete subtrees

    /// Where RFC 9162's recursion needs a hash, it is MTH of a range; every range it visits
    /// starts at a multiple of the largest power of two not above its length, so the range is
    /// a complete subtree — `subtree(lo, count)`, `count` a power of two and `lo` a multiple
    /// of it — or splits into one and a shorter range. A store that keeps the complete
    /// subtrees (`AuditTree`) answers any head or proof from O(log² n) of them.
    public typealias Subtrees = (_ lo: UInt64, _ count: UInt64) throws -> Hash

    /// MTH of the first `size` leaves.
    public static func root(size: UInt64, subtree: Subtrees) rethrows -> Hash {
        size == 0 ? emptyRoot : try mth(0, size, subtree)
    }

    /// PATH(index, D[0 ..< size]).
    public static func inclusionProof(index: UInt64, size: UInt64, subtree: Subtrees) throws -> [Hash] {
        guard index < size else { throw MerkleError.indexBeyondSize(index, size) }
        return try path(index, 0, size, subtree)
    }

    /// PROOF(old, D[0 ..< new]).
    public static func consistencyProof(from old: UInt64, to new: UInt64, subtree: Subtrees) throws -> [Hash] {
        guard old <= new else { throw MerkleError.oldBeyondNew(old, new) }
        guard old > 0, old < new else { return [] }
        return try subproof(old, 0, new, true, subtree)
    }

    /// MTH(D[lo ..< hi]).
    private static func mth(_ lo: UInt64, _ hi: UInt64, _ subtree: Subtrees) rethrows -> Hash {
        let n = hi - lo
        if n & (n - 1) == 0 { return try subtree(lo, n) }
        let k = split(n)
        return nodeHash(try subtree(lo, k), try mth(lo + k, hi, subtree))
    }

    /// PATH(m, D[lo ..< hi]).
    private static func path(_ m: UInt64, _ lo: UInt64, _ hi: UInt64, _ subtree: Subtrees) rethrows -> [Hash] {
        let n = hi - lo
        if n == 1 { return [] }
        let k = split(n)
        return m < k
            ? try path(m, lo, lo + k, subtree) + [try mth(lo + k, hi, subtree)]
            : try path(m - k, lo + k, hi, subtree) + [try subtree(lo, k)]
    }

    /// SUBPROOF(m, D[lo ..< hi], b).
    private static func subproof(_ m: UInt64, _ lo: UInt64, _ hi: UInt64, _ complete: Bool,
                                 _ subtree: Subtrees) rethrows -> [Hash] {
        let n = hi - lo
        if m == n { return complete ? [] : [try mth(lo, hi, subtree)] }
        let k = split(n)
        return m <= k
            ? try subproof(m, lo, lo + k, complete, subtree) + [try mth(lo + k, hi, subtree)]
            : try subproof(m - k, lo + k, hi, false, subtree) + [try subtree(lo, k)]
    }

    // MARK: Verification (what an offline verifier does, from hashes alone)

    /// RFC 9162 §2.1.3.2: whether `proof` shows the leaf hash `leaf` at `index` in the tree of
    /// `size` leaves whose root is `root`.
    public static func verifyInclusion(leaf: Hash, index: UInt64, size: UInt64, proof: [Hash], root: Hash) -> Bool {
        guard index < size else { return false }
        var fn = index, sn = size - 1
        var r = leaf
        for p in proof {
            guard p.count == SHA256.digestCount, sn != 0 else { return false }
            if fn & 1 == 1 || fn == sn {
                r = nodeHash(p, r)
                if fn & 1 == 0 {
                    while fn & 1 == 0 && fn != 0 {
                        fn >>= 1
                        sn >>= 1
                    }
                }
            } else {
                r = nodeHash(r, p)
            }
            fn >>= 1
            sn >>= 1
        }
        return sn == 0 && constantTimeEquals(r, root)
    }

    /// RFC 9162 §2.1.4.2: whether `proof` shows that the tree of `new` leaves with root
    /// `newRoot` extends the tree of `old` leaves with root `oldRoot`.
    public static func verifyConsistency(old: UInt64, new: UInt64, oldRoot: Hash, newRoot: Hash, proof: [Hash]) -> Bool {
        guard old <= new else { return false }
        if old == new { return proof.isEmpty && constantTimeEquals(oldRoot, newRoot) }
        if old == 0 { return proof.isEmpty }
        guard !proof.isEmpty, proof.allSatisfy({ $0.count == SHA256.digestCount }) else { return false }
        var path = proof
        // When old is a power of two, the old root itself starts the path.
        if old & (old - 1) == 0 { path.insert(oldRoot, at: 0) }
        var fn = old - 1, sn = new - 1
        while fn & 1 == 1 {
            fn >>= 1
            sn >>= 1
        }
        var fr = path[0], sr = path[0]
        for c in path.dropFirst() {
            guard sn != 0 else { return false }
            if fn & 1 == 1 || fn == sn {
                fr = nodeHash(c, fr)
                sr = nodeHash(c, sr)
                if fn & 1 == 0 {
                    while fn & 1 == 0 && fn != 0 {
                        fn >>= 1
                        sn >>= 1
                    }
                }
            } else {
                sr = nodeHash(sr, c)
            }
            fn >>= 1
            sn >>= 1
        }
        return sn == 0 && constantTimeEquals(fr, oldRoot) && constantTimeEquals(sr, newRoot)
    }
}

public enum MerkleError: Error, Equatable, CustomStringConvertible {
    case sizeBeyondLog(UInt64, UInt64)
    case indexBeyondSize(UInt64, UInt64)
    case oldBeyondNew(UInt64, UInt64)

    public var description: String {
        switch self {
        case .sizeBeyondLog(let n, let size): "tree size \(n) is beyond the log's \(size) entries"
        case .indexBeyondSize(let i, let n): "entry \(i) is not in a tree of \(n) entries"
        case .oldBeyondNew(let old, let new): "a consistency proof goes from a smaller tree to a larger one (\(old) > \(new))"
        }
    }
}
