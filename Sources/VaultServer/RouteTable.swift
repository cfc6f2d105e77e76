import Hummingbird

/// Registers routes on the Hummingbird router and remembers them, so a test can compare
/// the served routes with `openapi.yaml` in both directions.
final class RouteTable {
    typealias Handler = @Sendable (Request, VaultRequestContext) async throws -> Response
    let router: Router<VaultRequestContext>
    private(set) var routes: [(method: String, path: String)] = []

    init(_ router: Router<VaultRequestContext>) { self.router = router }

    private func record(_ method: String, _ path: String) {
        // OpenAPI writes path parameters as {id}; Hummingbird as :id.
        let spec = path.split(separator: "/", omittingEmptySubsequences: false)
            .map { $0.hasPrefix(":") ? "{\($0.dropFirst())}" : String($0) }.joined(separator: "/")
        routes.append((method, spec))
    }

    func get(_ path: String, use handler: @escaping Handler) { record("GET", path); router.get(RouterPath(path), use: handler) }
    func post(_ path: String, use handler: @escaping Handler) { record("POST", path); router.post(RouterPath(path), use: handler) }
    func put(_ path: String, use handler: @escaping Handler) { record("PUT", path); router.put(RouterPath(path), use: handler) }
    func delete(_ path: String, use handler: @escaping Handler) { record("DELETE", path); router.delete(RouterPath(path), use: handler) }
}

/// Which methods each served path answers, so a request whose path exists but whose method
/// does not (TRACE, OPTIONS, or GET on a POST-only route) gets 405 with `Allow` instead of
/// the router's 404 (RFC 9110 §15.5.6: a 405 must list the methods in `Allow`).
struct RouteIndex: Sendable {
    /// Path templates split into segments; `nil` stands for a `{parameter}` segment.
    private let entries: [(segments: [String?], methods: [String])]

    init(_ routes: [(method: String, path: String)]) {
        var byPath: [(path: String, methods: [String])] = []
        for r in routes {
            if let i = byPath.firstIndex(where: { $0.path == r.path }) {
                if !byPath[i].methods.contains(r.method) { byPath[i].methods.append(r.method) }
            } else {
                byPath.append((r.path, [r.method]))
            }
        }
        entries = byPath.map { entry in
            (Self.segments(entry.path).map { $0.hasPrefix("{") && $0.hasSuffix("}") ? nil : $0 }, entry.methods.sorted())
        }
    }

    private static func segments(_ path: String) -> [String] {
        path.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
    }

    /// The methods served on `path`, or nil when no route has that path. A literal segment
    /// wins over a parameter, as in the router; a parameter matches any non-empty segment.
    func methods(forPath path: String) -> [String]? {
        let asked = Self.segments(path)
        var best: (literals: Int, methods: [String])?
        for e in entries where e.segments.count == asked.count {
            var literals = 0
            var matches = true
            for (want, got) in zip(e.segments, asked) {
                if let want {
                    guard want == got else { matches = false; break }
                    literals += 1
                } else if got.isEmpty {
                    matches = false
                    break
                }
            }
            if matches, best == nil || literals > best!.literals { best = (literals, e.methods) }
        }
        return best?.methods
    }
}
