"""
The handler of the stage processes in the fault test (tests.test_chaos).

Its method C{echo} takes C{{"n": N}} and returns C{{"n": N, "pid": P}},
where P is the id of the serving process.  It replies after a random delay
of 0 to 5 ms without blocking the reactor, so that several requests are in
flight in each stage when a fault hits.
"""

from __future__ import annotations

import os
import random
from typing import Any

from twisted.internet import defer, task
from twisted.internet import reactor as global_reactor

# The reactor's interfaces have no type information mypy can use.
reactor: Any = global_reactor

# The maximum delay before the reply, in seconds.
MAX_DELAY = 0.005


class Handler:
    def echo(self, data: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
        number = data["n"]
        reply: defer.Deferred[dict[str, Any]] = task.deferLater(
            reactor, random.uniform(0, MAX_DELAY), lambda: {"n": number, "pid": os.getpid()}
        )
        return reply
