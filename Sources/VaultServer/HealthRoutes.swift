import Hummingbird
import NIOCore
public import Prometheus
import Metrics
import VaultAPI
import VaultCore

/// The process's metrics registry: swift-metrics bootstrapped once onto swift-prometheus.
public enum ServerMetrics {
    public static let registry: PrometheusCollectorRegistry = {
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        return registry
    }()

    /// Records group-commit batch sizes and commit (fsync) durations.
    public static let commitObserver: @Sendable (Int, Double) -> Void = { operations, seconds in
        batchSize.record(operations)
        commitTime.recordNanoseconds(Int64(seconds * 1e9))
    }

    /// Makes sure the registry is the metrics backend before any metric is created
    /// (swift-metrics binds a metric to the factory in force when it is created).
    public static func bootstrap() { _ = registry }

    static let batchSize: Recorder = { bootstrap(); return Recorder(label: "shredvault_group_commit_batch_size", aggregate: true) }()
    static let commitTime: Metrics.Timer = {
        bootstrap()
        return Metrics.Timer(label: "shredvault_commit_duration", preferredDisplayUnit: .seconds)
    }()
    static let records: Metrics.Gauge = { bootstrap(); return Metrics.Gauge(label: "shredvault_records") }()
    static let tenants: Metrics.Gauge = { bootstrap(); return Metrics.Gauge(label: "shredvault_tenants") }()
}

extension VaultServer {
    func addHealthRoutes(_ router: RouteTable) {
        router.get("/healthz") { _, _ -> Response in
            jsonResponse { w in
                w.beginObject()
                w.field("status", "ok")
                w.endObject()
            }
        }

        router.get("/metrics") { request, _ -> Response in
            _ = try self.operatorPrincipal(request)
            let stats = try await self.vault.statistics()
            ServerMetrics.records.record(stats.records)
            ServerMetrics.tenants.record(stats.tenants)
            var buffer: [UInt8] = []
            ServerMetrics.registry.emit(into: &buffer)
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                            body: .init(byteBuffer: ByteBuffer(bytes: buffer)))
        }
    }
}
