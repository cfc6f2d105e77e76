import Hummingbird
import Locking
import NIOCore
import ServiceLifecycle
import VaultAPI
import VaultCore

/// The streams of `GET /v1/audit/stream` open at once, and their cap (503 past it): each holds
/// a connection and a page of entries at most, and wakes at every commit.
final class AuditStreams: Sendable {
    let limit: Int
    private let open = Locked(0)

    init(limit: Int) { self.limit = max(0, limit) }

    var count: Int { open.withLock { $0 } }

    /// Takes a place; nil when `limit` streams are open.
    func enter() -> Place? {
        let taken = open.withLock { n in
            guard n < limit else { return false }
            n += 1
            return true
        }
        return taken ? Place(self) : nil
    }

    fileprivate func leave() { open.withLock { $0 -= 1 } }

    /// A stream's place, given back once: when its body ends, or when the answer is dropped
    /// without its body ever running (the client went before the head was written).
    final class Place: Sendable {
        private let streams: AuditStreams
        private let given = Locked(false)

        fileprivate init(_ streams: AuditStreams) { self.streams = streams }

        func giveBack() {
            if given.withLock({ g in defer { g = true }; return !g }) { streams.leave() }
        }

        deinit { giveBack() }
    }
}

extension VaultServer {
    /// Entries per read of a stream: the most one read holds in memory before it is written.
    static let streamPage = 1000

    /// The SOC feed (docs/api.md, "Following the audit"): `application/x-ndjson`, one entry per
    /// line in the shape `GET /v1/audit` (an admin: its tenant's view) or `GET /v1/admin/audit`
    /// (the operator) gives it; first every entry after `after`, page by page, then each new
    /// entry once its commit is durable, until the client goes or the daemon stops.
    ///
    /// No heartbeat: an idle stream sends nothing (a blank line would be an empty NDJSON record
    /// to many readers); a daemon that goes away closes the socket, which the reader sees.
    /// Bounded: `maxAuditStreams` streams at once; one page in memory per stream, written
    /// through Hummingbird's writer, which waits while the client does not read (a reader
    /// that stops reading holds the connection, never the vault's memory); the token is
    /// checked again before each read, so a revoked token's stream ends at the next entry.
    func addAuditStreamRoutes(_ router: RouteTable) {
        router.get("/v1/audit/stream") { request, context -> Response in
            let owner = try self.auditLogOwner(request)
            let after = try Self.streamStart(request)
            let feed = self.vault.auditFeed
            // The first page is read before answering, so that a refusal is still a problem+json.
            let seen = feed.generation
            let first = try await self.vault.auditEntries(tenant: owner, after: after, limit: Self.streamPage)
            guard let place = self.auditStreams.enter() else {
                var p = Problem(.serviceUnavailable, "\(self.auditStreams.limit) audit streams are open; try again later")
                p.extraHeaders[.retryAfter] = "5"
                throw p
            }
            let channel = context.channel
            return Response(
                status: .ok, headers: [.contentType: "application/x-ndjson", .cacheControl: "no-store"],
                body: ResponseBody { [self] writer in
                    defer { place.giveBack() }
                    let stop = StopFlag(), done = StopFlag()
                    defer { done.set() }
                    // A client that goes away ends its stream now, not at its next entry (which
                    // may never come): its place under the cap is free again.
                    channel.closeFuture.whenComplete { _ in
                        stop.set()
                        feed.nudge()
                    }
                    try await withGracefulShutdownHandler {
                        try await self.follow(request, owner: owner, after: after, first: first, seen: seen,
                                                stop: stop, into: &writer)
                    } onGracefulShutdown: {
                        stop.set()
                        feed.nudge()
                        // A client that stopped reading leaves a write waiting: close the
                        // connection under it (the close waits for the written bytes at most
                        // the request timeout, FlushBeforeCloseHandler).
                        Task {
                            try? await Task.sleep(for: .seconds(2))
                            if !done.isSet { channel.close(promise: nil) }
                        }
                    }
                    try await writer.finish(nil)
                })
        }
    }

    /// Writes the pages of a stream until `stop`, the task's cancellation, or a token that no
    /// longer authenticates with the same role and tenant.
    private func follow(_ request: Request, owner: TenantID?, after start: UInt64, first: [AuditEntry], seen firstSeen: UInt64,
                        stop: StopFlag, into writer: inout any ResponseBodyWriter) async throws {
        let feed = vault.auditFeed
        var after = start, page = first, seen = firstSeen
        while true {
            if let last = page.last {
                try await writer.write(Self.ndjson(page, chain: owner == nil))
                after = last.seq
            }
            if page.count < Self.streamPage {
                // Everything up to `seen` is written: wait for a commit after it.
                if stop.isSet || Task.isCancelled { return }
                await feed.wait(past: seen)
                if stop.isSet || Task.isCancelled { return }
            }
            guard (try? auditLogOwner(request)) == owner else { return }
            seen = feed.generation
            page = try await vault.auditEntries(tenant: owner, after: after, limit: Self.streamPage)
        }
    }

    /// `after`, as `GET /v1/audit` takes it (0 when absent).
    static func streamStart(_ request: Request) throws -> UInt64 {
        guard let a = request.uri.queryParameters.get("after") else { return 0 }
        guard let v = UInt64(a), v <= UInt64(Int64.max) else {
            throw Problem(.badRequest, "\"after\" must be a sequence number from 0 to \(Int64.max)")
        }
        return v
    }

    /// One line per entry, each the object `writeAudit` puts in a page.
    static func ndjson(_ entries: [AuditEntry], chain: Bool) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(256 * entries.count)
        for e in entries {
            var w = JSONWriter(capacity: 256)
            writeEntry(e, chain: chain, into: &w)
            buffer.writeBytes(w.bytes)
            buffer.writeInteger(UInt8(0x0A))
            w.wipe()
        }
        return buffer
    }
}
