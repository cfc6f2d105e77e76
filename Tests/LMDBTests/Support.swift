import Foundation
import LMDB
import Locking

/// Runs `body` with the path of a fresh, empty temporary directory, removed afterwards.
func withTemporaryDirectory<R>(_ body: (String) throws -> R) throws -> R {
    let url = FileManager.default.temporaryDirectory
        .appendingPathComponent("lmdb-tests-\(UUID().uuidString)", isDirectory: true)
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: url) }
    return try body(url.path)
}

/// Opens an environment with one database, "main", in a fresh temporary directory; closes it and
/// removes the directory afterwards.
func withEnvironment<R>(
    options: EnvironmentOptions = .init(),
    _ body: (Environment, Database, String) throws -> R
) throws -> R {
    try withTemporaryDirectory { directory in
        let path = directory + "/env"
        let environment = try Environment(path: path, options: options, databases: ["main"])
        defer { environment.close() }
        return try body(environment, environment.database("main"), directory)
    }
}

/// The UTF-8 bytes of `string`.
func bytes(_ string: String) -> [UInt8] {
    Array(string.utf8)
}

/// `buffer` decoded as UTF-8 (test keys are ASCII).
func text(_ buffer: UnsafeRawBufferPointer) -> String {
    String(decoding: buffer, as: UTF8.self)
}

func fileSize(_ path: String) throws -> Int {
    let attributes = try FileManager.default.attributesOfItem(atPath: path)
    return (attributes[.size] as? NSNumber)?.intValue ?? -1
}

func permissions(_ path: String) throws -> Int {
    let attributes = try FileManager.default.attributesOfItem(atPath: path)
    return (attributes[.posixPermissions] as? NSNumber)?.intValue ?? -1
}

/// An error slot shared with another thread.
final class ErrorBox: Sendable {
    private let error = Locked<(any Error)?>(nil)

    func set(_ error: any Error) {
        self.error.withLock { $0 = error }
    }

    func get() -> (any Error)? {
        error.withLock { $0 }
    }
}
