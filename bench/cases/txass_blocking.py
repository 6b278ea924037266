"""
Measure RPC calls through txass's blocking bridge from plain threads.

The service runs in another process (C{cases.txass_server}).  For each
value of C{--threads}, that many threads share one C{BlockingBroker} and
call until the round's C{--count} calls have been made; each thread makes
one call at a time.  Each round reports calls per second and the 50th and
99th percentile of call latency.
"""

from __future__ import annotations

import argparse
import threading
import time

import txass.blocking
from benchkit.rounds import Deadline, RoundTimeout, add_common_options, emit_result, latency_metrics, payload, round_log

CALL_TIMEOUT = 30.0


class Counter:
    """
    Hands out call indexes to threads until a count is reached.
    """

    def __init__(self, count: int) -> None:
        self._count = count
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> int | None:
        with self._lock:
            if self._next >= self._count:
                return None
            self._next += 1
            return self._next - 1


def run_round(
    rpc: txass.blocking.BlockingRPCClient, count: int, threads: int, deadline: Deadline
) -> dict[str, float]:
    counter = Counter(count)
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def call_until_done() -> None:
        try:
            while (index := counter.take()) is not None and not deadline.expired():
                sent = time.perf_counter()
                rpc.call("echo", payload(index), timeout=CALL_TIMEOUT)
                elapsed = time.perf_counter() - sent
                with lock:
                    latencies.append(elapsed)
        except Exception as error:
            errors.append(error)

    workers = [threading.Thread(target=call_until_done, name=f"caller-{number}") for number in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(deadline.remaining() + CALL_TIMEOUT)
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    if len(latencies) < count:
        raise RoundTimeout(f"{len(latencies)} of {count} calls finished within the time limit")
    return {"calls_per_s": count / elapsed, **latency_metrics(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    add_common_options(parser)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8], help="calling threads; one case per value")
    options = parser.parse_args()
    deadline = Deadline(options.time_limit)
    log = round_log(options)
    with txass.blocking.connect(options.url) as broker:
        rpc = broker.rpc(options.service)
        for threads in options.threads:
            case = "1 thread" if threads == 1 else f"{threads} threads"
            for index in log.indexes():
                log.record(case, index, run_round(rpc, options.count, threads, deadline))
    emit_result(log.result())


if __name__ == "__main__":
    main()
