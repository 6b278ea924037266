"""
Run a reactor in a thread of the program's own, then call a service through
txass.blocking from the main thread, which must use that reactor.

Usage: python own_reactor.py SERVICE VALUE

Prints the result of C{foo(VALUE)} as JSON, then whether the thread
C{txass-reactor} runs, then C{stopped} once the program's reactor thread
has ended.
"""

import json
import sys
import threading

from twisted.internet import reactor

import txass.blocking

service, value = sys.argv[1], int(sys.argv[2])
thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, name="app-reactor")
thread.start()
running = threading.Event()
reactor.callFromThread(running.set)
if not running.wait(15):
    raise SystemExit("the reactor did not start")

with txass.blocking.connect() as broker:
    result = broker.rpc(service).call("foo", value, timeout=15)
print(json.dumps(result), flush=True)
names = [thread.name for thread in threading.enumerate()]
print("reactor thread:", "txass-reactor" in names, flush=True)

reactor.callFromThread(reactor.stop)
thread.join(15)
print("stopped" if not thread.is_alive() else "still running", flush=True)
