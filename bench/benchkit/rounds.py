"""
Round bookkeeping, timing and output shared by every worker process.

Workers run under txass's Python and under each peer library's virtual
environment, so this module uses the standard library alone.  A worker runs
its warm-up rounds, then its measured rounds, and prints one JSON object
on standard output::

    {"cases": {"100 in flight": [{"calls_per_s": 2500.0, ...}, ...]},
     "names": {"queues": [...], "exchanges": [...]}}

A server worker prints JSON lines of the form C{{"event": "ready", ...}}
instead, which the driver waits for.  In the end-to-end cases the driver
copies each C{handled} event of the server to the client's standard input,
which is how the client learns that a round has been handled.

A client started with C{--paced} runs each round, warm-up included, only
once the driver writes a line to its standard input, and prints
C{{"event": "round", ...}} when the round is done.  The driver uses this to
take turns between the clients of several systems, so that load from other
processes on the machine falls on all of them alike.  The worker blocks on
its standard input between rounds.  Nothing is in flight then, and the
wait lasts one round of each other system, a few seconds here, well under
the broker's default heartbeat interval of 60 seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"

# The text that pads every request body to about 100 bytes of JSON.
_PADDING = "benchmark request body padding text 0123456789"


class RoundTimeout(Exception):
    """
    Raised when a worker runs past its time limit.
    """


def payload(index: int) -> dict[str, Any]:
    """
    Build the data of request C{index}: a JSON object of about 100 bytes.
    """
    return {"index": index, "text": _PADDING, "flags": [True, False, None], "ratio": 0.5}


def encoded_payload(index: int) -> bytes:
    """
    Encode L{payload} as compact JSON, as a request body.
    """
    return json.dumps(payload(index), separators=(",", ":")).encode()


def percentile(values: Sequence[float], fraction: float) -> float:
    """
    Return the nearest-rank percentile of C{values}: C{fraction} 0.5 is the
    median and 0.99 the 99th percentile.

    @raise ValueError: C{values} is empty.
    """
    if not values:
        raise ValueError("percentile of an empty sequence")
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def latency_metrics(latencies: Sequence[float]) -> dict[str, float]:
    """
    Summarize call latencies given in seconds as C{p50_ms} and C{p99_ms}.
    """
    return {
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


def shared_clock() -> float:
    """
    Read C{CLOCK_MONOTONIC}, in seconds.  Python leaves the reference point
    of C{time.perf_counter} and C{time.monotonic} undefined, while POSIX
    defines this clock for the whole system, so a time read in one worker
    process can end an interval that another one started.
    """
    return time.clock_gettime(time.CLOCK_MONOTONIC)


class Deadline:
    """
    A point in time, on the monotonic clock, past which a worker gives up.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self._end

    def check(self, operation: str) -> None:
        """
        Raise L{RoundTimeout} naming C{operation} when the deadline has passed.
        """
        if self.expired():
            raise RoundTimeout(f"{operation} did not finish within the time limit of {self.seconds:g} s")


class RoundLog:
    """
    The metrics of each measured round, by case; warm-up rounds are dropped.
    """

    def __init__(self, warmup: int, rounds: int, *, paced: bool = False) -> None:
        self.warmup = warmup
        self.rounds = rounds
        self.paced = paced
        self.cases: dict[str, list[dict[str, float]]] = {}
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def indexes(self) -> Iterator[int]:
        """
        Yield the indexes of every round, warm-up rounds first.  A paced
        log yields each one once the driver has written a line to standard
        input.

        @raise RoundTimeout: Standard input closed before a paced round,
            because the driver gave up on this worker.
        """
        for index in range(self.warmup + self.rounds):
            if self.paced and not sys.stdin.readline():
                raise RoundTimeout(f"standard input closed before round {index + 1}")
            yield index

    def record(self, case: str, index: int, metrics: dict[str, float]) -> None:
        """
        Keep the metrics of round C{index} of C{case}, unless it is a warm-up
        round.  Every round is logged to standard error.
        """
        kind = "warm-up" if index < self.warmup else "round"
        formatted = ", ".join(f"{name}={value:.6g}" for name, value in metrics.items())
        print(f"{case or 'run'}: {kind} {index + 1}: {formatted}", file=sys.stderr, flush=True)
        if index >= self.warmup:
            self.cases.setdefault(case, []).append(metrics)
        if self.paced:
            emit_event("round", case=case, index=index)

    def result(self, **extra: Any) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "names": {"queues": self.queues, "exchanges": self.exchanges},
            **extra,
        }


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """
    Add the options every client worker takes: broker, service name, round
    sizes and time limit.
    """
    parser.add_argument("--url", default=DEFAULT_URL, help="AMQP URI of the broker")
    parser.add_argument("--service", required=True, help="service or queue name to use")
    parser.add_argument("--count", type=int, required=True, help="messages or calls per round")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up rounds before the measured ones")
    parser.add_argument(
        "--time-limit", type=float, default=120.0, help="seconds after which the worker gives up"
    )
    parser.add_argument(
        "--paced",
        action="store_true",
        help="start each round on a line from standard input, and report its end as an event",
    )


def round_log(options: argparse.Namespace) -> RoundLog:
    return RoundLog(options.warmup, options.rounds, paced=options.paced)


def emit_result(result: dict[str, Any]) -> None:
    """
    Print a worker's result as one JSON line on standard output.
    """
    print(json.dumps(result), flush=True)


def emit_event(event: str, **fields: Any) -> None:
    """
    Print an event of a server worker, such as C{ready}, as a JSON line.
    """
    print(json.dumps({"event": event, **fields}), flush=True)


def status_kilobytes(field: str, pid: int | str = "self") -> int | None:
    """
    Read a memory field such as C{VmRSS} or C{VmHWM} from
    C{/proc/PID/status}, in kilobytes, or L{None} when it cannot be read.
    """
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None
