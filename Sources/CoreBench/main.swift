// shredvault-corebench — throughput of the vault core's write and read paths, in process
// (no HTTP): N records of a fixed payload size written by C concurrent callers through
// the group-commit writer, then read back (each read audited durably).
//
// Usage: shredvault-corebench [--records N] [--concurrency C] [--payload BYTES] [--batch MAX] [--dir PATH]
import Foundation
import Sodium
import VaultCore

struct Options {
    var records = 100_000
    var concurrency = 256
    var payload = 1024
    var batch = 256
    var dir: String? = nil

    init(_ args: [String]) {
        var i = 1
        func value() -> String {
            i += 1
            guard i < args.count else { fatalError("missing value for \(args[i - 1])") }
            return args[i]
        }
        while i < args.count {
            switch args[i] {
            case "--records": records = Int(value())!
            case "--concurrency": concurrency = Int(value())!
            case "--payload": payload = Int(value())!
            case "--batch": batch = Int(value())!
            case "--dir": dir = value()
            case "-h", "--help":
                print("usage: shredvault-corebench [--records N] [--concurrency C] [--payload BYTES] [--batch MAX] [--dir PATH]")
                exit(0)
            default: fatalError("unknown option \(args[i])")
            }
            i += 1
        }
    }
}

func seconds(since start: ContinuousClock.Instant) -> Double {
    let d = ContinuousClock.now - start
    return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
}

let options = Options(CommandLine.arguments)
let base = options.dir ?? (NSTemporaryDirectory() + "shredvault-corebench-\(getpid())")
try FileManager.default.createDirectory(atPath: base + "/keys", withIntermediateDirectories: true,
                                        attributes: [.posixPermissions: 0o700])
defer { if options.dir == nil { try? FileManager.default.removeItem(atPath: base) } }

let config = VaultConfiguration(maxBatch: options.batch)
let vault = try Vault.create(dataDirectory: base + "/data", masterKeyFile: base + "/keys/master.key", configuration: config)
let acme = try TenantID("bench")
_ = try await vault.createTenant(acme, actor: Actor("bench"))
let body = SensitiveBytes(copying: [UInt8](repeating: UInt8(ascii: "x"), count: options.payload))
let subjects = max(1, options.records / 20)

print("# shredvault-corebench records=\(options.records) concurrency=\(options.concurrency) payload=\(options.payload) batch=\(options.batch)")
let writeStart = ContinuousClock.now
let ids: [RecordID] = try await withThrowingTaskGroup(of: [RecordID].self) { group in
    let per = options.records / options.concurrency
    for w in 0..<options.concurrency {
        let count = per + (w < options.records % options.concurrency ? 1 : 0)
        group.addTask {
            var mine: [RecordID] = []
            mine.reserveCapacity(count)
            for _ in 0..<count {
                let subject = try Subject("customer-\(Random.uniform(UInt32(subjects)))")
                let record = NewRecord(subject: subject, category: .personal, channel: .phone, data: body)
                mine.append(try await vault.write(record, tenant: acme, actor: Actor("bench")).id)
            }
            return mine
        }
    }
    var all: [RecordID] = []
    for try await part in group { all += part }
    return all
}
let writeSeconds = seconds(since: writeStart)
let stats = vault.groupCommitStatistics
print(String(format: "write.records_per_s %.0f", Double(ids.count) / writeSeconds))
print(String(format: "write.mean_batch %.1f", Double(stats.operations) / Double(max(1, stats.batches))))

let readStart = ContinuousClock.now
try await withThrowingTaskGroup(of: Void.self) { group in
    let chunk = (ids.count + options.concurrency - 1) / options.concurrency
    for w in 0..<options.concurrency {
        let slice = ids[min(ids.count, w * chunk)..<min(ids.count, (w + 1) * chunk)]
        group.addTask {
            for id in slice { _ = try await vault.read(id, tenant: acme, actor: Actor("bench")) }
        }
    }
    try await group.waitForAll()
}
let readSeconds = seconds(since: readStart)
print(String(format: "read.records_per_s %.0f", Double(ids.count) / readSeconds))
let after = vault.groupCommitStatistics
print(String(format: "read.mean_batch %.1f", Double(after.operations - stats.operations) / Double(max(1, after.batches - stats.batches))))
vault.close()
