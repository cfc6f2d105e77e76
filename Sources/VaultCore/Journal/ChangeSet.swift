import LMDB
import Sodium

/// One entry of the journal as stored by a backend: the change set of one write (a
/// group-commit batch, or one step of maintenance), sealed.
///
/// Layout: `"SVJ1"`, epoch (u64), sequence (u64), then the XChaCha20-Poly1305 box (nonce,
/// ciphertext, tag) of the change set, sealed under the journal key of the epoch with
/// AD = `"shredvault journal"` | vault id | epoch | sequence. The epoch is the master key
/// generation whose journal key sealed it. Whoever holds the entry sees its size, its
/// number and its epoch: no tenant, record id, subject tag or count.
public struct JournalEntry: Sendable, Equatable {
    public let epoch: UInt64
    public let sequence: UInt64
    /// The whole entry as stored.
    public let bytes: [UInt8]

    static let magic: [UInt8] = Array("SVJ1".utf8)
    static let headerCount = 4 + 8 + 8

    /// Parses the clear header of a stored entry; the box is opened by `ChangeSet.open`.
    public init(bytes: [UInt8]) throws {
        guard bytes.count >= Self.headerCount + AEAD.overhead, Array(bytes[0..<4]) == Self.magic else {
            throw VaultError.corrupt("journal entry: not a ShredVault change set")
        }
        self.bytes = bytes
        epoch = bytes.withUnsafeBytes { readBE($0, at: 4) }
        sequence = bytes.withUnsafeBytes { readBE($0, at: 12) }
    }

    static func associatedData(vaultID: [UInt8], epoch: UInt64, sequence: UInt64) -> [UInt8] {
        Array("shredvault journal".utf8) + vaultID + .be(epoch) + .be(sequence)
    }
}

/// What one write changed in both environments (their change logs), and — in the change set
/// that switches the vault to a new master key generation — that generation, with its key
/// sealed to each standby's single-use exchange key (`KeyExchange`), so a standby can follow
/// the switch and nobody else, an old key file's holder included, can.
///
/// Plaintext layout: format (1), sequence (u64), flags, then the next generation if flagged,
/// then the keystore's change log and the record store's, each preceded by its length (u32).
/// Flags: bit 1 — the next generation (u64), a count (u16) and that many recipients (public
/// key, 32 bytes; `crypto_box_seal` of the key, 80 bytes); bit 0 — written before the exchange:
/// the next generation (u64) and its key itself (32 bytes), still read so a journal of that
/// time replays (it is gone once its epoch ends).
struct ChangeSet {
    static let format: UInt8 = 1

    /// Seals the two logs as change set `sequence` of `epoch`.
    static func seal(sequence: UInt64, epoch: UInt64, vaultID: [UInt8], keystore: ChangeLog, records: ChangeLog,
                     next: NextGeneration?, journalKey: borrowing SecretBytes) throws -> JournalEntry {
        precondition(next?.legacyKey == nil, "the next generation's key travels only sealed to exchange keys")
        guard (next?.sealed.count ?? 0) <= Int(UInt16.max) else { throw VaultError.journal("too many standbys") }
        let carried = next.map { 8 + 2 + $0.sealed.count * (ExchangeKeyPair.publicKeyCount + KeyExchange.boxCount) } ?? 0
        let count = 1 + 8 + 1 + carried + 4 + keystore.bytes.count + 4 + records.bytes.count
        guard keystore.bytes.count <= Int(UInt32.max), records.bytes.count <= Int(UInt32.max) else {
            throw VaultError.journal("a change set over 4 GiB")
        }
        // Wiped on release (change logs hold wrapped keys and pseudonymous metadata).
        let plaintext = SensitiveBytes(count: count) { out in
            var i = 0
            func put(_ bytes: UnsafeRawBufferPointer) {
                UnsafeMutableRawBufferPointer(rebasing: out[i..<i + bytes.count]).copyMemory(from: bytes)
                i += bytes.count
            }
            func be<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.bigEndian) { put($0) } }
            out[0] = format
            i = 1
            be(sequence)
            out[i] = next == nil ? 0 : 2
            i += 1
            if let next {
                be(next.generation)
                be(UInt16(next.sealed.count))
                for r in next.sealed {
                    r.publicKey.withUnsafeBytes { put($0) }
                    r.box.withUnsafeBytes { put($0) }
                }
            }
            be(UInt32(keystore.bytes.count))
            keystore.bytes.withUnsafeBytes { put($0) }
            be(UInt32(records.bytes.count))
            records.bytes.withUnsafeBytes { put($0) }
        }
        let header = JournalEntry.magic + .be(epoch) + .be(sequence)
        var bytes = [UInt8](repeating: 0, count: header.count + AEAD.sealedCount(plaintextCount: count))
        let ad = JournalEntry.associatedData(vaultID: vaultID, epoch: epoch, sequence: sequence)
        try bytes.withUnsafeMutableBytes { out in
            out.copyBytes(from: header)
            try plaintext.withUnsafeBytes { p in
                try ad.withUnsafeBytes { a in
                    try AEAD.seal(p, key: journalKey, associatedData: a,
                                  into: UnsafeMutableRawBufferPointer(rebasing: out[header.count...]))
                }
            }
        }
        return JournalEntry(validated: bytes, epoch: epoch, sequence: sequence)
    }

    /// The master key generation a change set switches to.
    struct NextGeneration {
        let generation: UInt64
        /// Its key, sealed to each standby's exchange key for the generation before.
        let sealed: [KeyExchange.Sealed]
        /// Its key itself, in a change set written before the exchange (flag bit 0).
        let legacyKey: Key?
    }

    /// An opened change set: its logs, and the generation it switches to, if any.
    struct Opened {
        let sequence: UInt64
        let plaintext: SensitiveBytes
        let keystoreRange: Range<Int>
        let recordsRange: Range<Int>
        let next: NextGeneration?

        func withKeystoreChanges<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
            try plaintext.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[keystoreRange])) }
        }

        func withRecordChanges<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
            try plaintext.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[recordsRange])) }
        }
    }

    /// Opens an entry with the journal key of its epoch. Any failure names the entry and says
    /// nothing of its content.
    static func open(_ entry: JournalEntry, vaultID: [UInt8], journalKey: borrowing SecretBytes) throws -> Opened {
        let what = "journal change set \(entry.sequence) (epoch \(entry.epoch))"
        let ad = JournalEntry.associatedData(vaultID: vaultID, epoch: entry.epoch, sequence: entry.sequence)
        let box = entry.bytes.count - JournalEntry.headerCount
        let plaintext: SensitiveBytes
        do {
            plaintext = try SensitiveBytes(count: box - AEAD.overhead) { out in
                try entry.bytes.withUnsafeBytes { b in
                    try ad.withUnsafeBytes { a in
                        try AEAD.open(UnsafeRawBufferPointer(rebasing: b[JournalEntry.headerCount...]), key: journalKey,
                                      associatedData: a, into: out)
                    }
                }
            }
        } catch SodiumError.authenticationFailure {
            throw VaultError.integrity("\(what) failed authentication (damaged, of another vault, or another key)")
        }
        return try plaintext.withUnsafeBytes { p in
            var r = ByteReader(p, what: what)
            try r.format(format)
            guard try r.u64() == entry.sequence else { throw VaultError.integrity("\(what): sealed under another number") }
            let flags = try r.u8()
            guard flags & ~3 == 0, flags != 3 else { throw VaultError.corrupt("\(what): unknown flags \(flags)") }
            var next: NextGeneration?
            if flags & 1 != 0 {
                let generation = try r.u64()
                let key = Key(try SecretBytes(copying: try r.slice(AEAD.keyCount)))
                next = NextGeneration(generation: generation, sealed: [], legacyKey: key)
            } else if flags & 2 != 0 {
                let generation = try r.u64()
                var sealed: [KeyExchange.Sealed] = []
                for _ in 0..<Int(try r.u16()) {
                    let pk = Array(try r.slice(ExchangeKeyPair.publicKeyCount))
                    sealed.append(.init(publicKey: pk, box: Array(try r.slice(KeyExchange.boxCount))))
                }
                next = NextGeneration(generation: generation, sealed: sealed, legacyKey: nil)
            }
            let ksCount = Int(try r.u32())
            let ksStart = r.offset
            _ = try r.slice(ksCount)
            let recCount = Int(try r.u32())
            let recStart = r.offset
            _ = try r.slice(recCount)
            try r.end()
            return Opened(sequence: entry.sequence, plaintext: plaintext, keystoreRange: ksStart..<ksStart + ksCount,
                          recordsRange: recStart..<recStart + recCount, next: next)
        }
    }
}

extension JournalEntry {
    /// An entry this process sealed (the header is known to be right).
    init(validated bytes: [UInt8], epoch: UInt64, sequence: UInt64) {
        self.bytes = bytes
        self.epoch = epoch
        self.sequence = sequence
    }
}

/// The keys of the journal of one master key generation, derived from the master key
/// (BLAKE2b KDF): one for change sets, one for snapshots. Destroying the master key file of
/// a generation makes that generation's journal entries and snapshot noise.
enum JournalKeys {
    static func changeSetKey(master: Key) throws -> Key {
        Key(try KeyedHash.deriveKey(from: master.bytes, subkeyID: 1, context: "svjournl"))
    }

    static func snapshotKey(master: Key) throws -> Key {
        Key(try KeyedHash.deriveKey(from: master.bytes, subkeyID: 2, context: "svsnapsh"))
    }
}
