"""
Call a service once from a plain program that runs no reactor itself, so
that txass.blocking starts one in a thread.

Usage: python plain_call.py SERVICE VALUE

Prints the result of C{foo(VALUE)} as JSON, then whether the thread
C{txass-reactor} runs.  The connection is left open, for the exit hook to
close.
"""

import json
import sys
import threading

import txass.blocking

service, value = sys.argv[1], int(sys.argv[2])
broker = txass.blocking.connect()
result = broker.rpc(service).call("foo", value, timeout=15)
print(json.dumps(result), flush=True)
names = [thread.name for thread in threading.enumerate()]
print("reactor thread:", "txass-reactor" in names, flush=True)
