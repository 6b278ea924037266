"""
Install the asyncio reactor before or after importing txass.blocking, to
show when a program can choose the reactor.

Usage: python chosen_reactor.py SERVICE before|after

With C{before}, installs the asyncio reactor, then imports txass.blocking,
calls C{foo(5)} of SERVICE, and prints the result as JSON, then the class
name of the reactor.  With C{after}, imports txass.blocking first and
prints the name of the exception that installing the asyncio reactor
raises, or C{installed}.
"""

import json
import sys

from twisted.internet import asyncioreactor

service, when = sys.argv[1], sys.argv[2]
if when == "before":
    asyncioreactor.install()
    import txass.blocking

    with txass.blocking.connect(timeout=15) as broker:
        print(json.dumps(broker.rpc(service).call("foo", 5, timeout=15)), flush=True)
    from twisted.internet import reactor

    print(type(reactor).__name__, flush=True)
else:
    import txass.blocking  # noqa: F401

    try:
        asyncioreactor.install()
        print("installed", flush=True)
    except Exception as e:
        print(type(e).__name__, flush=True)
