"""
Call a service while the reactor thread is blocked, to show that the
calling thread stops waiting by itself.

Usage: python blocked_reactor.py SERVICE

Blocks the reactor thread for 6 s, then calls C{foo} with a timeout of
0.5 s.  Prints the name of the exception the call raised and the seconds
it took, then, once the reactor runs again, whether the call's request was
never sent: the RPC client has no call pending and opened no channel.
"""

import sys
import threading
import time

from twisted.internet import reactor, threads

import txass.blocking

# Seconds the reactor thread is blocked.
BLOCKED = 6.0

service = sys.argv[1]
broker = txass.blocking.connect()
client = broker.rpc(service)
blocked = threading.Event()


def block() -> None:
    blocked.set()
    time.sleep(BLOCKED)


reactor.callFromThread(block)
if not blocked.wait(15):
    raise SystemExit("the reactor did not run the blocking function")
start = time.monotonic()
try:
    client.call("foo", 1, timeout=0.5)
    outcome = "result"
except Exception as e:
    outcome = type(e).__name__
print(f"outcome: {outcome} after {time.monotonic() - start:.2f} s", flush=True)

rpc_client = client._client
pending, channel = threads.blockingCallFromThread(
    reactor, lambda: (rpc_client.pending, rpc_client._caller._channel.current())
)
print(f"pending: {pending}, channel opened: {channel is not None}", flush=True)
broker.close()
