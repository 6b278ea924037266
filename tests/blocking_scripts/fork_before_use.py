"""
Fork before txass.blocking is used, then connect and call in the child, to
show that the child can, and that it warns that the reactor it inherited
is shared with its parent.

Usage: python fork_before_use.py SERVICE

The child connects, calls C{foo(4)} of SERVICE, prints the result as JSON,
then C{warned: True} if the log of txass.blocking warned that the reactor
is shared, or C{warned: False}.  The parent, which never runs the reactor,
waits for the child and prints C{child exit code: CODE}.
"""

import json
import os
import sys

from twisted.logger import globalLogPublisher

import txass.blocking

service = sys.argv[1]
pid = os.fork()
if pid == 0:
    log_formats: list[str] = []
    globalLogPublisher.addObserver(lambda event: log_formats.append(event.get("log_format") or ""))
    with txass.blocking.connect(timeout=15) as broker:
        print(json.dumps(broker.rpc(service).call("foo", 4, timeout=15)), flush=True)
    warned = any("shares its poller" in text for text in log_formats)
    print("warned:", warned, flush=True)
else:
    _, status = os.waitpid(pid, 0)
    print("child exit code:", os.waitstatus_to_exitcode(status), flush=True)
