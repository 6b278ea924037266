"""
Make the first use of txass.blocking in several threads at once, to show
that exactly one reactor thread starts.

Usage: python concurrent_start.py SERVICE COUNT

COUNT threads pass a barrier together, then each connects and calls
C{foo} with its number.  Prints the results as one JSON list ordered by
number, then the number of threads named C{txass-reactor}, then how many
threads started a reactor thread, from the log of txass.blocking.
"""

import json
import sys
import threading
from typing import Any

from twisted.logger import globalLogPublisher

import txass.blocking

log_formats: list[str] = []
globalLogPublisher.addObserver(lambda event: log_formats.append(event.get("log_format") or ""))

service, count = sys.argv[1], int(sys.argv[2])
barrier = threading.Barrier(count, timeout=15)
results: list[Any] = [None] * count


def work(number: int) -> None:
    barrier.wait()
    try:
        with txass.blocking.connect(timeout=15) as broker:
            results[number] = broker.rpc(service).call("foo", number, timeout=15)
    except Exception as e:
        results[number] = type(e).__name__


workers = [threading.Thread(target=work, args=(number,)) for number in range(count)]
for worker in workers:
    worker.start()
for worker in workers:
    worker.join(30)
print(json.dumps(results), flush=True)
print("reactor threads:", sum(thread.name == "txass-reactor" for thread in threading.enumerate()), flush=True)
# A thread that loses the race to start the reactor logs that another
# thread started it.
starts = sum(text.startswith("started the Twisted reactor") for text in log_formats)
lost = sum(text.startswith("the Twisted reactor was started by another thread") for text in log_formats)
print(f"started: {starts}, started by another thread: {lost}", flush=True)
