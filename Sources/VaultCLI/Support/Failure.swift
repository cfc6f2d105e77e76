import ArgumentParser
import VaultClient
import VaultCore

/// A failure the CLI reports itself: printed as `shredvault: <message>` on stderr, exit 1.
///
/// - Warning: Messages name files, fields, ids and statuses, never a token, a subject or
///   record data: they end up in terminals, CI logs and shell history search.
struct CLIError: Error, CustomStringConvertible {
    let message: String
    init(_ message: String) { self.message = message }
    var description: String { message }
}

/// An error answer from the daemon (`application/problem+json`), already safe to print:
/// the server builds `detail` only from its own messages (docs/api.md, Conventions).
struct DaemonProblem: Error, CustomStringConvertible {
    let status: Int
    let title: String
    let detail: String

    var description: String {
        detail.isEmpty ? "\(status) \(title)" : "\(status) \(title): \(detail)"
    }
}

/// Runs a command body and turns every failure into the one format scripts can rely on:
/// `shredvault: <what went wrong>` on stderr and exit status 1.
///
/// ArgumentParser would print an unknown error as `Error: …` with its own exit code; our
/// own errors (and VaultCore's, which are safe to print) get the documented format instead.
func reportingFailures<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch {
        throw report(error)
    }
}

func reportingFailures<T>(_ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch {
        throw report(error)
    }
}

private func report(_ error: any Error) -> any Error {
    switch error {
    case is ExitCode, is CleanExit, is ValidationError:
        return error
    default:
        Terminal.error("shredvault: \(userDescription(error))")
        return ExitCode.failure
    }
}

/// What to tell the user about a failure. CLIError, DaemonProblem, VaultError and
/// JSONError all describe themselves without secrets; transport errors get a hint.
func userDescription(_ error: any Error) -> String {
    if let e = error as? ClientError { return ClientFailure.describe(e) }
    return "\(error)"
}

/// Words for a transport failure that tell the user what to check.
enum ClientFailure {
    static func describe(_ e: ClientError) -> String {
        switch e.code {
        case .connect:
            "cannot reach the daemon (\(e.message)); is `shredvault serve` running? Pass --socket PATH or set SHREDVAULT_SOCKET"
        case .timeout:
            "no answer from the daemon in time (\(e.message)); try a larger --timeout"
        default:
            "\(e)"
        }
    }
}
