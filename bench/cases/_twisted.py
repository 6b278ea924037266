"""
Helpers for the workers that run Twisted's reactor.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from benchkit.rounds import Deadline, RoundLog, RoundTimeout, shared_clock

# How many publishes wait for the broker's confirm at once, in the engine
# floor, the cast workload and the backlog fill.  It bounds the publisher's
# memory the way txass bounds unconfirmed RPC requests (1000 per connection).
PUBLISH_WINDOW = 1000


class Window:
    """
    Keeps at most C{size} Deferreds in flight, and collects their failures.
    """

    def __init__(self, size: int = PUBLISH_WINDOW) -> None:
        self.size = size
        self._semaphore = defer.DeferredSemaphore(size)
        self.failures: list[Failure] = []

    async def acquire(self) -> None:
        """
        Wait until fewer than C{size} Deferreds are in flight.
        """
        await self._semaphore.acquire()

    def track(self, d: defer.Deferred[Any]) -> None:
        """
        Count C{d} in flight until it fires; call after L{acquire}.
        """

        def settled(result: object) -> None:
            if isinstance(result, Failure):
                self.failures.append(result)
            self._semaphore.release()

        d.addBoth(settled)

    async def drain(self) -> None:
        """
        Wait until every tracked Deferred has fired, then raise the first
        failure, if any.
        """
        for _ in range(self.size):
            await self._semaphore.acquire()
        for _ in range(self.size):
            self._semaphore.release()
        if self.failures:
            self.failures[0].raiseException()


class ServerReports:
    """
    The C{handled} events of the server process, which the driver copies to
    this worker's standard input as JSON lines.

    A daemon thread reads standard input, so that a worker stopped while it
    waits for a report does not hang at exit on a blocked read.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._lines: defer.DeferredQueue[str | None] = defer.DeferredQueue()
        self._reader = threading.Thread(target=self._read, name="read-server-reports", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in sys.stdin:
            self._reactor.callFromThread(self._lines.put, line)
        self._reactor.callFromThread(self._lines.put, None)

    async def _next(self, expected: str, timeout: float) -> dict[str, Any]:
        """
        Return the next JSON line of standard input.

        @raise RoundTimeout: No line came within C{timeout} seconds.
        @raise RuntimeError: Standard input ended first.
        """
        waiting = self._lines.get()
        timer = self._reactor.callLater(timeout, waiting.cancel)
        try:
            line = await waiting
        except defer.CancelledError:
            raise RoundTimeout(f"{expected} did not come within {timeout:.1f} s") from None
        finally:
            if timer.active():
                timer.cancel()
        if line is None:
            raise RuntimeError(f"standard input ended before {expected}")
        message: dict[str, Any] = json.loads(line)
        return message

    async def handled_at(self, expected: int, timeout: float) -> float:
        """
        Wait for the report that the server has handled C{expected} requests
        in all, and return its L{shared_clock} time of the last one.

        @raise RoundTimeout: No report came within C{timeout} seconds.
        @raise RuntimeError: Standard input ended, or the report counts
            another number of requests.
        """
        report = await self._next(f"the report of {expected} requests handled", timeout)
        if report.get("handled") != expected:
            raise RuntimeError(f"expected a report of {expected} requests handled, received {report}")
        return float(report["at"])

    async def turn(self, index: int, timeout: float) -> None:
        """
        Wait for the driver's line that starts round C{index} of a paced
        worker.

        @raise RoundTimeout: No line came within C{timeout} seconds.
        @raise RuntimeError: Standard input ended, or the line is not a turn.
        """
        message = await self._next(f"the turn of round {index + 1}", timeout)
        if "turn" not in message:
            raise RuntimeError(f"expected the turn of round {index + 1}, received {message}")


async def end_to_end_rounds(
    reactor: Any, log: RoundLog, count: int, deadline: Deadline, publish: Callable[[], Awaitable[None]]
) -> None:
    """
    Run every round of an end-to-end case, whose server runs in another
    process and reports each C{count} requests it has handled.

    C{publish} sends C{count} messages and returns once the broker has
    confirmed them all.  A round reports C{requests_per_s}, from the first
    publish to the server's time of handling the last message, and
    C{confirmed_per_s}, to the last confirm.  The next round starts once
    the server has reported, so rounds do not overlap.

    A paced log takes its turns from the same standard input as the
    reports, so the rounds are counted here rather than by
    L{RoundLog.indexes}, which would read standard input itself.
    """
    reports = ServerReports(reactor)
    for index in range(log.warmup + log.rounds):
        if log.paced:
            await reports.turn(index, deadline.remaining())
        started = shared_clock()
        await publish()
        confirmed = shared_clock()
        handled = await reports.handled_at((index + 1) * count, deadline.remaining())
        log.record(
            "",
            index,
            {
                "requests_per_s": count / (handled - started),
                "confirmed_per_s": count / (confirmed - started),
            },
        )
