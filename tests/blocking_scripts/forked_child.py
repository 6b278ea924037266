"""
Fork after txass.blocking connected, to show that the child process learns
at once that it cannot use the reactor thread of its parent, while the
parent keeps working.

Usage: python forked_child.py SERVICE [close]

The parent connects and calls C{foo(1)} of SERVICE, then forks.  The child
calls C{foo} through the inherited client, creates an RPC client on the
inherited connection and connects anew; with C{close}, it then closes the
inherited connection, which otherwise stays open for the exit hook.  For
each step it prints one JSON object: the step, the name of the
exception raised or L{None}, its message and the seconds the step took.
Then it prints C{{"step": "return", "at": T}} with the C{time.monotonic()}
at which its main module returns.  The parent waits for the child, prints
C{{"step": "parent", "code": CODE, "ended": T}} with the child's exit code
and the C{time.monotonic()} at which the child had ended, then calls
C{foo(2)} and prints the result as JSON.
"""

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import txass.blocking

service, close = sys.argv[1], sys.argv[2:] == ["close"]
broker = txass.blocking.connect(timeout=15)
client = broker.rpc(service)
client.call("foo", 1, timeout=15)


def step(name: str, function: Callable[[], Any]) -> None:
    start = time.monotonic()
    try:
        function()
        error, message = None, ""
    except Exception as e:
        error, message = type(e).__name__, str(e)
    seconds = time.monotonic() - start
    print(json.dumps({"step": name, "error": error, "message": message, "seconds": seconds}), flush=True)


pid = os.fork()
if pid == 0:
    # Without the hook run after fork(), each step waits out its timeout.
    step("call", lambda: client.call("foo", 3, timeout=3))
    step("rpc", lambda: broker.rpc(service))
    step("connect", lambda: txass.blocking.connect(timeout=3))
    if close:
        step("close", lambda: broker.close(timeout=3))
    print(json.dumps({"step": "return", "at": time.monotonic()}), flush=True)
else:
    _, status = os.waitpid(pid, 0)
    ended = time.monotonic()
    print(json.dumps({"step": "parent", "code": os.waitstatus_to_exitcode(status), "ended": ended}), flush=True)
    print(json.dumps(client.call("foo", 2, timeout=15)), flush=True)
    broker.close()
