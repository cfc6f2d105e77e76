import VaultCore
import ArgumentParser
import Foundation
import PostgresSupport
import VaultClient
#if canImport(Glibc)
import Glibc
#endif

/// `shredvault-crash-test`: issue 5's promise, "nothing acknowledged is ever lost, nothing erased
/// ever comes back", against the real daemon killed with SIGKILL at random moments.
@main
struct CrashTestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shredvault-crash-test",
        abstract: "Kill the real shredvault daemon with SIGKILL under load, restart it, and check every acknowledged operation.",
        discussion: """
            Each round drives concurrent writes (single and batch), corrections, deletions, subject \
            erasures, sweeps and token issues/revocations for a random 0.1-0.8 s, logging every \
            acknowledged operation in memory; some rounds start a rotation, compaction or sweep and kill \
            inside it, some kill the restart too. After SIGKILL the daemon is restarted on the same data \
            directory and the round checks: every acknowledged write reads back with its acknowledged \
            content (or its acknowledged correction's); every acknowledged deletion and erasure stays 404 \
            (and unlisted); every operation in flight at the kill happened entirely or not at all (an \
            erasure: all of the subject's records or none); subject listings hold exactly the live records; \
            after one sweep a second finds no orphan; the record count, subject index, bucket index and \
            ciphertext counts (mdb_stat) match the log; acknowledged tokens work and revoked ones stay \
            revoked; the audit chain verifies and the operator's transparency log only grew (the head kept \
            at the last round's checks is extended by a consistency proof); start-up left no half-done \
            rotation or compaction; a \
            rotation then succeeds. Each vault accumulates state across rounds; a new one is made every \
            --fresh-every rounds (alternately with 1-day and 1-second buckets, the latter with records \
            that expire within the round), the old one ending with a check of every record.

            --seed replays the run's choices (load time, kill moment, operations, payloads); thread \
            timing still varies. A failed round keeps its vault directory and prints the daemon's log.
            The closing line is `crash-test: N passed, N failed` (rounds); exit status 1 if any failed.
            """)

    @Option(help: "Rounds (kill and restart cycles).")
    var rounds = 50

    @Option(help: "Seed of every random choice (printed; pass it again to replay a run's choices).")
    var seed: UInt64?

    @Option(help: ArgumentHelp("The shredvault binary (default: $SHREDVAULT_BIN, else .build/debug/shredvault).", valueName: "path"))
    var binary: String?

    @Option(help: "Concurrent clients during the load phase.")
    var clients = 8

    @Option(name: .customLong("fresh-every"), help: "Rounds on one vault directory before a new one is made.")
    var freshEvery = 10

    @Option(help: "Records written into each new vault before its first round (so rotation and compaction take a while).")
    var prefill = 3000

    @Flag(help: "Keep the temporary directory even when every round passed.")
    var keep = false

    @Option(name: .customLong("inject-rollback"),
            help: ArgumentHelp("Self-test: in this round, put back a copy of the data files taken before the load "
                               + "(losing what was acknowledged since); the round must fail.", visibility: .hidden))
    var injectRollback: Int?

    @Flag(help: "Serve every vault with a journal directory (serve --journal) beside its data.")
    var journal = false

    @Option(name: .customLong("machine-loss"),
            help: ArgumentHelp("With --journal: the share of rounds (0 to 1) in which, after the kill, the data directory "
                               + "and keys/ are lost and the vault is rebuilt with shredvault restore from the journal and "
                               + "the kept key before the checks.", valueName: "share"))
    var machineLoss = 0.0

    @Flag(help: ArgumentHelp("With --journal: the journal is PostgreSQL (a cluster this run starts with initdb), followed "
                             + "by a standby (serve --standby) on another directory; a lost machine is replaced by "
                             + "promoting the standby instead of a restore."))
    var standby = false

    @Flag(help: "Show how long each phase of the checks took.")
    var timings = false

    @Option(name: .customLong("check-threads"), help: "Concurrent connections of the checks after each restart.")
    var checkThreads = 32

    func validate() throws {
        guard rounds >= 1 else { throw ValidationError("--rounds must be at least 1") }
        guard (1...64).contains(clients) else { throw ValidationError("--clients must be 1 to 64") }
        guard freshEvery >= 1 else { throw ValidationError("--fresh-every must be at least 1") }
        guard prefill >= 0 else { throw ValidationError("--prefill must not be negative") }
        guard (0...1).contains(machineLoss) else { throw ValidationError("--machine-loss is a share from 0 to 1") }
        guard machineLoss == 0 || journal else { throw ValidationError("--machine-loss needs --journal") }
        guard !standby || journal else { throw ValidationError("--standby needs --journal") }
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        let seed = self.seed ?? UInt64.random(in: 0...UInt64(UInt32.max))
        let env = ProcessInfo.processInfo.environment
        var path = binary ?? env["SHREDVAULT_BIN"] ?? ".build/debug/shredvault"
        if !path.hasPrefix("/") { path = FileManager.default.currentDirectoryPath + "/" + path }
        guard access(path, X_OK) == 0 else {
            say("crash-test: \(path) is not an executable (build it, or set SHREDVAULT_BIN)")
            say("crash-test: 0 passed, \(rounds) failed")
            throw ExitCode.failure
        }
        var template = Array("/tmp/svc.XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw DaemonError("mkdtemp: \(String(cString: strerror(errno)))") }
        let root = String(cString: made)

        say("crash-test: seed \(seed) (replay with --seed \(seed)), \(rounds) rounds, \(clients) clients, binary \(path), in \(root)"
            + (journal ? ", with a " + (standby ? "PostgreSQL journal and a standby" : "journal")
                + (machineLoss > 0 ? ", machine lost in \(Int(machineLoss * 100))% of rounds" : "") : ""))
        var cluster: PostgresCluster?
        if standby {
            do { cluster = try PostgresCluster() } catch {
                say("crash-test: cannot start PostgreSQL: \(error)")
                say("crash-test: 0 passed, \(rounds) failed")
                throw ExitCode.failure
            }
        }
        let runner = Runner(binary: path, root: root, seed: seed, rounds: rounds, clients: clients, freshEvery: freshEvery,
                            prefill: prefill, checkThreads: checkThreads, timings: timings, injectRollback: injectRollback,
                            journal: journal, machineLoss: machineLoss, postgres: cluster)
        let started = monotonicSeconds()
        let failures = runner.run()
        let elapsed = monotonicSeconds() - started

        if !failures.isEmpty {
            say("crash-test: violations:")
            for line in Self.digest(failures) { say("  " + line) }
            say("crash-test: data directories of failed rounds kept in \(root)")
        } else if keep {
            say("crash-test: kept \(root)")
        } else {
            try? FileManager.default.removeItem(atPath: root)
        }
        let failed = Set(failures.map(\.round)).count
        if timings {
            var own = rusage(), children = rusage()
            getrusage(RUSAGE_SELF.rawValue, &own)
            getrusage(RUSAGE_CHILDREN.rawValue, &children)
            let cpu = { (u: rusage) in Double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + Double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6 }
            say("crash-test: CPU \(format(cpu(own))) in this tool, \(format(cpu(children))) in daemons")
        }
        say("crash-test: \(rounds) rounds in \(format(elapsed)) (seed \(seed))")
        say("crash-test: \(rounds - failed) passed, \(failed) failed")
        if failed > 0 { throw ExitCode.failure }
    }
}

extension CrashTestCommand {
    /// Violations per round and kind: the first three of each in full, then how many more.
    static func digest(_ violations: [Violation], perKind: Int = 3) -> [String] {
        var lines: [String] = []
        var seen: [String: Int] = [:]
        var order: [String] = []
        for v in violations {
            let key = "round \(v.round): \(v.kind)"
            if seen[key] == nil { order.append(key) }
            seen[key, default: 0] += 1
            if seen[key]! <= perKind { lines.append(v.line) }
        }
        for key in order where seen[key]! > perKind {
            lines.append("\(key): \(seen[key]! - perKind) more of this kind")
        }
        return lines
    }
}

/// One vault directory and what has been acknowledged in it.
final class Epoch {
    let number: Int
    let daemon: Daemon
    let model: VaultModel
    let operatorClient: VaultHTTPClient
    let tokens: [TenantTokens]
    var rounds = 0
    /// Set when the daemon could not be restarted or stopped answering: the next round starts a new vault.
    var broken = false
    var failed = false
    /// For promoting a standby.
    var operatorToken: [UInt8] = []

    init(number: Int, daemon: Daemon, model: VaultModel, operatorClient: VaultHTTPClient, tokens: [TenantTokens]) {
        self.number = number
        self.daemon = daemon
        self.model = model
        self.operatorClient = operatorClient
        self.tokens = tokens
    }
}

final class Runner {
    let binary: String
    let root: String
    let seed: UInt64
    let rounds: Int
    let clients: Int
    let freshEvery: Int
    let prefill: Int
    /// Seconds the last rotation and compaction took (checks measure them; kills aim inside them).
    var rotationEstimate = 0.3
    var compactionEstimate = 0.1
    var sweepEstimate = 0.05
    /// The last restart's time (SIGKILL to answering), for the round's line.
    var restartSeconds = 0.0
    var checksSeconds = 0.0
    var epochs = 0

    let checkThreads: Int
    let timings: Bool
    let injectRollback: Int?
    let journal: Bool
    let machineLoss: Double
    /// With `--standby`: the PostgreSQL cluster holding every vault's journal (a database each).
    let postgres: PostgresCluster?

    init(binary: String, root: String, seed: UInt64, rounds: Int, clients: Int, freshEvery: Int, prefill: Int,
         checkThreads: Int, timings: Bool, injectRollback: Int?, journal: Bool, machineLoss: Double, postgres: PostgresCluster?) {
        self.postgres = postgres
        self.injectRollback = injectRollback
        self.journal = journal
        self.machineLoss = machineLoss
        self.checkThreads = checkThreads
        self.timings = timings
        self.binary = binary
        self.root = root
        self.seed = seed
        self.rounds = rounds
        self.clients = clients
        self.freshEvery = freshEvery
        self.prefill = prefill
    }

    func run() -> [Violation] {
        var all: [Violation] = []
        var epoch: Epoch?
        defer { epoch?.daemon.kill9(); epoch?.daemon.stopStandby() }
        for round in 1...rounds {
            let log = ViolationLog(round: round)
            if epoch == nil || epoch!.broken || epoch!.rounds >= freshEvery {
                if let old = epoch { retire(old) }
                epoch = nil
                do {
                    epoch = try makeEpoch(log: log)
                } catch {
                    log.add("cannot set up a vault", "\(error)")
                }
            }
            if let epoch {
                let last = round == rounds || epoch.rounds + 1 == freshEvery
                runRound(round, epoch: epoch, log: log, full: last)
                if log.count > 0 {
                    // Keep its files for inspection, and go on with a new vault: the log no longer
                    // describes this one, so later rounds would only repeat the same findings.
                    epoch.failed = true
                    epoch.broken = true
                    say(epoch.daemon.logTails(lines: 25))
                }
            } else {
                say("round \(round)/\(rounds): FAILED — \(log.all.map(\.line).joined(separator: "; "))")
            }
            all += log.all
        }
        if let epoch { epoch.daemon.stop(); epoch.daemon.stopStandby() }
        return all
    }

    /// Stops a vault's daemon and removes its directory (kept when one of its rounds failed).
    private func retire(_ epoch: Epoch) {
        epoch.daemon.stop()
        epoch.daemon.stopStandby()
        if !epoch.failed { try? FileManager.default.removeItem(atPath: epoch.daemon.home) }
    }

    // MARK: A new vault

    private func makeEpoch(log: ViolationLog) throws -> Epoch {
        epochs += 1
        let number = epochs
        let directory = root + "/e\(number)"
        guard mkdir(directory, 0o700) == 0 else { throw DaemonError("mkdir \(directory): \(String(cString: strerror(errno)))") }
        // Alternate day buckets (one big bucket: heavy rotations) and one-second buckets with
        // records that expire within the round (sweeps destroy keys while the daemon is killed).
        let shortBuckets = number % 2 == 0
        var journalURL: String?
        if let postgres {
            try postgres.createDatabase("e\(number)")
            journalURL = postgres.url(database: "e\(number)")
        }
        let daemon = Daemon(binary: binary, directory: directory, bucketWidth: shortBuckets ? "PT1S" : "P1D", journaled: journal,
                            journalURL: journalURL)
        let operatorToken = try daemon.initialise()
        try daemon.start()
        let op = VaultHTTPClient(endpoint: .unixSocket(path: daemon.socket), token: operatorToken, timeout: 60)
        var tokens: [TenantTokens] = []
        for name in ["crash-a", "crash-b"] {
            let created = op.call("POST", "/v1/admin/tenants", ["id": name])
            guard created.status == 201 else { throw DaemonError("creating tenant \(name): \(created.summary)") }
            func issue(_ role: String) throws -> [UInt8] {
                let r = op.call("POST", "/v1/admin/tokens", ["tenant": name, "role": role, "name": "crash-test \(role)"])
                guard r.status == 201, let token = r.object?["token"] as? String else {
                    throw DaemonError("issuing a token for \(name): \(r.summary)")
                }
                return Array(token.utf8)
            }
            tokens.append(TenantTokens(agent: try issue("agent"), admin: try issue("admin")))
        }
        let model = VaultModel(tenants: tokens.count, workers: clients, subjectsPerWorker: 24,
                               ephemeralPerWorker: shortBuckets ? 3 : 0, bucketWidthMs: shortBuckets ? 1000 : 86_400_000,
                               epoch: number)
        let started = monotonicSeconds()
        try fill(model, socket: daemon.socket, tokens: tokens, epoch: number)
        say("vault \(number): \(directory), \(shortBuckets ? "1-second buckets, records expiring within rounds" : "1-day buckets"), "
            + "\(model.records.count) records written in \(format(monotonicSeconds() - started))")
        let epoch = Epoch(number: number, daemon: daemon, model: model, operatorClient: op, tokens: tokens)
        epoch.operatorToken = operatorToken
        return epoch
    }

    /// Writes `prefill` records in batches of 250, spread over the workers' regular subjects.
    private func fill(_ model: VaultModel, socket: String, tokens: [TenantTokens], epoch: Int) throws {
        let batches = (prefill + 249) / 250
        guard batches > 0 else { return }
        var rng = SeededRandom(seed: seed, 0xF111, UInt64(epoch))
        struct Item: Sendable { let worker: Int; let subject: Int; let payload: Payload; let category: String; let channel: String }
        var plan: [[Item]] = []
        for b in 0..<batches {
            let worker = b % clients
            let regular = model.owned[worker].indices.filter { !model.owned[worker][$0].ephemeral }
            plan.append((0..<min(250, prefill - b * 250)).map { i in
                Item(worker: worker, subject: regular.randomElement(using: &rng)!,
                     payload: Payload(tag: "v\(epoch).prefill.\(b).\(i)", pad: rng.letters(Int.random(in: 8...300, using: &rng))),
                     category: categories.randomElement(using: &rng)!, channel: channels.randomElement(using: &rng)!)
            })
        }
        let names = model.owned.map { $0.map(\.name) }
        let batchPlan = plan
        let clients = (0..<min(4, batches)).map { _ in
            tokens.map { VaultHTTPClient(endpoint: .unixSocket(path: socket), token: $0.agent, timeout: 60) }
        }
        let answers: [Result<[String], DaemonError>] = parallelMap(batches, threads: clients.count) { thread, b in
            let items = batchPlan[b]
            let tenant = items[0].worker % tokens.count
            let body = items.map { item -> [String: Any] in
                ["subject": names[item.worker][item.subject], "category": item.category, "channel": item.channel,
                 "data": item.payload.json]
            }
            let outcome = clients[thread][tenant].call("POST", "/v1/records/batch", ["records": body])
            guard outcome.status == 200, let results = outcome.object?["results"] as? [[String: Any]], results.count == items.count else {
                return .failure(DaemonError("prefill batch \(b) of \(items.count) records: \(outcome.summary)"))
            }
            // "id|expires_at" per item; the model is updated on the driver's thread afterwards.
            return .success(results.map { "\($0["id"] as? String ?? "")|\($0["expires_at"] as? String ?? "")" })
        }
        for (b, result) in answers.enumerated() {
            let answer = try result.get()
            for (item, receipt) in zip(plan[b], answer) {
                let parts = receipt.split(separator: "|").map(String.init)
                guard parts.count == 2, let expires = RFC3339.parse(parts[1]) else { throw DaemonError("a prefill item was refused") }
                let subject = model.owned[item.worker][item.subject]
                let record = RecordModel(id: parts[0], subject: subject, category: item.category, channel: item.channel,
                                         ephemeral: false, expiresAt: expires, content: item.payload, round: 0,
                                         note: "prefill, acknowledged")
                subject.records.append(record)
                model.add(record)
            }
        }
    }

    // MARK: A round

    private func runRound(_ round: Int, epoch: Epoch, log: ViolationLog, full: Bool) {
        epoch.rounds += 1
        let roundStarted = monotonicSeconds()
        var rng = SeededRandom(seed: seed, UInt64(round))
        let roll = Double.random(in: 0..<1, using: &rng)
        let target: KillTarget = roll < 0.15 ? .rotate : roll < 0.27 ? .compact : roll < 0.35 ? .sweep : .load
        let loadSeconds = Double.random(in: 0.1...0.8, using: &rng)
        var fireAt = loadSeconds
        var delay = 0.0
        if target != .load {
            fireAt = Double.random(in: 0.05...loadSeconds, using: &rng)
            let estimate = target == .rotate ? rotationEstimate : target == .compact ? compactionEstimate : sweepEstimate
            delay = Double.random(in: 0...(estimate * 1.5), using: &rng)
        }
        let model = epoch.model
        let daemon = epoch.daemon
        if postgres != nil {
            // A standby follows the journal through the round (a new one after a promotion).
            do { try daemon.startStandby() } catch { log.add("the standby did not start", "\(error)") }
        }
        let killed = StopFlag(), stop = StopFlag()
        let retention: (String, Int64)? = model.ephemeralAllowed ? ("PT1S", 1000) : nil
        let workers = (0..<clients).map { w in
            Worker(index: w, round: round, subjects: model.owned[w], socket: daemon.socket, tokens: epoch.tokens[w % epoch.tokens.count],
                   violations: log, killed: killed, ephemeralRetention: retention, rng: SeededRandom(seed: seed, UInt64(round), UInt64(w + 1)))
        }
        let operatorLoad = OperatorLoad(client: epoch.operatorClient, socket: daemon.socket, violations: log, killed: killed, target: target,
                                        fireAt: fireAt, rng: SeededRandom(seed: seed, UInt64(round), 0x0),
                                        tokens: model.tokens, tenantForTokens: "crash-a", round: round)
        if injectRollback == round {
            do { try daemon.snapshot() } catch { log.add("self-test", "\(error)") }
        }
        if machineLoss > 0 && postgres == nil {
            do { try daemon.keepKey() } catch { log.add("keeping the key", "\(error)") }
        }
        let started = monotonicSeconds()
        let clients = self.clients
        let group = startThreads(clients + 1) { i in
            if i < clients { workers[i].run(stop: stop) } else { operatorLoad.run(started: started, stop: stop) }
        }
        sleepSeconds(started + fireAt - monotonicSeconds())
        var killAt = fireAt
        if target != .load {
            // Aim from the moment the rotation or compaction was sent.
            var sent: Double? = nil
            while sent == nil && monotonicSeconds() < started + fireAt + 5 {
                sent = operatorLoad.sentAt.withLock { $0 }
                if sent == nil { usleep(200) }
            }
            let from = sent ?? monotonicSeconds()
            sleepSeconds(from + delay - monotonicSeconds())
            killAt = monotonicSeconds() - started
            fireAt = from - started
        }
        killed.set()
        daemon.kill9()
        let killWall = wallMilliseconds()
        stop.set()
        group.wait()

        var counts = operatorLoad.counts
        for w in workers {
            counts = counts + w.counts
            for r in w.written { model.add(r) }
        }
        model.tokens += operatorLoad.issued
        if let g = operatorLoad.acknowledgedGeneration { model.acknowledgedGeneration = max(model.acknowledgedGeneration, g) }
        var what = "kill after \(format(killAt)) of load"
        if target != .load {
            what = "kill \(format(killAt - fireAt)) into \(target.rawValue)"
            if let answered = operatorLoad.maintenanceAnswered {
                what += " (it finished first, after \(format(answered - fireAt)))"
            } else if !operatorLoad.maintenanceSent {
                what += " (not sent)"
            }
        }

        if injectRollback == round {
            do {
                try daemon.rollBack()
                what += "; SELF-TEST: data files rolled back to the round's start"
            } catch { log.add("self-test", "\(error)") }
        }

        // What the kill interrupted, as the files show it.
        let left = daemon.leftovers()
        if !left.isEmpty { what += "; left \(left.joined(separator: ", "))" }

        // Now and then the machine is lost with the daemon: rebuilt from the journal.
        let machineLost = machineLoss > 0 && Double.random(in: 0..<1, using: &rng) < machineLoss
        if machineLost, postgres != nil {
            do {
                what += "; machine lost, " + (try daemon.loseMachineAndPromote(operatorToken: epoch.operatorToken))
            } catch {
                log.add("promoting the standby after the loss of the machine failed", "\(error)")
                epoch.broken = true
                report(round, epoch: epoch, what: what + "; machine lost", counts: counts, checker: nil, log: log, started: roundStarted)
                return
            }
        } else if machineLost {
            do {
                let summary = try daemon.loseMachineAndRestore()
                what += "; machine lost, restored \(summary)"
                // The restore ends with a rotation of its own: the generation it reports is exact.
                guard let object = try? JSONSerialization.jsonObject(with: Data(summary.utf8)) as? [String: Any],
                      let g = object["master_key_generation"] as? Int else {
                    throw DaemonError("restore printed no summary: \(summary)")
                }
                model.knownGeneration = UInt64(g)
                model.acknowledgedGeneration = UInt64(g)
            } catch {
                log.add("restore after the loss of the machine failed", "\(error)")
                epoch.broken = true
                report(round, epoch: epoch, what: what + "; machine lost", counts: counts, checker: nil, log: log, started: roundStarted)
                return
            }
        }

        // Restart on the same files; now and then, kill the restart too (a crash during recovery).
        var restartStarted = monotonicSeconds()
        do {
            if Double.random(in: 0..<1, using: &rng) < 0.12 {
                let after = Double.random(in: 0...max(0.01, restartSeconds), using: &rng)
                try daemon.launch()
                sleepSeconds(after)
                daemon.kill9()
                what += "; the restart killed too, after \(format(after))"
                restartStarted = monotonicSeconds()
            }
            try daemon.start()
            restartSeconds = monotonicSeconds() - restartStarted
            let stale = daemon.leftovers().filter { $0 != "keys/master.key.next.tmp" }
            if !stale.isEmpty {
                log.add("start-up left an interrupted rotation or compaction", "after the restart \(stale.joined(separator: ", ")) still exist")
            }
        } catch {
            log.add("the daemon did not restart after SIGKILL", "\(error)")
            epoch.broken = true
            report(round, epoch: epoch, what: what, counts: counts, checker: nil, log: log, started: roundStarted)
            return
        }
        let checker = Checker(model: model, daemon: daemon, tokens: epoch.tokens, op: epoch.operatorClient,
                              violations: log, round: round, threads: checkThreads, rng: SeededRandom(seed: seed, UInt64(round), 0xC4EC))
        let rotateAfter = target == .rotate || target == .compact || Double.random(in: 0..<1, using: &rng) < 0.1
        let checksStarted = monotonicSeconds()
        checker.run(full: full, rotate: rotateAfter, compact: target == .compact,
                    rotationInFlight: operatorLoad.rotationInFlight, killWall: killWall)
        checksSeconds = monotonicSeconds() - checksStarted
        if checker.daemonLost { epoch.broken = true }
        if let s = checker.rotationSeconds { rotationEstimate = max(0.02, s) }
        if let s = checker.compactionSeconds { compactionEstimate = max(0.01, s) }
        if let s = checker.sweepSeconds { sweepEstimate = max(0.01, s) }
        report(round, epoch: epoch, what: what, counts: counts, checker: checker, log: log, started: roundStarted)
    }

    private func report(_ round: Int, epoch: Epoch, what: String, counts: Counts, checker: Checker?, log: ViolationLog,
                        started: Double) {
        var line = "round \(round)/\(rounds) (vault \(epoch.number), \(what)): "
        line += log.count == 0 ? "ok" : "FAILED (\(log.count) violations)"
        line += " — \(counts.summary)"
        if let checker {
            line += "; restart \(format(restartSeconds)); checked \(checker.checkedRecords) records, "
                + "\(checker.listedSubjects) subjects in \(format(checksSeconds))"
            if let r = checker.rotationSeconds { line += " (rotation \(format(r))" + (checker.compactionSeconds.map { ", compaction \(format($0))" } ?? "") + ")" }
            if !checker.notes.isEmpty { line += "; " + checker.notes.joined(separator: "; ") }
            if timings { line += " [" + checker.timings.map { "\($0.0) \(format($0.1))" }.joined(separator: ", ") + "]" }
        }
        line += " (\(format(monotonicSeconds() - started)))"
        say(line)
        for v in CrashTestCommand.digest(log.all) { say("  violation: " + v) }
    }
}
