"""
Interrupt a call of the main thread with SIGINT.

Usage: python interrupted_call.py SERVICE

Calls C{hold("main")} with a timeout of 30 s.  The test sends SIGINT once
the request arrives.  Prints C{interrupted after S s} when the call raised
KeyboardInterrupt, then the number of calls the RPC client still has
pending (0 once the interrupted call was cancelled).
"""

import sys
import time

from twisted.internet import reactor, threads

import txass.blocking

service = sys.argv[1]
broker = txass.blocking.connect()
client = broker.rpc(service)
start = time.monotonic()
try:
    client.call("hold", "main", timeout=30)
    print("returned", flush=True)
except KeyboardInterrupt:
    print(f"interrupted after {time.monotonic() - start:.2f} s", flush=True)
except Exception as e:
    print(f"raised {type(e).__name__}", flush=True)

rpc_client = client._client
print("pending:", threads.blockingCallFromThread(reactor, lambda: rpc_client.pending), flush=True)
broker.close()
