"""
Stop the program's own reactor while a thread waits for a reply.

Usage: python stopped_reactor.py SERVICE

Runs the reactor in a thread of its own and calls C{hold} of SERVICE in a
worker thread, with a timeout of 60 s.  Prints C{waiting}, then stops the
reactor when a line arrives on standard input.  Prints the name of the
exception the worker's call raised, then the names of the exceptions that
a new connect() and a new call raise.
"""

import sys
import threading

from twisted.internet import reactor

import txass.blocking

service = sys.argv[1]
thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, name="app-reactor")
thread.start()
running = threading.Event()
reactor.callFromThread(running.set)
if not running.wait(15):
    raise SystemExit("the reactor did not start")

broker = txass.blocking.connect()
client = broker.rpc(service)
outcomes: list[str] = []


def work() -> None:
    try:
        client.call("hold", "worker", timeout=60)
        outcomes.append("result")
    except Exception as e:
        outcomes.append(type(e).__name__)


worker = threading.Thread(target=work)
worker.start()
print("waiting", flush=True)
sys.stdin.readline()
reactor.callFromThread(reactor.stop)
thread.join(15)
worker.join(15)
print("worker:", *outcomes, flush=True)

for name, function in [("connect", txass.blocking.connect), ("call", lambda: client.call("hold", "late"))]:
    try:
        function()
        print(f"{name}: result", flush=True)
    except Exception as e:
        print(f"{name}: {type(e).__name__}", flush=True)
