import ArgumentParser
import Foundation
import VaultClient

extension AuditCommand {
    /// `shredvault audit follow`: the SOC feed on standard output, one JSON entry per line,
    /// across dropped connections and daemon restarts.
    struct Follow: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print audit entries as they are written, one JSON object per line (admin: the tenant's; operator: all).",
            discussion: """
                Prints every entry after --after (default 0: from the first), then waits for new ones, \
                until interrupted. When the connection drops or the daemon restarts it connects again \
                (after 0.5 s, doubling to 30 s while it fails) and resumes after the last entry it \
                printed: no entry twice, none left out. Notes about reconnecting go to stderr. Exits 1 \
                on an answer that retrying cannot change (a bad token, a role that may not read the audit).
                """)

        @Option(help: ArgumentHelp("Start after this sequence number (the last one you have).", valueName: "seq"))
        var after: UInt64 = 0

        @OptionGroup var client: ClientOptions

        /// Longest wait between attempts.
        static let maxDelay = 30.0

        func validate() throws {
            guard after <= UInt64(Int64.max) else { throw ValidationError("--after must be at most \(Int64.max)") }
        }

        func run() throws {
            try withDaemon(client) { daemon in
                var last = after
                var delay = 0.5
                while true {
                    let outcome = try follow(daemon, after: &last)
                    if case .delivered = outcome { delay = 0.5 }
                    var wait = delay
                    if case .retryAfter(let seconds, _) = outcome { wait = max(wait, seconds) }
                    Terminal.error("shredvault: \(outcome.description); connecting again in \(wait) s (after seq \(last))")
                    Thread.sleep(forTimeInterval: wait)
                    delay = min(delay * 2, Self.maxDelay)
                }
            }
        }

        /// Why a stream ended, for the retry.
        enum Ended: CustomStringConvertible {
            /// It printed entries (or was open a while) before ending: retry soon.
            case delivered(String)
            case failed(String)
            case retryAfter(Double, String)

            var description: String {
                switch self {
                case .delivered(let why), .failed(let why), .retryAfter(_, let why): why
                }
            }
        }

        /// One connection: prints entries after `last` until the stream ends; throws on an
        /// answer a retry cannot change.
        func follow(_ daemon: Daemon, after last: inout UInt64) throws -> Ended {
            let stream: HTTPLineStream
            do {
                stream = try daemon.openStream("/v1/audit/stream?after=\(last)")
            } catch let e as ClientError {
                return .failed(ClientFailure.describe(e))
            }
            guard stream.status == 200 else {
                let body = (try? stream.readRest()) ?? []
                let problem = Daemon.problem(HTTPResponse(status: stream.status, headers: stream.headers, body: body))
                if stream.status == 503 || stream.status == 429 || stream.status >= 500 {
                    return .retryAfter(Double(stream.header("retry-after") ?? "") ?? 0, "the daemon answered \(problem)")
                }
                throw problem
            }
            var printed = false
            do {
                while let line = try stream.nextLine() {
                    guard !line.isEmpty else { continue }
                    let entry = try JSONValue.parse(line)
                    guard let seq = entry["seq"]?.plainText, let n = UInt64(seq) else {
                        throw CLIError("the daemon sent a line without a seq")
                    }
                    // Never twice: a resumed stream starts after `last` anyway.
                    guard n > last else { continue }
                    Terminal.outBytes(line + [0x0A])
                    last = n
                    printed = true
                }
            } catch let e as ClientError {
                return printed ? .delivered(ClientFailure.describe(e)) : .failed(ClientFailure.describe(e))
            }
            return printed ? .delivered("the daemon ended the stream") : .failed("the daemon ended the stream")
        }
    }
}
