"""
Serve a txass benchmark service until SIGTERM.

The handler has two methods: C{echo} returns its data, and C{noop} does
nothing.  The server prints JSON events on standard output: C{connected}
with its resident memory before it consumes anything, C{ready} once it
consumes, and, with C{--expect N}, C{progress} each second in which it
handled requests, and C{drained} once it has handled N requests, with the
seconds from C{react()} to the last one.  With C{--report-every N} it
prints C{handled} each time the requests handled in all reach a multiple
of N, with the L{shared_clock} time of the last one.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from twisted.internet import defer, task

import txass
from benchkit.rounds import DEFAULT_URL, emit_event, shared_clock, status_kilobytes

# Seconds between progress events.
PROGRESS_INTERVAL = 1.0


class Handler:
    """
    One shared handler instance, which counts the requests it served.
    """

    def __init__(self, expect: int, report_every: int = 0) -> None:
        self.expect = expect
        self.report_every = report_every
        self.handled = 0
        self.reported = 0
        self.started = 0.0
        self.first = 0.0

    def _count(self) -> None:
        self.handled += 1
        if self.report_every and self.handled % self.report_every == 0:
            emit_event("handled", handled=self.handled, at=shared_clock())
        if self.handled == 1:
            self.first = time.perf_counter()
        if self.handled == self.expect:
            finished = time.perf_counter()
            emit_event(
                "drained",
                handled=self.handled,
                seconds=finished - self.started,
                seconds_from_first=finished - self.first,
                rss_kb=status_kilobytes("VmRSS"),
                hwm_kb=status_kilobytes("VmHWM"),
            )

    def echo(self, data: Any) -> Any:
        self._count()
        return data

    def noop(self, data: Any) -> None:
        self._count()

    def report_progress(self) -> None:
        if self.handled != self.reported and self.handled < self.expect:
            self.reported = self.handled
            emit_event("progress", handled=self.handled)


async def serve(reactor: Any, options: argparse.Namespace) -> None:
    broker = await txass.connect(options.url)
    emit_event("connected", rss_kb=status_kilobytes("VmRSS"))
    handler = Handler(options.expect, options.report_every)
    stopped: defer.Deferred[None] = defer.Deferred()

    def stop() -> defer.Deferred[None]:
        # Runs before the reactor stops on SIGTERM or SIGINT.
        closing = broker.close()
        closing.addBoth(lambda _: stopped.callback(None) if not stopped.called else None)
        return closing

    reactor.addSystemEventTrigger("before", "shutdown", stop)
    if options.expect:
        task.LoopingCall(handler.report_progress).start(PROGRESS_INTERVAL, now=False)
    handler.started = time.perf_counter()
    await broker.service(options.service).react(handler, prefetch=options.prefetch)
    emit_event("ready")
    await stopped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="AMQP URI of the broker")
    parser.add_argument("--service", required=True, help="service to serve")
    parser.add_argument("--prefetch", type=int, default=100, help="requests served at once")
    parser.add_argument(
        "--expect", type=int, default=0, help="print a drained event after this many requests (0: never)"
    )
    parser.add_argument(
        "--report-every",
        type=int,
        default=0,
        metavar="N",
        help="print a handled event each time the requests handled reach a multiple of N (0: never)",
    )
    options = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(serve(reactor, options)))


if __name__ == "__main__":
    main()
