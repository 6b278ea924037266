"""
Helpers for the workers that run Twisted's reactor.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

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
