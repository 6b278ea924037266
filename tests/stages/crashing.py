"""
A handler whose C{crash} method ends its process at once, as a crash in
native code would: no reply, no acknowledgement, no cleanup.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor, task

import txass

# The exit status of a process that crash() ended.
CRASH_STATUS = 3


class Crasher:
    def crash(self, value: Any) -> None:
        os._exit(CRASH_STATUS)

    def attempt(self, value: Any) -> int:
        return txass.current_request().attempt

    async def slow(self, value: Any) -> dict[str, Any]:
        await task.deferLater(reactor, 0.05, lambda: None)
        return {"value": value, "attempt": txass.current_request().attempt}
