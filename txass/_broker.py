"""
The broker connection users hold, and the services reached through it.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

from twisted.application.internet import backoffPolicy
from twisted.internet import defer
from twisted.logger import Logger

from txass._client import Client
from txass._connection import TERMINAL_REPLY_CODES, AMQPChannel, AMQPConnection, BrokerAddress, open_connection, parse_url
from txass._envelope import get_codec, get_codecs
from txass._handler import make_dispatcher
from txass._policy import DEFAULT_MAX_ATTEMPTS, Retry, check_max_attempts
from txass._rpc import DEFAULT_TIMEOUT, RPCClient, _Caller, check_timeout
from txass._server import DEFAULT_MAX_REQUEST_SIZE, Server
from txass._topology import Topology
from txass._util import SharedResult, when_done
from txass.errors import ChannelClosed, ConnectionFailed, ConnectionLost, TxassError

DEFAULT_PREFETCH = 10

# Seconds before the first reconnection attempt, and the maximum delay
# between attempts; each delay doubles the last, plus up to 1 s of jitter.
RETRY_INITIAL_DELAY = 0.5
RETRY_MAX_DELAY = 30.0

# Seconds before a server whose channel closed on an open connection
# consumes again.
CHANNEL_RETRY_DELAY = 1.0

# Seconds a connection must stay open before its loss starts the backoff
# from the first delay again, so that a connection dropped soon after each
# reconnection still backs off.
STABLE_CONNECTION = 30.0
DEFAULT_GRACE = 30.0

# The AMQP reply code for a missing queue or exchange.
NOT_FOUND = 404


# Milliseconds a retry queue may stay unused before the broker deletes it,
# beyond its delay.
RETRY_QUEUE_IDLE = 3_600_000


class Broker:
    """
    A connection to a RabbitMQ broker; L{txass.connect} creates it.

    @ivar address: Where it is connected; C{address.safe_url()} shows it
        without the password.
    """

    log = Logger()

    def __init__(
        self,
        connection: AMQPConnection,
        reactor: Any,
        *,
        reconnect: bool = True,
        retry_policy: Callable[[int], float] | None = None,
    ) -> None:
        self._connection = connection
        self._reactor = reactor
        self.address: BrokerAddress = connection.address
        self._reconnects = reconnect
        self._retry_policy = retry_policy or backoffPolicy(initialDelay=RETRY_INITIAL_DELAY, maxDelay=RETRY_MAX_DELAY, factor=2.0)
        # The reconnection in progress, and the callers waiting for it.
        self._reconnecting: defer.Deferred[None] | None = None
        self._retry_call: Any = None
        # What the reconnection waits for: the delay before an attempt, or
        # the attempt; Broker.close() cancels it.
        self._waiting: defer.Deferred[Any] | None = None
        # The number of reconnection attempts since the connection was last
        # stable, which sets the next delay.
        self._attempt = 0
        self._connected_at = 0.0
        self._connected_waiters: list[defer.Deferred[None]] = []
        self._closed_waiters: list[defer.Deferred[Exception]] = []
        self._final_reason: Exception | None = None
        # Resumptions of servers and clients scheduled after their channel
        # closed; Broker.close() cancels them.
        self._scheduled: set[Any] = set()
        self._publisher_channels: dict[str, SharedResult[AMQPChannel]] = {}
        # Declarations are made once per connection.  A queue deleted later
        # is declared again when consuming it or publishing to it fails.
        # NOTE: a deleted exchange is not declared again until reconnect.
        self._declarations: dict[tuple[str, str], SharedResult[None]] = {}
        self._servers: set[Server] = set()
        # Servers still starting, each as a Deferred that fires once its
        # start has ended, by serving or failing.  Broker.close() waits for
        # them: a server may take requests before its start ends.
        self._starting_servers: set[defer.Deferred[None]] = set()
        self._clients: set[Client] = set()
        # The RPC callers of this connection, by whether they use direct
        # reply-to.
        self._callers: dict[bool, _Caller] = {}
        # The broker's reason for blocking publishes, or None.
        self._blocked: str | None = None
        self._closing: defer.Deferred[None] | None = None
        self._close_requested = False
        self._attach(connection)

    def _attach(self, connection: AMQPConnection) -> None:
        """
        Use C{connection} from now on.  Everything declared or opened on an
        earlier connection is declared or opened again when next needed.
        """
        self._connection = connection
        self._connected_at = self._reactor.seconds()
        self._declarations.clear()
        self._publisher_channels.clear()
        self._blocked = None
        connection.on_blocked(self._on_blocked)
        connection.on_drained(self._on_drained)
        connection.when_closed().addCallback(self._on_connection_closed, connection)

    def __repr__(self) -> str:
        return f"<Broker {self.address.safe_url()}>"

    @property
    def is_open(self) -> bool:
        """
        Whether the connection is open now; L{False} while reconnecting.
        """
        return self._connection.is_open

    def _on_blocked(self, reason: str | None) -> None:
        self._blocked = reason
        if reason is not None:
            self.log.warn(
                "the broker at {url} blocked publishing on this connection: {reason}; RPC calls wait "
                "unsent until it unblocks or their timeout runs out",
                url=self.address.safe_url(),
                reason=reason,
            )
        else:
            self.log.info("the broker at {url} unblocked publishing", url=self.address.safe_url())
            for caller in list(self._callers.values()):
                caller.wake_all()

    def _on_drained(self) -> None:
        for caller in list(self._callers.values()):
            caller.wake_all()

    def _on_connection_closed(self, reason: Exception, connection: AMQPConnection) -> None:
        if connection is not self._connection or self._closing is not None:
            return
        if not self._reconnects:
            self.log.error("connection to {url} lost: {reason}", url=self.address.safe_url(), reason=reason)
            self._closed_for_good(reason)
            return
        self.log.error(
            "connection to {url} lost: {reason}; reconnecting",
            url=self.address.safe_url(),
            reason=reason,
        )
        # Resumptions scheduled on the lost connection are made by the
        # reconnection instead.
        self._cancel_scheduled()
        if self._reactor.seconds() - self._connected_at >= STABLE_CONNECTION:
            self._attempt = 0
        self._reconnecting = defer.Deferred.fromCoroutine(self._reconnect())

    async def _reconnect(self) -> None:
        while not self._close_requested:
            delay = self._retry_policy(self._attempt)
            self._attempt += 1
            self._waiting = defer.Deferred()
            self._retry_call = self._reactor.callLater(delay, self._waiting.callback, None)
            try:
                await self._waiting
                self._retry_call = None
                # Broker.close() cancels the connection attempt too.
                self._waiting = defer.Deferred.fromCoroutine(open_connection(self.address, self._reactor))
                connection = await self._waiting
            except defer.CancelledError:
                return
            except ConnectionFailed as e:
                if self._close_requested:
                    # Broker.close() cancelled the attempt.
                    return
                self.log.warn(
                    "reconnecting to {url} failed (attempt {attempt}): {error}",
                    url=self.address.safe_url(),
                    attempt=self._attempt,
                    error=e.reason,
                )
                continue
            finally:
                self._retry_call = None
                self._waiting = None
            if self._close_requested:
                await connection.close()
                return
            self._attach(connection)
            self.log.info(
                "reconnected to {url} after {attempt} attempts", url=self.address.safe_url(), attempt=self._attempt
            )
            break
        self._reconnecting = None
        waiters, self._connected_waiters = self._connected_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        for server in list(self._servers):
            self._resume_server(server)
        for client in list(self._clients):
            client._resume()

    def _server_interrupted(self, server: Server) -> None:
        """
        Resume a server whose channel closed: at once on a connection that
        is still open, or once the connection is open again.
        """
        if self._closing is None and self._reconnecting is None and self._connection.is_open:
            # A declaration or consume that the broker rejects stops the
            # server (see _resume_server), so a lasting refusal cannot loop.
            self._later(CHANNEL_RETRY_DELAY, self._resume_server, server)

    def _later(self, delay: float, function: Callable[..., object], *arguments: Any) -> None:
        """
        Call C{function(*arguments)} after C{delay} seconds, unless the
        broker is closed first.
        """

        def run() -> None:
            self._scheduled.discard(call)
            function(*arguments)

        call = self._reactor.callLater(delay, run)
        self._scheduled.add(call)

    def _resume_server(self, server: Server) -> None:
        if server.state == "interrupted" and not server._resuming and self._closing is None:
            # Marked before the first await, so that the reconnection and a
            # scheduled resumption never resume one server twice.
            server._resuming = True
            defer.Deferred.fromCoroutine(self._resume_server_once(server))

    async def _resume_server_once(self, server: Server) -> None:
        try:
            if not self._connection.is_open:
                # The reconnection resumes it.
                return
            try:
                await self._declare_service(server.topology)
                consumer = await self._open_channel()
                try:
                    await server.resume(consumer)
                except Exception:
                    await consumer.close()
                    raise
            except ConnectionLost:
                if self._reconnecting is None and self._connection.is_open:
                    # A reconnection finished while this attempt waited,
                    # and skipped this server because it was resuming.
                    self._later(CHANNEL_RETRY_DELAY, self._resume_server, server)
                # Otherwise the reconnection resumes it.
                return
            except ChannelClosed as e:
                if e.reply_code in TERMINAL_REPLY_CODES:
                    server.fail(e)
                    return
                # For example 404 because the queue was deleted again since
                # it was declared: declare it again and retry.
                self.log.warn(
                    "server of {service} could not consume again: {error}; retrying",
                    service=server.service,
                    error=e,
                )
                self._forget_declarations(server.topology, None)
                if self._connection.is_open:
                    self._later(CHANNEL_RETRY_DELAY, self._resume_server, server)
                return
        finally:
            server._resuming = False
        self.log.info("server of {service} resumed", service=server.service)

    def _cancel_scheduled(self) -> None:
        for call in list(self._scheduled):
            if call.active():
                call.cancel()
        self._scheduled.clear()

    def _wait_connected(self) -> defer.Deferred[None]:
        """
        Return a Deferred that fires once the connection is open again.
        """
        d: defer.Deferred[None] = defer.Deferred()
        self._connected_waiters.append(d)
        return d

    def _closed_for_good(self, reason: Exception) -> None:
        self._final_reason = reason
        closed_waiters, self._closed_waiters = self._closed_waiters, []
        for closed in closed_waiters:
            closed.callback(reason)
        connected_waiters, self._connected_waiters = self._connected_waiters, []
        for connected in connected_waiters:
            connected.errback(reason)

    def when_closed(self) -> defer.Deferred[Exception]:
        """
        Return a Deferred that fires with a L{txass.errors.ConnectionLost}
        once the broker is closed for good: by L{close}, or when the
        connection is lost on a broker that does not reconnect.
        """
        if self._final_reason is not None:
            return defer.succeed(self._final_reason)
        d: defer.Deferred[Exception] = defer.Deferred()
        self._closed_waiters.append(d)
        return d

    def service(self, name: str) -> Service:
        """
        Return the service called C{name}.

        @raise txass.errors.InvalidName: if C{name} cannot name a service.
        """
        return Service(self, Topology.for_service(name))

    def rpc(
        self, service: str, *, timeout: float = DEFAULT_TIMEOUT, direct_reply_to: bool = True, codec: str = "json"
    ) -> RPCClient:
        """
        Return an RPC client of the service called C{service}, whose calls
        return Deferreds that fire with the results.

        RPC clients are cheap to create: all those on this connection share
        one channel and one reply destination.

        @param timeout: The default timeout of a call, in seconds.
        @param direct_reply_to: Whether replies come through RabbitMQ's
            direct reply-to, which declares no queue.  Otherwise, or when
            the broker does not offer it, replies go to an exclusive queue
            the broker deletes when the connection closes.
        @param codec: The body format of requests: C{"json"}, or
            C{"msgpack"} for a service that accepts it.
        @raise txass.errors.InvalidName: if C{service} cannot name a
            service.
        @raise ValueError: if C{timeout} is not a number of seconds greater
            than 0 and at most 1e9, or C{codec} is unknown.
        """
        topology = Topology.for_service(service)
        seconds = check_timeout(timeout)
        chosen = get_codec(codec)
        key = bool(direct_reply_to)
        caller = self._callers.get(key)
        if caller is None:
            caller = self._callers[key] = _Caller(self, direct_reply_to=key)
        return RPCClient(caller, topology, seconds, chosen)

    async def _open_channel(self, *, confirms: bool = False, wait: bool = False) -> AMQPChannel:
        """
        Open a channel on the current connection.

        @param wait: Whether to wait for the connection while reconnecting,
            rather than fail with L{ConnectionLost}.
        """
        # Servers still open channels while Broker.close() drains them, to
        # publish their last replies.
        if wait and (self._reconnecting is not None or self._will_reconnect()):
            await self._wait_connected()
        return await self._connection.channel(confirms=confirms)

    def _will_reconnect(self) -> bool:
        """
        Return whether the connection is lost and the broker is about to
        connect again.  Channels learn of the loss before the broker does,
        so code that runs when a channel closes can find the reconnection
        not yet started.
        """
        return (
            self._reconnects
            and not self._connection.is_open
            and self._closing is None
            and not self._close_requested
            and self._final_reason is None
        )

    def _reopening_channel(self) -> SharedResult[AMQPChannel]:
        """
        Return a confirm channel that is opened on first use and opened
        again on the next use after it closed.
        """

        async def open_channel() -> AMQPChannel:
            channel = await self._open_channel(confirms=True)
            channel.when_closed().addCallback(lambda _: shared.reset())
            return channel

        shared = SharedResult(open_channel)
        return shared

    async def _publisher(self, service: str) -> AMQPChannel:
        """
        Return the channel, with publisher confirms, that requests to
        C{service} are published on.  Each service has its own, so a
        channel error caused by one service (such as its exchange being
        deleted) does not fail the calls to another.
        """
        channel = self._publisher_channels.get(service)
        if channel is None:
            channel = self._publisher_channels[service] = self._reopening_channel()
        return await channel.get()

    @asynccontextmanager
    async def _declaring(self) -> AsyncIterator[AMQPChannel]:
        """
        Open a channel for declarations and close it afterwards.  A refused
        declaration closes only this channel, so the declarations of other
        services going on at the same time are not affected.
        """
        channel = await self._open_channel()
        try:
            yield channel
        finally:
            if channel.is_open:
                await channel.close()

    async def _declare_once(self, kind: str, name: str, declare: Callable[[], Awaitable[None]]) -> None:
        key = (kind, name)
        declaration = self._declarations.get(key)
        if declaration is None:
            declaration = self._declarations[key] = SharedResult(declare)
        await declaration.get()

    async def _declare_service(self, topology: Topology) -> None:
        """
        Declare the durable exchange and queue of a service and bind them,
        once per connection.  The declarations are idempotent, so clients
        and servers both make them: requests sent before any server ran
        wait in the queue.
        """

        async def declare() -> None:
            async with self._declaring() as channel:
                await channel.declare_exchange(topology.exchange, "direct", durable=True)
                await channel.declare_queue(topology.queue, durable=True)
                await channel.bind_queue(topology.queue, topology.exchange, topology.routing_key)
                await channel.declare_queue(topology.unfinished_queue, durable=True)

        await self._declare_once("service", topology.service, declare)

    def _forget_declarations(self, topology: Topology | None, queue: str | None) -> None:
        """
        Declare a service's exchange and queue, or a result queue, again on
        their next use, because they were deleted.
        """
        if topology is not None:
            self._declarations.pop(("service", topology.service), None)
        if queue is not None:
            self._declarations.pop(("queue", queue), None)

    async def _declare_server_queue(self, topology: Topology, queue: str, again: bool) -> None:
        """
        Declare a queue that a server of C{topology} publishes requests to
        (once per connection, or anew when C{again}): the service queue,
        its dead-letter queue, or one of its retry queues.
        """
        if queue in (topology.queue, topology.unfinished_queue):
            if again:
                self._forget_declarations(topology, None)
            await self._declare_service(topology)
            return
        if again:
            self._forget_declarations(None, queue)
        if queue == topology.dead_letter_queue:
            arguments = None
        else:
            milliseconds = int(queue.rpartition(".")[2])
            # A quorum queue dead-letters at least once: it keeps a request
            # until the service queue has confirmed it.  A classic queue
            # could lose it if the broker stopped at that moment.
            arguments = {
                "x-queue-type": "quorum",
                "x-message-ttl": milliseconds,
                # The broker deletes a retry queue left unused this long.  A
                # server declares it again before each copy it publishes,
                # so a copy always leaves it, after its delay, well before.
                "x-expires": milliseconds + RETRY_QUEUE_IDLE,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": topology.queue,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            }

        async def declare() -> None:
            async with self._declaring() as channel:
                await channel.declare_queue(queue, durable=True, arguments=arguments)

        await self._declare_once("queue", queue, declare)

    async def _declare_result_queue(self, queue: str, *, durable: bool) -> None:
        """
        Declare a client's result queue, once per connection: durable for a
        keyed client, exclusive to this connection otherwise.
        """

        async def declare() -> None:
            async with self._declaring() as channel:
                await channel.declare_queue(queue, durable=durable, exclusive=not durable)

        await self._declare_once("queue", queue, declare)

    def _react(self, topology: Topology, handler: Any, options: dict[str, Any]) -> defer.Deferred[Server]:
        """
        Start a server, and have L{close} wait for its start to end.
        """
        starting = defer.Deferred.fromCoroutine(self._start_server(topology, handler, options))
        if not starting.called:
            # Registered before the caller's callbacks, so that the wait in
            # close() never depends on what they do.
            ended = when_done(starting)
            self._starting_servers.add(ended)
            ended.addCallback(lambda _: self._starting_servers.discard(ended))
        return starting

    async def _start_server(self, topology: Topology, handler: Any, options: dict[str, Any]) -> Server:
        try:
            server = await self._start_server_once(topology, handler, options)
        except ChannelClosed as e:
            if e.reply_code != NOT_FOUND:
                raise
            # The service queue was deleted since this connection declared it.
            self._forget_declarations(topology, None)
            server = await self._start_server_once(topology, handler, options)
        if self._closing is not None:
            # Broker.close() ran while the server started.  The server may
            # have taken requests already, so it drains them like the
            # others, and close() waits for that before it closes the
            # connection.
            await server.stop()
            raise ConnectionLost("Broker.close() was called while the server was starting")
        return server

    async def _start_server_once(self, topology: Topology, handler: Any, options: dict[str, Any]) -> Server:
        dispatcher = make_dispatcher(handler)
        await self._declare_service(topology)
        consumer = await self._open_channel()
        # Each server publishes its replies on a confirm channel of its own,
        # so a channel error caused by a client or another server (such as
        # publishing to a deleted exchange) never stops its replies.
        publisher = self._reopening_channel()
        try:
            server = Server(
                topology,
                dispatcher,
                broker=self,
                consumer=consumer,
                publisher=publisher.get,
                declare_queue=lambda queue, again: self._declare_server_queue(topology, queue, again),
                reactor=self._reactor,
                **options,
            )
            await server.start()
        except Exception:
            await consumer.close()
            raise
        self._servers.add(server)

        def stopped(_: None) -> defer.Deferred[None]:
            self._servers.discard(server)
            return defer.Deferred.fromCoroutine(_close_shared(publisher))

        server.when_stopped().addCallback(stopped)
        return server

    def close(self) -> defer.Deferred[None]:
        """
        Stop every server started through this broker (letting requests in
        flight finish within each server's grace period), stop every
        client's result consumer, then close the connection.  A server
        still starting finishes its start first, since it may have taken
        requests already; its L{Service.react} then fails with
        L{txass.errors.ConnectionLost}.

        @return: A Deferred that fires with L{None} once the connection is
            closed; it never fails.
        """
        if self._closing is None:
            # Set before _close() runs, which cancels a reconnection that
            # must then see that the broker is closing.
            self._close_requested = True
            self._closing = defer.Deferred.fromCoroutine(self._close())
        return when_done(self._closing)

    async def _close(self) -> None:
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        if self._waiting is not None:
            self._waiting.cancel()
        if self._reconnecting is not None:
            await self._reconnecting
        self._cancel_scheduled()
        failed, self._connected_waiters = self._connected_waiters, []
        for waiter in failed:
            waiter.errback(ConnectionLost("Broker.close() was called"))
        # Each close waits for the broker at most a few seconds, so they run
        # side by side rather than add up.
        stops = [defer.Deferred.fromCoroutine(caller.close()) for caller in list(self._callers.values())]
        stops += [server.stop() for server in list(self._servers)]
        stops += list(self._starting_servers)
        stops += [client.stop() for client in list(self._clients)]
        if stops:
            await defer.DeferredList(stops, consumeErrors=True)
        try:
            await self._connection.close()
        except TxassError:
            pass
        self._closed_for_good(ConnectionLost("Broker.close() was called"))
        self.log.info("closed connection to {url}", url=self.address.safe_url())


async def _close_shared(shared: SharedResult[AMQPChannel]) -> None:
    channel = shared.current()
    if channel is not None:
        try:
            await channel.close()
        except TxassError:
            pass


class Service:
    """
    A service: a name on the broker; L{Broker.service} creates it.
    """

    def __init__(self, broker: Broker, topology: Topology) -> None:
        self.broker = broker
        self.topology = topology

    @property
    def name(self) -> str:
        return self.topology.service

    def __repr__(self) -> str:
        return f"<Service {self.name!r} on {self.broker!r}>"

    def react(
        self,
        handler: Any,
        *,
        prefetch: int = DEFAULT_PREFETCH,
        grace: float | None = DEFAULT_GRACE,
        send_tracebacks: bool = False,
        max_request_size: int = DEFAULT_MAX_REQUEST_SIZE,
        retry: Retry | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        codecs: Iterable[str] = ("json",),
        expose: Iterable[str] | None = None,
    ) -> defer.Deferred[Server]:
        """
        Serve this service's requests with C{handler}.

        A request naming method C{foo} with data C{x} calls C{foo(x)} on the
        handler: a class (a fresh instance per request), a module (its
        public functions), a mapping of names to callables, or any other
        object (one shared instance).  The return value, or the result of a
        returned Deferred or coroutine, is the reply.

        @param prefetch: The maximum number of unacknowledged requests this
            server takes at once, which bounds its concurrency.
        @param grace: Seconds that L{Server.stop} waits for requests in
            flight before requeueing them; L{None} waits forever.
        @param send_tracebacks: Whether error replies carry the remote
            traceback text.
        @param max_request_size: The maximum size of a request body in
            bytes.  A larger request gets a C{RequestTooLarge} error reply
            without being decoded.
        @param retry: What to do when the handler fails: L{None} replies
            with the error and acknowledges the request; a L{Retry} serves
            the request again after a delay, and after C{max_attempts}
            attempts moves it to the queue C{<service>.dead-letter} with
            its error in headers, and replies with the error.
        @param max_attempts: How many attempts a request gets in all.  A
            request whose delivery never finished (its server crashed or
            lost its connection) that many times, or that the handler
            resent that many times, goes to the dead-letter queue too,
            whatever C{retry} says.
        @param codecs: The names of the body formats this server accepts:
            C{"json"}, and C{"msgpack"} when the C{msgpack} package is
            installed.  A request in another content type gets an
            C{InvalidRequest} error reply.  Each reply uses the format of
            its request.
        @param expose: The names of the only methods that requests may
            call, or L{None} for every public method (or, when the handler
            marks methods with L{txass.expose}, every marked one).  A name
            that the handler could not serve raises
            L{txass.errors.InvalidHandler} here.
        @return: A Deferred that fires with the L{Server} once it consumes.
            It fails with L{txass.errors.ChannelClosed} when the broker
            refuses the declarations (for example a queue of that name
            exists with other arguments), or L{txass.errors.ConnectionLost}.
        """
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or not 1 <= prefetch <= 65535:
            raise ValueError(f"prefetch must be an integer from 1 to 65535, not {prefetch!r}")
        if grace is not None and not (isinstance(grace, (int, float)) and math.isfinite(grace) and grace >= 0):
            raise ValueError(f"grace must be a number of seconds >= 0 or None, not {grace!r}")
        if isinstance(max_request_size, bool) or not isinstance(max_request_size, int) or max_request_size < 1:
            raise ValueError(f"max_request_size must be a number of bytes >= 1, not {max_request_size!r}")
        if retry is not None and not isinstance(retry, Retry):
            raise TypeError(f"retry must be a txass.Retry or None, not {retry!r}")
        check_max_attempts(max_attempts)
        accepted = get_codecs(codecs)
        dispatcher = make_dispatcher(handler, expose=expose)
        options = {
            "codecs": accepted,
            "prefetch": prefetch,
            "grace": grace,
            "send_tracebacks": send_tracebacks,
            "max_request_size": max_request_size,
            "retry": retry,
            "max_attempts": max_attempts,
        }
        return self.broker._react(self.topology, dispatcher, options)

    def client(self, *, key: str | None = None, codec: str = "json") -> Client:
        """
        Return a client of this service.

        @param key: Names the client's durable result queue
            C{<service>.client.<key>}, where results wait while the client
            process is down.  Without a key, results go to an exclusive
            queue that the broker deletes when the connection closes.
        @param codec: The body format of requests: C{"json"}, or
            C{"msgpack"} for a service that accepts it.
        @raise txass.errors.InvalidName: if C{key} cannot be used.
        @raise ValueError: if C{codec} is unknown.
        """
        return Client(self.broker, self.topology, key, get_codec(codec))
