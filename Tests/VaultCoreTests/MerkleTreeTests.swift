import Testing
import Sodium
@testable import VaultCore

/// RFC 9162 hashing, checked against the reference vectors every Certificate Transparency
/// implementation shares (a log whose heads no other implementation recomputes proves nothing to
/// anyone else), then every proof of every tree up to 40 leaves, and their tampered forms.
@Suite struct MerkleTreeTests {
    static let entries: [[UInt8]] = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                     "606162636465666768696a6b6c6d6e6f"].map(unhex)
    static let roots = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]

    static func unhex(_ s: String) -> [UInt8] {
        var out: [UInt8] = []
        var it = s.makeIterator()
        while let h = it.next(), let l = it.next() { out.append(UInt8(String([h, l]), radix: 16)!) }
        return out
    }

    static func hex(_ b: [UInt8]) -> String { b.map { String(format: "%02x", $0) }.joined() }

    static var reference: MerkleTree {
        var t = MerkleTree()
        for e in entries { t.append(entry: e) }
        return t
    }

    @Test func rootsMatchTheReferenceVectors() throws {
        let t = Self.reference
        for size in 0...8 { #expect(Self.hex(try t.root(size: UInt64(size))) == Self.roots[size], "size \(size)") }
        #expect(MerkleTree.split(2) == 1 && MerkleTree.split(5) == 4 && MerkleTree.split(8) == 4 && MerkleTree.split(9) == 8)
    }

    @Test func proofsMatchTheReferenceVectors() throws {
        let t = Self.reference
        let inclusion: [(UInt64, UInt64, [String])] = [
            (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
            (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
        ]
        for (index, size, proof) in inclusion {
            let got = try t.inclusionProof(index: index, size: size)
            #expect(got.map(Self.hex) == proof)
            #expect(MerkleTree.verifyInclusion(leaf: t.leaves[Int(index)], index: index, size: size, proof: got,
                                               root: try t.root(size: size)))
        }
        let consistency: [(UInt64, UInt64, [String])] = [
            (2, 8, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
            (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
            (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
        ]
        for (old, new, proof) in consistency {
            let got = try t.consistencyProof(from: old, to: new)
            #expect(got.map(Self.hex) == proof, "\(old) -> \(new)")
            #expect(MerkleTree.verifyConsistency(old: old, new: new, oldRoot: try t.root(size: old),
                                                 newRoot: try t.root(size: new), proof: got))
        }
    }

    /// Every inclusion and consistency proof of every tree up to 40 leaves verifies; a wrong
    /// index, leaf, old root, a shortened proof or a flipped byte in it never does.
    @Test func everyProofVerifiesAndNoTamperedOneDoes() throws {
        var t = MerkleTree()
        for i in 0..<40 { t.append(entry: [UInt8(i), UInt8(truncatingIfNeeded: i &* 7)]) }
        let roots = try (0...40).map { try t.root(size: UInt64($0)) }
        for size in UInt64(1)...40 {
            let root = roots[Int(size)]
            for index in 0..<size {
                let proof = try t.inclusionProof(index: index, size: size)
                let leaf = t.leaves[Int(index)]
                #expect(MerkleTree.verifyInclusion(leaf: leaf, index: index, size: size, proof: proof, root: root))
                if size > 1 {
                    #expect(!MerkleTree.verifyInclusion(leaf: leaf, index: (index + 1) % size, size: size, proof: proof, root: root))
                    #expect(!MerkleTree.verifyInclusion(leaf: t.leaves[Int((index + 1) % size)], index: index, size: size,
                                                        proof: proof, root: root))
                }
                if !proof.isEmpty {
                    var bad = proof
                    bad[0][0] ^= 1
                    #expect(!MerkleTree.verifyInclusion(leaf: leaf, index: index, size: size, proof: bad, root: root))
                    #expect(!MerkleTree.verifyInclusion(leaf: leaf, index: index, size: size, proof: Array(proof.dropLast()), root: root))
                }
            }
            for old in UInt64(1)...size {
                let proof = try t.consistencyProof(from: old, to: size)
                #expect(MerkleTree.verifyConsistency(old: old, new: size, oldRoot: roots[Int(old)], newRoot: root, proof: proof),
                        "\(old) -> \(size)")
                if old < size {
                    var bad = proof
                    bad[bad.count - 1][31] ^= 0x80
                    #expect(!MerkleTree.verifyConsistency(old: old, new: size, oldRoot: roots[Int(old)], newRoot: root, proof: bad))
                    // A rewritten history: an old root the log never had.
                    #expect(!MerkleTree.verifyConsistency(old: old, new: size, oldRoot: roots[Int(old) - 1], newRoot: root, proof: proof))
                }
            }
        }
        #expect(throws: MerkleError.sizeBeyondLog(41, 40)) { try t.root(size: 41) }
        #expect(throws: MerkleError.indexBeyondSize(5, 5)) { try t.inclusionProof(index: 5, size: 5) }
        #expect(throws: MerkleError.oldBeyondNew(6, 5)) { try t.consistencyProof(from: 6, to: 5) }
    }
}
