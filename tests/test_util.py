"""
Tests of the shared asynchronous helpers.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from txass._util import SharedResult


class SharedResultTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.runs = 0
        self.pending: defer.Deferred[str] = defer.Deferred()

        async def compute() -> str:
            self.runs += 1
            return await self.pending

        self.shared = SharedResult(compute)

    def get(self) -> defer.Deferred[str]:
        return defer.Deferred.fromCoroutine(self.shared.get())

    def test_one_run_for_concurrent_callers(self) -> None:
        """
        When several callers ask while the value is computed, then the
        function runs once and all receive its value.
        """
        first, second = self.get(), self.get()
        self.pending.callback("channel")
        self.assertEqual(self.successResultOf(first), "channel")
        self.assertEqual(self.successResultOf(second), "channel")
        self.assertEqual(self.successResultOf(self.get()), "channel")
        self.assertEqual(self.runs, 1)

    def test_callers_resume_in_order(self) -> None:
        """
        When the value arrives, then callers resume in the order they asked,
        the first one first.
        """
        order: list[int] = []
        for number in range(3):
            self.get().addCallback(lambda _, number=number: order.append(number))
        self.pending.callback("channel")
        self.assertEqual(order, [0, 1, 2])

    def test_failure_retried(self) -> None:
        """
        When the function fails, then every waiting caller gets the error
        and the next call runs it again.
        """
        first, second = self.get(), self.get()
        self.pending.errback(ValueError("no channel"))
        self.failureResultOf(first, ValueError)
        self.failureResultOf(second, ValueError)
        self.pending = defer.Deferred()
        third = self.get()
        self.pending.callback("channel")
        self.assertEqual(self.successResultOf(third), "channel")
        self.assertEqual(self.runs, 2)

    def test_reset(self) -> None:
        """
        When the value is reset, then the next call computes it again.
        """
        self.pending.callback("old")
        self.successResultOf(self.get())
        self.shared.reset()
        self.pending = defer.Deferred()
        again = self.get()
        self.pending.callback("new")
        self.assertEqual(self.successResultOf(again), "new")
