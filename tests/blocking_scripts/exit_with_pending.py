"""
Leave calls waiting when the main thread returns, to show that the
interpreter exit makes them fail and the process ends.

Usage: python exit_with_pending.py SERVICE COUNT

Calls C{hold(label)} of SERVICE in COUNT threads that are not daemons:
half of them plain threads, half the workers of a ThreadPoolExecutor.  Each
call may wait 60 s.  Prints C{waiting} once the threads run, then returns
from the main thread when a line arrives on standard input.  Each thread
prints C{worker LABEL: NAME} with the name of the exception its call
raised, or C{result} if it returned.
"""

import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import txass.blocking

service, count = sys.argv[1], int(sys.argv[2])
broker = txass.blocking.connect()
client = broker.rpc(service)


def work(label: str) -> None:
    try:
        client.call("hold", label, timeout=60)
        outcome = "result"
    except Exception as e:
        outcome = type(e).__name__
    # One write per line, so that the lines of the threads do not mix.
    sys.stdout.write(f"worker {label}: {outcome}\n")
    sys.stdout.flush()


executor = ThreadPoolExecutor(max_workers=count)
for number in range(count):
    label = f"w{number}"
    if number % 2:
        executor.submit(work, label)
    else:
        threading.Thread(target=work, args=(label,), name=label).start()
print("waiting", flush=True)
sys.stdin.readline()
