"""
Blocking RPC calls for code that runs outside the reactor, such as a web
view, a script or a worker thread::

    import txass.blocking

    with txass.blocking.connect("amqp://guest:guest@localhost:5672/%2F") as broker:
        echo = broker.rpc("echo")
        print(echo.call("foo", 42))

Each call hands its work to the reactor thread and waits for the outcome,
so many threads can call at once through one L{BlockingBroker}.  When the
global reactor already runs, for example in a thread of the application,
the calls use it.  Otherwise the first L{connect} runs it in a daemon
thread named C{txass-reactor}.  Start your own reactor thread, if you have
one, and wait until it runs before the first L{connect}.

A L{BlockingBroker} connects again after its connection is lost, as a
L{txass.Broker} does, unless L{connect} was given C{reconnect=False}.

Calls made in the reactor thread raise L{ReactorThreadError}, because
waiting there would stop the reactor; use the Deferred API (L{txass.connect},
L{txass.Broker.rpc}) in reactor code.

When the interpreter exits, before it joins the threads that are not
daemons, every open L{BlockingBroker} is closed, which makes the calls still
waiting raise L{txass.ConnectionLost}, and the reactor thread started here
is stopped.  This takes about two seconds at most.

Importing this module, like importing L{txass}, installs Twisted's default
reactor unless a reactor is installed already.  A program that wants
another reactor installs it before it imports L{txass}.

The reactor thread does not survive C{fork()}.  In a process forked after
this module connected, or while the reactor ran, calls on the inherited
connections raise L{txass.ConnectionLost} and L{connect} raises
L{ReactorThreadError}, at once.  Use this module in forked processes only
if it was not used before C{fork()}.  Import L{txass} only after C{fork()}
when more than one of these processes will use it, since the reactor
installed at import shares its poller and waker with every process forked
afterwards.
The spawn and forkserver start methods of L{multiprocessing}, and loading
the application in each worker process (gunicorn without C{--preload},
uWSGI with C{lazy-apps}), avoid both problems.

Timeouts of calls and connects are at most 10**9 seconds.  Other waits
longer than C{threading.TIMEOUT_MAX}, about 292 years, such as a huge
timeout given to L{BlockingBroker.close}, are shortened to it.
"""

from __future__ import annotations

from typing import Any

from txass._bridge import BRIDGE, CLOSED_BY_USER, STEP_TIMEOUT, BridgedBroker, ReactorThreadError
from txass._connection import BrokerAddress
from txass._envelope import get_codec
from txass._rpc import DEFAULT_TIMEOUT, RPCClient, check_timeout
from txass.errors import ConnectionLost

__all__ = ["connect", "BlockingBroker", "BlockingRPCClient", "ReactorThreadError"]

# Seconds close() waits for the connection to close.
CLOSE_TIMEOUT = 10.0


def connect(url: str | None = None, *, timeout: float = 30.0, reconnect: bool = True) -> BlockingBroker:
    """
    Connect to a RabbitMQ broker and wait until the connection is open.

    The first call starts the global reactor in a daemon thread unless it
    already runs.

    @param url: An AMQP URI, as for L{txass.connect}; without it,
        C{$TXASS_BROKER_URL} is used, or else L{txass.DEFAULT_URL}.
    @param timeout: Seconds to wait at most, including the start of the
        reactor.
    @param reconnect: Whether the broker connects again, with exponential
        backoff and jitter, when the connection is lost after it was open.
        Calls made in the meantime wait for the connection within their
        timeout.  Without it, a lost connection stays closed: calls raise
        L{txass.ConnectionLost} at once, and only the L{BlockingBroker}
        object remains.
    @return: The open connection.
    @raise txass.ConnectionFailed: when the connection cannot be opened
        within C{timeout}, or as L{txass.AuthenticationFailed} or
        L{txass.VhostNotFound}, as L{txass.connect} fails.
    @raise txass.InvalidURL: if C{url} is not a usable AMQP URI.
    @raise ReactorThreadError: if called in the reactor thread, if the
        reactor has stopped and cannot be restarted, or if this process
        was forked while the reactor ran.
    @raise ValueError: if C{timeout} is not a number greater than 0 and at
        most 10**9.
    """
    BRIDGE.check_thread("txass.blocking.connect()")
    seconds = check_timeout(timeout)
    return BlockingBroker(BRIDGE.connect(url, seconds, reconnect=bool(reconnect)))


class BlockingBroker:
    """
    A connection to a RabbitMQ broker for blocking code; L{connect} creates
    it.  Any thread but the reactor's may use it, and many at once.

    Use it as a context manager to close it on exit.

    @ivar address: Where it is connected; C{address.safe_url()} shows it
        without the password.
    """

    def __init__(self, bridged: BridgedBroker) -> None:
        self._bridged = bridged
        self.address: BrokerAddress = bridged.address

    def __repr__(self) -> str:
        return f"<BlockingBroker {self.address.safe_url()}>"

    def __enter__(self) -> BlockingBroker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        """
        Whether the connection is open and L{close} was not called;
        L{False} while the broker connects again.
        """
        return self._bridged.closed is None and self._bridged.broker.is_open

    def rpc(
        self, service: str, *, timeout: float = DEFAULT_TIMEOUT, direct_reply_to: bool = True, codec: str = "json"
    ) -> BlockingRPCClient:
        """
        Return an RPC client of the service called C{service}, whose calls
        wait for the results; see L{txass.Broker.rpc}.

        @param timeout: The default timeout of a call, in seconds.
        @param direct_reply_to: Whether replies come through RabbitMQ's
            direct reply-to.
        @param codec: The body format of requests, C{"json"} or
            C{"msgpack"}.
        @raise txass.errors.InvalidName: if C{service} cannot name a
            service.
        @raise ValueError: if C{timeout} is not a number greater than 0 and
            at most 10**9, or C{codec} is unknown.
        @raise txass.ConnectionLost: if the connection is closed, or if
            this process was forked after it opened.
        @raise ReactorThreadError: if called in the reactor thread, or if
            the reactor thread does not respond within 10 seconds.
        """
        BRIDGE.check_thread("BlockingBroker.rpc()")
        seconds = check_timeout(timeout)
        get_codec(codec)

        def timed_out() -> Exception:
            return ReactorThreadError(
                f"the reactor thread did not create the RPC client of {service!r} within "
                f"{STEP_TIMEOUT:g} s; it is blocked or stopped"
            )

        def lost(reason: str) -> Exception:
            return ConnectionLost(f"{reason} while creating the RPC client of {service!r}")

        client: RPCClient = self._bridged.run(
            f"the creation of the RPC client of {service!r}",
            self._bridged.broker.rpc,
            service,
            timeout=seconds,
            direct_reply_to=direct_reply_to,
            codec=codec,
            wait=STEP_TIMEOUT,
            timed_out=timed_out,
            lost=lost,
        )
        return BlockingRPCClient(self._bridged, client)

    def close(self, *, timeout: float = CLOSE_TIMEOUT) -> None:
        """
        Close the connection.  Calls still waiting raise
        L{txass.ConnectionLost} at once, and so do calls made later.

        Closing again does nothing more, and waits as the first close does.
        In a process forked after the connection opened, this only marks it
        closed here: the parent process keeps using it.

        @param timeout: Seconds to wait at most for the connection to close;
            a timeout above C{threading.TIMEOUT_MAX} waits that long, and
            one of 0 or less does not wait.
        @raise ReactorThreadError: if called in the reactor thread while the
            reactor runs.
        """
        if BRIDGE.reactor_runs():
            BRIDGE.check_thread("BlockingBroker.close()")
        self._bridged.close(CLOSED_BY_USER, timeout)


class BlockingRPCClient:
    """
    A caller of one service whose calls wait for the results;
    L{BlockingBroker.rpc} creates it.  Any thread but the reactor's may use
    it, and many at once.

    @ivar timeout: The timeout of a call that does not give its own, in
        seconds.
    """

    def __init__(self, bridged: BridgedBroker, client: RPCClient) -> None:
        self._bridged = bridged
        self._client = client
        self.timeout = client.timeout

    @property
    def service(self) -> str:
        return self._client.service

    def __repr__(self) -> str:
        return f"<BlockingRPCClient of {self.service!r} on {self._bridged.address.safe_url()}>"

    def call(
        self,
        method: str,
        data: Any = None,
        *,
        meta: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """
        Call C{method} of the service with C{data} and wait for the result;
        see L{txass.RPCClient.call}.

        The reactor fails the call when its timeout runs out.  If the
        reactor thread is blocked, this thread still stops waiting 2 seconds
        after the timeout, raises L{txass.CallTimeout} and cancels the call.

        @param meta: A dict of JSON values passed to the handler with the
            request.
        @param timeout: Seconds to wait for the reply; this client's
            C{timeout} when not given.
        @return: The handler's result.
        @raise txass.RemoteError: when the handler raised.
        @raise txass.CallTimeout: when no reply came in time.
        @raise txass.ServiceNotFound: when the broker has no queue for the
            service.
        @raise txass.EncodingError: when C{data} or C{meta} cannot be
            encoded as JSON.
        @raise txass.ConnectionLost: when the connection closed, or
            L{BlockingBroker.close} was called, before the reply came; or at
            once, when the connection is closed or this process was forked
            after it opened.
        @raise txass.InvalidReply: when the reply is not a txass reply.
        @raise ReactorThreadError: if called in the reactor thread.
        @raise ValueError: if C{timeout} is not a number greater than 0 and
            at most 10**9.
        """
        BRIDGE.check_thread("BlockingRPCClient.call()")
        seconds = self.timeout if timeout is None else check_timeout(timeout)
        return self._bridged.call(self._client, method, data, meta, seconds)
