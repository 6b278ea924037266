"""
The reactor thread and the call bridge behind L{txass.blocking}.

A blocking operation starts in a thread other than the reactor's.  It hands
its work to the reactor thread with one C{reactor.callFromThread} and waits
on a L{concurrent.futures.Future} that the work's Deferred completes.
The first side to complete the future decides the outcome.  The reactor
thread completes it with the Deferred's result.  The waiting side completes
it with an error when it gives up, because its time limit passed,
C{close()} ran, the interpreter is exiting, or the waiting thread got
C{KeyboardInterrupt}.  A waiting thread that gives up cancels the Deferred
in the reactor thread.

The bridge uses the global reactor.  When that reactor does not run yet,
the bridge runs it in a daemon thread of its own, named C{txass-reactor},
and stops it when the interpreter exits.

Threads do not survive C{fork()}: a child process forked while the reactor
ran has no reactor thread.  A hook run in the child after C{fork()} marks
the connections inherited from the parent closed and makes every later
C{connect()} fail at once, instead of leaving each blocking operation to
wait for a reactor thread that is not there.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Generic, TypeVar

# The exit hook of concurrent.futures joins the worker threads of every
# ThreadPoolExecutor.  Importing the module here registers that hook before
# ours, and threading runs these hooks in reverse order, so ours first fails
# the calls that executor workers wait on.
import concurrent.futures.thread  # noqa: F401

from twisted.internet import defer
from twisted.internet.error import ReactorAlreadyRunning, ReactorNotRunning
from twisted.logger import Logger
from twisted.python import threadable
from twisted.python.failure import Failure

import txass
from txass._broker import Broker
from txass._connection import BrokerAddress, parse_url
from txass._rpc import RPCClient
from txass._util import wait_at_most
from txass.errors import CallTimeout, ConnectionLost, TxassError

T = TypeVar("T")

REACTOR_THREAD_NAME = "txass-reactor"

# Seconds a thread waits for an RPC reply beyond the call's own timeout.
# The reactor fails the call with CallTimeout when the timeout runs out, so
# the waiting thread gives up by itself only when the reactor thread is
# blocked or gone.
BACKSTOP_MARGIN = 2.0

# Seconds a thread waits for the reactor thread to run a short step, such
# as creating an RPC client.
STEP_TIMEOUT = 10.0

# Seconds the exit hook spends closing connections, and at least the
# seconds it then waits for the reactor thread it started to stop.
EXIT_CLOSE_TIMEOUT = 1.5
EXIT_STOP_TIMEOUT = 0.5

# Seconds the shutdown of the reactor waits for blocking brokers to close.
SHUTDOWN_CLOSE_TIMEOUT = 2.0

# Reasons for closing a connection, as shown in the ConnectionLost of a
# waiting call.
CLOSED_BY_USER = "BlockingBroker.close() was called"
EXITING = "the Python interpreter is exiting"
REACTOR_STOPPING = "the Twisted reactor is shutting down"
FORKED = (
    "this process was forked after txass.blocking connected; the connection stays with the parent "
    "process, and the reactor thread that served it does not survive fork()"
)


def bounded(seconds: float) -> float:
    """
    Return C{seconds} as a wait that locks, events and futures accept: at
    least 0 and at most C{threading.TIMEOUT_MAX}, about 292 years, above
    which they raise L{OverflowError}.
    """
    return min(max(0.0, seconds), threading.TIMEOUT_MAX)


class ReactorThreadError(TxassError, RuntimeError):
    """
    Raised when a blocking call cannot use the reactor thread.  Either it
    was made in the reactor thread itself, where waiting would block the
    reactor, or the reactor has stopped and cannot be restarted, or the
    process was forked while the reactor ran and so has no reactor thread.
    """


class Operation(Generic[T]):
    """
    One piece of work run in the reactor thread, and its outcome for the
    thread that waits on it.

    @ivar future: Completed once, with the work's result or exception, or
        with the error of a waiting side that gave up.
    @ivar lost: Makes the exception a waiting thread gets when the
        connection closes for the given reason before the work finished.
    """

    __slots__ = ("future", "deferred", "lost", "on_orphan")

    def __init__(self, lost: Callable[[str], Exception], on_orphan: Callable[[T], object] | None = None) -> None:
        self.future: Future[T] = Future()
        self.deferred: defer.Deferred[T] | None = None
        self.lost = lost
        # Called in the reactor thread with a result that no thread waits for
        # any more, such as a broker that connected after connect() timed out.
        self.on_orphan = on_orphan

    def start(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """
        Call C{function} and complete the future with its result, or with
        the result of the Deferred it returns.  Runs in the reactor thread.
        """
        if self.future.done():
            # The waiting side gave up before the reactor got here.
            return
        try:
            result = function(*args, **kwargs)
        except Exception as e:
            self.fail(e)
            return
        if isinstance(result, defer.Deferred):
            self.deferred = result
            result.addCallbacks(self._succeed, self._fail)
        else:
            self._succeed(result)

    def _succeed(self, result: T) -> None:
        try:
            self.future.set_result(result)
        except InvalidStateError:
            if self.on_orphan is not None:
                self.on_orphan(result)

    def _fail(self, failure: Failure) -> None:
        # Returning None consumes the failure, also when no thread waits for it.
        self.fail(failure.value if failure.value is not None else RuntimeError(failure.getErrorMessage()))

    def fail(self, error: BaseException) -> bool:
        """
        Complete the future with C{error}, from any thread.

        @return: Whether this completed it; L{False} when it was already
            complete.
        """
        try:
            self.future.set_exception(error)
        except InvalidStateError:
            return False
        return True

    def cancel(self) -> None:
        """
        Cancel the work's Deferred.  Runs in the reactor thread.
        """
        if self.deferred is not None:
            self.deferred.cancel()


class BridgedBroker:
    """
    The thread-safe side of one broker connection used from blocking code:
    the L{Broker}, which only the reactor thread touches, and the operations
    that threads wait on, which closing fails at once.

    @ivar closed: Why the connection was closed, or L{None} while it is
        open.
    """

    log = Logger()

    def __init__(self, bridge: Bridge, broker: Broker) -> None:
        self.bridge = bridge
        self.broker = broker
        self.address: BrokerAddress = broker.address
        self.closed: str | None = None
        self._lock = threading.Lock()
        self._waiting: set[Operation[Any]] = set()
        self._broker_closed = threading.Event()

    def __repr__(self) -> str:
        return f"<BridgedBroker {self.address.safe_url()}>"

    def run(
        self,
        what: str,
        function: Callable[..., Any],
        *args: Any,
        wait: float,
        timed_out: Callable[[], Exception],
        lost: Callable[[str], Exception],
        **kwargs: Any,
    ) -> Any:
        """
        Run C{function(*args, **kwargs)} in the reactor thread and return
        its result, or the result of the Deferred it returns.

        @param what: Names the operation in messages, such as C{"the call of
            echo.foo"}.
        @param wait: Seconds to wait before giving up with C{timed_out()}.
        @param lost: Makes the exception raised when the connection closes
            while this waits.
        @raise ConnectionLost: at once, if the connection is closed.
        """
        operation: Operation[Any] = Operation(lost)
        with self._lock:
            if self.closed is not None:
                raise ConnectionLost(f"cannot start {what}: the broker connection is closed ({self.closed})")
            self._waiting.add(operation)
        try:
            self.bridge.reactor.callFromThread(operation.start, function, *args, **kwargs)
            return self.bridge.wait(operation, what, wait, timed_out)
        finally:
            with self._lock:
                self._waiting.discard(operation)

    def call(self, client: RPCClient, method: str, data: Any, meta: dict[str, Any] | None, timeout: float) -> Any:
        """
        Call C{method} through C{client} and return the handler's result.
        """
        service = client.service

        def timed_out() -> Exception:
            return CallTimeout(service, method, timeout)

        def lost(reason: str) -> Exception:
            return ConnectionLost(
                f"{reason} while calling {service}.{method}; the request may or may not have been "
                f"served, and its reply is lost"
            )

        return self.run(
            f"the call of {service}.{method}",
            client.call,
            method,
            data,
            meta=meta,
            timeout=timeout,
            wait=timeout + BACKSTOP_MARGIN,
            timed_out=timed_out,
            lost=lost,
        )

    def begin_close(self, reason: str) -> bool:
        """
        Mark the connection closed and fail every operation that a thread
        waits on with C{ConnectionLost}, from any thread.

        @return: Whether this marked it; L{False} if it was closed before.
        """
        with self._lock:
            if self.closed is not None:
                return False
            self.closed = reason
            waiting = list(self._waiting)
            self._waiting.clear()
        for operation in waiting:
            operation.fail(operation.lost(reason))
        self.bridge.forget(self)
        return True

    def watch(self) -> None:
        """
        Close this when the broker is closed for good, as when a broker
        that does not reconnect loses its connection, so that the bridge
        stops tracking it and later operations fail at once.  Runs in the
        reactor thread.
        """
        self.broker.when_closed().addCallback(self._on_lost)

    def _on_lost(self, reason: Exception) -> None:
        # Does nothing when close() or the reactor's shutdown began first.
        if self.begin_close(str(reason)):
            self.close_broker()

    def inherited(self) -> None:
        """
        Mark this closed in a child process forked from the process that
        opened it.  Runs in the child right after C{fork()}, where neither
        the threads waiting on this nor the reactor thread exist.

        The parent still uses the connection, so the child must not close
        it: the socket is shared.
        """
        # A thread of the parent may have held the lock at fork().
        self._lock = threading.Lock()
        if self.closed is None:
            self.closed = FORKED
        self._waiting.clear()
        self._broker_closed = threading.Event()
        self._broker_closed.set()

    def close_broker(self) -> defer.Deferred[None]:
        """
        Close the L{Broker}.  Runs in the reactor thread.
        """
        d = self.broker.close()
        d.addBoth(lambda _: self._broker_closed.set())
        return d

    def start_closing(self) -> None:
        """
        Have the reactor thread close the L{Broker}, from another thread.
        """
        if self.bridge.reactor_runs():
            self.bridge.reactor.callFromThread(self.close_broker)
            return
        # Nothing can close the connection without the reactor.
        self.log.warn(
            "the Twisted reactor is not running, so the connection to {url} is left as it is",
            url=self.address.safe_url(),
        )
        self._broker_closed.set()

    def close(self, reason: str, timeout: float) -> None:
        """
        Fail the operations that threads wait on, then close the connection
        and wait for it to close, for at most C{timeout} seconds.  Called in
        a thread other than the reactor's, or in the reactor thread after
        the reactor stopped.
        """
        if self.begin_close(reason):
            self.start_closing()
        if self.bridge.forked:
            # A close the parent began cannot finish here.
            return
        if not self.wait_closed(timeout):
            self.log.warn(
                "the connection to {url} did not close within {timeout:g} s", url=self.address.safe_url(), timeout=timeout
            )

    def wait_closed(self, timeout: float) -> bool:
        """
        Wait until the L{Broker} has closed, for at most C{timeout} seconds.

        @return: Whether it closed in time.
        """
        return self._broker_closed.wait(bounded(timeout))


class Bridge:
    """
    The reactor the blocking API uses, the thread it may have started to run
    it, and the connections open through it.
    """

    log = Logger()

    def __init__(self) -> None:
        # Guards the sets of connections and connects.
        self._lock = threading.Lock()
        # Makes threads that start the reactor at once wait for the first.
        # The reactor thread never takes it, since its holder waits for the
        # reactor thread.
        self._start_lock = threading.Lock()
        self._reactor: Any = None
        self._thread: threading.Thread | None = None
        self._owns_reactor = False
        self._start_error: Exception | None = None
        self._ready = False
        self._trigger_added = False
        self._hook_registered = False
        self._exiting = False
        self._shutting_down = False
        self._brokers: set[BridgedBroker] = set()
        self._connecting: set[Operation[Any]] = set()
        # Whether this process was forked from one whose reactor ran, so
        # that it has no reactor thread.
        self.forked = False
        # The parent process this one was forked from before the reactor
        # ran, or None.
        self._forked_from: int | None = None

    @property
    def reactor(self) -> Any:
        """
        The global reactor.

        Importing L{txass} already installs the default reactor, because
        pika's Twisted adapter imports C{twisted.internet.reactor}; a
        program that wants another reactor, such as the asyncio reactor,
        installs it before it imports L{txass}.  The reactor is looked up
        here on first use only so that this module does not import it
        itself.
        """
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def reactor_runs(self) -> bool:
        """
        Return whether the reactor runs and will run the work handed to it.
        """
        return not self.forked and bool(self.reactor.running) and not self._shutting_down

    def check_thread(self, what: str) -> None:
        """
        Check that the caller is not the reactor thread, where C{what} would
        block the reactor.

        @raise ReactorThreadError: if the caller is the reactor thread.
        """
        if not threadable.isInIOThread():
            return
        if self.reactor.running:
            raise ReactorThreadError(
                f"{what} blocks, so it cannot be called in the reactor thread: use the Deferred API "
                f"there (txass.connect, Broker.rpc(...).call(...)), or call {what} in another thread, "
                f"for example with twisted.internet.threads.deferToThread"
            )
        raise ReactorThreadError(
            f"{what} cannot be called in this thread: the Twisted reactor ran in it and has stopped, "
            f"and a stopped reactor cannot be restarted; call {what} before the reactor runs, or in "
            f"another thread while it runs"
        )

    def wait(self, operation: Operation[T], what: str, seconds: float, timed_out: Callable[[], Exception]) -> T:
        """
        Wait for C{operation} for at most C{seconds}, then give up on it with
        C{timed_out()} and cancel it in the reactor thread.

        @return: The operation's result.
        @raise Exception: The operation's exception.
        """
        future = operation.future
        try:
            return future.result(timeout=bounded(seconds))
        except FutureTimeout:
            # Either the wait timed out, or the operation failed with a
            # TimeoutError of its own, such as CallTimeout.  Only in the
            # second case is the future done.
            gave_up = not future.done()
        except BaseException:
            if not future.done():
                # Interrupted (KeyboardInterrupt) while waiting: the outcome
                # no longer matters, but the Deferred must not linger.
                operation.fail(defer.CancelledError(f"{what} was interrupted"))
                self.reactor.callFromThread(operation.cancel)
            raise
        if gave_up:
            error = timed_out()
            if operation.fail(error):
                self.log.warn(
                    "gave up waiting for {what} after {seconds:g} s, so it is cancelled in the reactor "
                    "thread; if a timeout of the operation should have ended it sooner, the reactor "
                    "thread is blocked or stopped",
                    what=what,
                    seconds=seconds,
                )
                self.reactor.callFromThread(operation.cancel)
                raise error
        # The outcome arrived just as the wait timed out, or is an exception
        # that is a TimeoutError.
        return future.result()

    def connect(self, url: str | None, timeout: float, *, reconnect: bool = True) -> BridgedBroker:
        """
        Connect through L{txass.connect} in the reactor thread, starting the
        reactor first if needed, and wait at most C{timeout} seconds.

        @param reconnect: Whether the broker connects again after it lost
            the connection, as for L{txass.connect}.
        """
        address = parse_url(url)
        deadline = time.monotonic() + timeout
        reactor = self.ensure_running(deadline)

        def lost(reason: str) -> Exception:
            return address.connection_failed(f"the connection was abandoned because {reason}")

        def timed_out() -> Exception:
            return address.connection_failed(f"not connected within {timeout:g} s")

        def close_orphan(broker: Broker) -> None:
            self.log.info(
                "closing the connection to {url}, which opened after its connect() gave up",
                url=address.safe_url(),
            )
            broker.close()

        operation: Operation[Broker] = Operation(lost, on_orphan=close_orphan)
        with self._lock:
            if self._exiting:
                raise lost(EXITING)
            self._connecting.add(operation)
        try:
            reactor.callFromThread(operation.start, txass.connect, url, reconnect=reconnect)
            broker = self.wait(operation, f"the connection to {address.safe_url()}", deadline - time.monotonic(), timed_out)
        finally:
            with self._lock:
                self._connecting.discard(operation)

        bridged = BridgedBroker(self, broker)
        with self._lock:
            exiting = self._exiting
            if not exiting:
                self._brokers.add(bridged)
        if exiting:
            # The exit hook ran while this connected, and did not see it.
            reactor.callFromThread(broker.close)
            raise lost(EXITING)
        reactor.callFromThread(bridged.watch)
        return bridged

    def forget(self, bridged: BridgedBroker) -> None:
        with self._lock:
            self._brokers.discard(bridged)

    def ensure_running(self, deadline: float) -> Any:
        """
        Make sure the global reactor runs, starting it in a daemon thread if
        nothing runs it yet, and return it.

        @param deadline: The C{time.monotonic()} by which it must run.
        @raise ReactorThreadError: if it does not run by C{deadline}, or has
            stopped and cannot be restarted.
        """
        if self.forked:
            raise ReactorThreadError(self._forked_message())
        if not self._start_lock.acquire(timeout=bounded(deadline - time.monotonic())):
            raise ReactorThreadError("timed out waiting for another thread that starts the Twisted reactor")
        try:
            return self._ensure_running(deadline)
        finally:
            self._start_lock.release()

    def _ensure_running(self, deadline: float) -> Any:
        if self._exiting:
            raise ReactorThreadError(f"txass.blocking cannot be used any more: {EXITING}")
        if self._shutting_down:
            raise ReactorThreadError(self._stopped_message())
        reactor = self.reactor
        if self._ready and reactor.running:
            return reactor
        self._register_exit_hook()
        running = threading.Event()
        # The thread that runs the reactor runs this, even a thread that
        # starts it between the check below and our own start.
        reactor.callFromThread(self._on_running, running)
        if not reactor.running:
            self._start_error = None
            thread = threading.Thread(
                target=self._run_reactor, args=(reactor, running), name=REACTOR_THREAD_NAME, daemon=True
            )
            self._thread = thread
            thread.start()
        if not running.wait(bounded(deadline - time.monotonic())):
            raise ReactorThreadError(
                "the Twisted reactor did not start running in time; if another thread runs it, "
                "that thread is blocked"
            )
        if self._start_error is not None:
            raise ReactorThreadError(self._stopped_message()) from self._start_error
        self._warn_if_shared()
        return reactor

    @staticmethod
    def _forked_message() -> str:
        return (
            "txass.blocking cannot connect in this process: it was forked after txass.blocking started "
            "using the Twisted reactor, and the reactor thread does not survive fork(); use "
            "txass.blocking in a child process only if it was not started before fork(), or start "
            "child processes with the spawn or forkserver method of multiprocessing, or load the "
            "application in each worker process after fork() (gunicorn without --preload, uWSGI "
            "with lazy-apps)"
        )

    def _warn_if_shared(self) -> None:
        """
        Warn once if this process was forked from a parent that still runs
        after it had created the reactor.
        """
        parent, self._forked_from = self._forked_from, None
        if parent is None or os.getppid() != parent:
            return
        self.log.warn(
            "the Twisted reactor of this process was created before process {parent} forked it, so "
            "it shares its poller and its waker with that process and the other processes forked "
            "from it; if more than one of them runs the reactor, they take each other's events, and "
            "connections fail or stall.  Import txass only after fork(), or start child processes "
            "with the spawn or forkserver method, or load the application in each worker process "
            "after fork()",
            parent=parent,
        )

    @staticmethod
    def _stopped_message() -> str:
        return (
            "the Twisted reactor has stopped, or is shutting down, and cannot be restarted, so "
            "txass.blocking cannot use it; keep the reactor running while blocking calls are made, "
            "or let txass.blocking start it"
        )

    def _run_reactor(self, reactor: Any, running: threading.Event) -> None:
        """
        Run the reactor in this thread until it stops.
        """
        try:
            reactor.run(installSignalHandlers=False)
        except ReactorAlreadyRunning:
            # Another thread started it after ensure_running() looked; that
            # thread runs _on_running.
            self.log.info("the Twisted reactor was started by another thread; using that one")
            return
        except Exception as e:
            # Most likely ReactorNotRestartable: it ran and stopped before.
            self._start_error = e
            running.set()
            return
        self.log.info("the Twisted reactor in thread {thread} stopped", thread=threading.current_thread().name)

    def _on_running(self, running: threading.Event) -> None:
        """
        Note that the reactor runs.  Runs in the reactor thread.
        """
        if not self._trigger_added:
            self.reactor.addSystemEventTrigger("before", "shutdown", self._on_shutdown)
            self._trigger_added = True
        if threading.current_thread() is self._thread and not self._owns_reactor:
            self._owns_reactor = True
            self.log.info("started the Twisted reactor in thread {thread}", thread=REACTOR_THREAD_NAME)
        self._ready = True
        running.set()

    def _on_shutdown(self) -> defer.Deferred[bool] | None:
        """
        Close every connection before the reactor stops, so that no thread
        waits for a reactor that is gone.  Runs in the reactor thread.
        """
        self._shutting_down = True
        brokers = self._take_open(REACTOR_STOPPING)
        closes = [bridged.close_broker() for bridged in brokers if bridged.begin_close(REACTOR_STOPPING)]
        if not closes:
            return None
        self.log.info("closing {count} blocking broker connections before the reactor stops", count=len(closes))
        return defer.Deferred.fromCoroutine(
            wait_at_most(defer.DeferredList(closes, consumeErrors=True), SHUTDOWN_CLOSE_TIMEOUT, self.reactor)
        )

    def _take_open(self, reason: str) -> list[BridgedBroker]:
        """
        Fail the connects that threads wait on with C{reason}, and return
        the open connections.
        """
        with self._lock:
            brokers = list(self._brokers)
            connecting = list(self._connecting)
            self._connecting.clear()
        for operation in connecting:
            operation.fail(operation.lost(reason))
        return brokers

    def after_fork_in_child(self) -> None:
        """
        Leave the state of the parent process behind.  Runs in a child
        process right after C{fork()}, in its only thread.
        """
        # Threads of the parent may have held these locks at fork(), and
        # none of them will release them here.
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        # No thread of this process waits for these connects.
        self._connecting.clear()
        brokers = list(self._brokers)
        self._brokers.clear()
        for bridged in brokers:
            bridged.inherited()
        # Installing a reactor puts it in place of this module.  Looking it up
        # does not install one in a child of a program that has none.
        reactor = sys.modules.get("twisted.internet.reactor")
        if self._ready or self._thread is not None or bool(getattr(reactor, "running", False)):
            self.forked = True
        elif reactor is not None:
            # NOTE: the reactor created before fork() keeps the poller and
            # waker it shares with the parent; Twisted offers no way to renew
            # them, so the bridge can only warn when it first uses it.
            self._forked_from = os.getppid()

    def _register_exit_hook(self) -> None:
        if self._hook_registered:
            return
        # threading runs the hooks given to _register_atexit before it joins
        # the threads that are not daemons; atexit runs its hooks after.
        register: Callable[[Callable[[], None]], None] | None = getattr(threading, "_register_atexit", None)
        try:
            if register is None:
                raise RuntimeError("threading._register_atexit is missing")
            register(self._at_exit)
        except RuntimeError:
            # Missing, or the interpreter already runs these hooks.
            atexit.register(self._at_exit)
        self._hook_registered = True

    def _at_exit(self) -> None:
        """
        Fail every blocking call and connect that waits, close every
        connection, then stop the reactor if this bridge started it; all
        within about two seconds.
        """
        start = time.monotonic()
        with self._lock:
            self._exiting = True
        if self._reactor is None or self.forked:
            # No reactor thread to wait for.
            return
        brokers = self._take_open(EXITING)
        closing = [bridged for bridged in brokers if bridged.begin_close(EXITING)]
        if closing:
            self.log.info("closing {count} blocking broker connections at interpreter exit", count=len(closing))
        for bridged in closing:
            bridged.start_closing()
        # A stopped reactor thread, such as the main thread after
        # reactor.run() returned, cannot close anything, nor be waited for.
        if self.reactor_runs() and not threadable.isInIOThread():
            for bridged in closing:
                if not bridged.wait_closed(start + EXIT_CLOSE_TIMEOUT - time.monotonic()):
                    self.log.warn("the connection to {url} did not close at interpreter exit", url=bridged.address.safe_url())
                    break

        thread = self._thread
        if self._owns_reactor and thread is not None and thread.is_alive():
            self.reactor.callFromThread(self._stop_reactor)
            thread.join(bounded(max(EXIT_STOP_TIMEOUT, start + EXIT_CLOSE_TIMEOUT + EXIT_STOP_TIMEOUT - time.monotonic())))
            if thread.is_alive():
                self.log.warn("the Twisted reactor in thread {thread} did not stop at interpreter exit", thread=thread.name)

    def _stop_reactor(self) -> None:
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass


BRIDGE = Bridge()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=BRIDGE.after_fork_in_child)
