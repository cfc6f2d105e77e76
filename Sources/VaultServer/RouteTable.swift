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
