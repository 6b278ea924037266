"""
A handler that holds each request until the test releases it, for the
C{twistd ass} shutdown tests.

Its method C{hold} takes C{{"directory": D, "label": L}}.  It creates the
file C{D/L.started} on entry, so the test can tell that the request is in
flight, then waits without blocking the reactor until the file C{D/release}
exists.
A request with C{"terminate": true} also sends SIGTERM to the serving
process on entry, so that the stage stops at a known point.
It returns the label, the id of the serving process, whether the request
may have been served before, and which attempt this is.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from twisted.internet import reactor, task

import txass

RELEASE_FILE = "release"

# Seconds between checks for the release file.
POLL_INTERVAL = 0.05

# Seconds a request is held at most, so that a stage left running by a
# failed test still ends its requests.
MAX_HOLD = 20.0


def started_file(directory: str, label: str) -> str:
    """
    Return the path of the file that C{hold} creates for C{label} on entry.
    """
    return os.path.join(directory, f"{label}.started")


class Holder:
    """
    Hold every request until the release file appears.
    """

    async def hold(self, request: dict[str, Any]) -> dict[str, Any]:
        request_context = txass.current_request()
        directory = request["directory"]
        label = request["label"]
        with open(started_file(directory, label), "w"):
            pass
        if request.get("terminate"):
            os.kill(os.getpid(), signal.SIGTERM)

        release = os.path.join(directory, RELEASE_FILE)
        deadline = time.monotonic() + MAX_HOLD
        while not os.path.exists(release):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{release} did not appear within {MAX_HOLD:g} s")
            await task.deferLater(reactor, POLL_INTERVAL, lambda: None)

        return {
            "label": label,
            "pid": os.getpid(),
            "redelivered": request_context.redelivered,
            "attempt": request_context.attempt,
        }
