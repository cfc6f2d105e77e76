import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTPTypes

/// Closes a connection that does not deliver a whole request in time: the clock runs from
/// the moment the connection opens, or the previous response ends, until the request's last
/// byte. A slow-loris client (headers or body dripped a byte at a time, or a connection
/// opened and left silent) holds a connection for at most `limit`; a request being handled
/// (a long rotation, say) is not timed.
final class RequestDeadlineHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let limit: TimeAmount
    private let logger: Logger
    private var timer: Scheduled<Void>?
    private var receiving = false

    init(limit: TimeAmount, logger: Logger) {
        self.limit = limit
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { arm(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        arm(context)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        disarm()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) { disarm() }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head:
            receiving = true
            if timer == nil { arm(context) }
        case .body:
            break
        case .end:
            receiving = false
            disarm()
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data), !receiving, timer == nil { arm(context) }
        context.write(data, promise: promise)
    }

    private func arm(_ context: ChannelHandlerContext) {
        disarm()
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        let logger = logger
        let limit = limit
        timer = context.eventLoop.scheduleTask(in: limit) {
            let context = loopBound.value
            logger.info("closed a connection that sent no complete request in time",
                        metadata: ["limit": "\(limit.nanoseconds / 1_000_000_000) s"])
            context.close(promise: nil)
        }
    }

    private func disarm() {
        timer?.cancel()
        timer = nil
    }
}

/// At most `limit` connections at once: past it the daemon stops accepting (new clients wait
/// in the listen backlog instead of being refused) and says so once in its log, and again
/// when it accepts again.
struct ConnectionLimit: AvailableConnectionsDelegate {
    let limit: Int
    let logger: Logger
    private var open = 0
    private var saturated = false

    init(limit: Int, logger: Logger) {
        self.limit = limit
        self.logger = logger
    }

    mutating func connectionOpened() {
        open += 1
        if open >= limit, !saturated {
            saturated = true
            logger.warning("connection limit reached; new connections wait until one closes",
                           metadata: ["limit": "\(limit)"])
        }
    }

    mutating func connectionClosed() {
        open -= 1
        if saturated, open < limit * 9 / 10 {
            saturated = false
            logger.notice("accepting connections again", metadata: ["open": "\(open)", "limit": "\(limit)"])
        }
    }

    func isAcceptingNewConnections() -> Bool { open < limit }
}

/// Holds a connection's close until the bytes already written have left: Hummingbird closes
/// its output as soon as a client half-closes its side, and NIO turns that into a full close
/// that drops what is still queued — a client that sent its request and shut its write side
/// would get a large answer cut short. A close waits for pending writes (at most `limit`; a
/// client that stops reading does not hold the connection forever).
final class FlushBeforeCloseHandler: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let limit: TimeAmount
    private var pending = 0
    private var heldClose: (mode: CloseMode, promise: EventLoopPromise<Void>?)?

    init(limit: TimeAmount) { self.limit = limit }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        pending += 1
        let written = promise ?? context.eventLoop.makePromise()
        let loopBound = NIOLoopBound((handler: self, context: context), eventLoop: context.eventLoop)
        written.futureResult.whenComplete { _ in
            let (handler, context) = loopBound.value
            handler.pending -= 1
            if handler.pending == 0 { handler.releaseClose(context) }
        }
        context.write(data, promise: written)
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard pending > 0, heldClose == nil else {
            context.close(mode: mode, promise: promise)
            return
        }
        heldClose = (mode, promise)
        context.flush()
        let loopBound = NIOLoopBound((handler: self, context: context), eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: limit) {
            let (handler, context) = loopBound.value
            handler.releaseClose(context)
        }
    }

    private func releaseClose(_ context: ChannelHandlerContext) {
        guard let held = heldClose else { return }
        heldClose = nil
        context.close(mode: held.mode, promise: held.promise)
    }
}
