"""
The workloads: which worker processes each one runs, and what it reports.

Every workload runs under a deadline of its own.  When it ends, by success
or failure, the driver stops the processes it started and deletes the
queues and exchanges it declared.  All names start with C{bench-RUN}, where
RUN is the run's random id, and a final sweep deletes any that are left.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchkit.broker import BrokerAdmin
from benchkit.processes import MemorySampler, ProcessPool, Worker, WorkerFailed, child_environment
from benchkit.rounds import Deadline, RoundTimeout, status_kilobytes
from benchkit.stats import Summary

WORKLOADS = ("engine-floor", "cast", "rpc-sequential", "rpc-concurrent", "blocking", "backlog")

# Requests a server takes at once, for every server of every library.
SERVER_PREFETCH = 100

# How long a server has to start consuming.
READY_TIMEOUT_SECONDS = 60.0

# How long a server in the backlog and end-to-end cases may report nothing
# before the round fails.
STALL_TIMEOUT_SECONDS = 15.0

# The name under which the engine floor's measurements are reported.
FLOOR_SYSTEM = "pika Twisted adapter"

# The suffix of the case names whose publisher and consumer run at once in
# separate processes.
END_TO_END = "end to end"

# Seconds a client worker gets less than the workload's remaining time, so
# that it reports its own timeout before the driver stops it.
WORKER_MARGIN_SECONDS = 5.0


@dataclass(frozen=True)
class Plan:
    """
    Round counts, sizes and time limits of a run.
    """

    name: str
    rounds: int
    warmup: int
    floor_count: int
    cast_count: int
    sequential_count: int
    concurrent_count: int
    concurrency: tuple[int, ...]
    blocking_count: int
    threads: tuple[int, ...]
    backlog_count: int
    backlog_rounds: int
    timeouts: dict[str, float]


FULL = Plan(
    name="full",
    rounds=5,
    warmup=1,
    floor_count=20_000,
    cast_count=20_000,
    sequential_count=2_000,
    concurrent_count=3_000,
    concurrency=(100, 500),
    blocking_count=5_000,
    threads=(1, 8),
    backlog_count=100_000,
    backlog_rounds=3,
    timeouts={
        "engine-floor": 120.0,
        "cast": 120.0,
        "rpc-sequential": 180.0,
        "rpc-concurrent": 300.0,
        "blocking": 120.0,
        "backlog": 300.0,
    },
)

QUICK = Plan(
    name="quick",
    rounds=3,
    warmup=1,
    floor_count=5_000,
    cast_count=3_000,
    sequential_count=300,
    concurrent_count=1_000,
    concurrency=(100, 500),
    blocking_count=1_000,
    threads=(1, 8),
    backlog_count=20_000,
    backlog_rounds=2,
    timeouts={
        "engine-floor": 45.0,
        "cast": 45.0,
        "rpc-sequential": 60.0,
        "rpc-concurrent": 90.0,
        "blocking": 45.0,
        "backlog": 90.0,
    },
)


@dataclass
class Measurement:
    """
    One metric of one system in one case, with its value in each round.
    """

    workload: str
    case: str
    system: str
    metric: str
    values: list[float]

    @property
    def summary(self) -> Summary:
        return Summary.of(self.values)


@dataclass
class Outcome:
    """
    The measurements and errors of one workload.
    """

    workload: str
    measurements: list[Measurement] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def find(self, case: str, system: str, metric: str) -> Measurement | None:
        for measurement in self.measurements:
            if (measurement.case, measurement.system, measurement.metric) == (case, system, metric):
                return measurement
        return None


@dataclass
class Names:
    """
    Queues and exchanges a workload declared, to delete when it ends.
    """

    queues: set[str] = field(default_factory=set)
    exchanges: set[str] = field(default_factory=set)

    def add(self, names: dict[str, Any]) -> None:
        self.queues.update(names.get("queues", []))
        self.exchanges.update(names.get("exchanges", []))

    def update(self, other: Names) -> None:
        self.queues.update(other.queues)
        self.exchanges.update(other.exchanges)


def txass_names(service: str) -> Names:
    """
    Return the names that a txass server or client of C{service} declares:
    the exchange C{service}, its queue, and the queue C{service.unfinished}
    of requests whose server died while handling them.
    """
    return Names({service, f"{service}.unfinished"}, {service})


@dataclass(frozen=True)
class RpcSystem:
    """
    An RPC library under test: its Python, server worker and client worker.
    """

    key: str
    label: str
    python: Path | str
    server_module: str
    client_module: str
    pythonpath: Path | None

    def exchange(self, service: str) -> str | None:
        """
        Return the RPC exchange this system's workers use, if any.
        """
        return f"{service}-exchange" if self.key == "nameko" else None

    def declared(self, service: str) -> Names:
        """
        Return the names the server declares; clients report theirs.
        """
        if self.key == "txass":
            return txass_names(service)
        exchange = self.exchange(service)
        if self.key == "nameko" and exchange is not None:
            return Names({f"rpc-{service}"}, {exchange})
        return Names({service}, set())


class Runner:
    """
    Runs workloads against one broker with one plan.
    """

    def __init__(
        self,
        *,
        plan: Plan,
        url: str,
        run_id: str,
        txass_python: str,
        checkout: Path,
        pool: ProcessPool,
        admin: BrokerAdmin,
        peers: dict[str, Path],
    ) -> None:
        self.plan = plan
        self.url = url
        self.run_id = run_id
        self.txass_python = txass_python
        self.checkout = checkout
        self.pool = pool
        self.admin = admin
        self.txass_env = child_environment(pythonpath=checkout)
        self.systems = [
            RpcSystem("txass", "txass", txass_python, "cases.txass_server", "cases.txass_rpc", checkout),
        ]
        peer_workers = {
            "pika": ("pika pair", "peers.pika_server", "peers.pika_client"),
            "aio-pika": ("aio-pika", "peers.aiopika_server", "peers.aiopika_client"),
            "nameko": ("nameko", "peers.nameko_service", "peers.nameko_client"),
        }
        for key, (label, server, client) in peer_workers.items():
            if key in peers:
                self.systems.append(RpcSystem(key, label, peers[key], server, client, None))

    def service(self, workload: str, system: str) -> str:
        return f"bench-{self.run_id}-{workload}-{system}"

    def run(self, workload: str) -> Outcome:
        """
        Run one workload within its time limit, then stop its processes and
        delete its queues and exchanges.
        """
        steps: dict[str, Callable[[Deadline, Outcome, Names], None]] = {
            "engine-floor": self._engine_floor,
            "cast": self._cast,
            "rpc-sequential": self._rpc_sequential,
            "rpc-concurrent": self._rpc_concurrent,
            "blocking": self._blocking,
            "backlog": self._backlog,
        }
        outcome = Outcome(workload)
        names = Names()
        deadline = Deadline(self.plan.timeouts[workload])
        started = time.monotonic()
        try:
            steps[workload](deadline, outcome, names)
        except (WorkerFailed, RoundTimeout) as error:
            outcome.errors.append(str(error))
        finally:
            self.pool.stop_all()
            outcome.errors.extend(self.admin.delete(names.queues, names.exchanges))
            outcome.seconds = time.monotonic() - started
        return outcome

    # Helpers

    def _round_arguments(self, service: str, count: int, deadline: Deadline) -> list[str]:
        time_limit = max(deadline.remaining() - WORKER_MARGIN_SECONDS, 1.0)
        return [
            "--url", self.url,
            "--service", service,
            "--count", str(count),
            "--rounds", str(self.plan.rounds),
            "--warmup", str(self.plan.warmup),
            "--time-limit", f"{time_limit:.1f}",
        ]  # fmt: skip

    def _start_txass(self, name: str, module: str, arguments: list[str], *, stdin: bool = False) -> Worker:
        return self.pool.start(name, self.txass_python, module, arguments, self.txass_env, stdin=stdin)

    def _relay_reports(self, server: Worker, client: Worker, deadline: Deadline) -> None:
        """
        Copy each C{handled} event of C{server} to the standard input of
        C{client}, once for each of the client's rounds, warm-up included.
        The client starts its next round only once it has the report of
        the last one.

        @raise WorkerFailed: The server reported nothing for
            L{STALL_TIMEOUT_SECONDS}, or either worker failed.  When the
            client has exited, its own failure is raised.
        """
        for _ in range(self.plan.warmup + self.plan.rounds):
            self._relay_report(server, client, deadline)

    @staticmethod
    def _relay_report(server: Worker, client: Worker, deadline: Deadline) -> None:
        """
        Copy the next C{handled} event of C{server} to C{client}; see
        L{_relay_reports}.
        """
        try:
            report = server.wait_event("handled", deadline.remaining(), idle_timeout=STALL_TIMEOUT_SECONDS)
        except WorkerFailed:
            if client.process.poll() is not None:
                client.result(deadline.remaining())
            raise
        client.send(report)

    @staticmethod
    def _collect(outcome: Outcome, names: Names, system: str, result: dict[str, Any], default_case: str = "") -> None:
        """
        Add a worker's measurements to C{outcome}, and the names it declared
        to C{names}; C{default_case} labels a worker's unnamed case.
        """
        names.add(result.get("names", {}))
        for case, rounds in result["cases"].items():
            for metric in rounds[0]:
                values = [float(metrics[metric]) for metrics in rounds]
                outcome.measurements.append(
                    Measurement(outcome.workload, case or default_case, system, metric, values)
                )

    # Workloads

    def _engine_floor(self, deadline: Deadline, outcome: Outcome, names: Names) -> None:
        """
        Run the engine floor's rounds in one process, publishing and then
        consuming, and then its end-to-end rounds, with the publisher and
        the consumer in processes of their own.
        """
        count = self.plan.floor_count
        service = self.service("floor", "pika")
        names.queues.add(service)
        arguments = self._round_arguments(service, count, deadline)
        worker = self._start_txass("engine-floor", "cases.engine_floor", arguments)
        result = worker.result(deadline.remaining())
        self._collect(outcome, names, FLOOR_SYSTEM, result, f"{count:,} messages")

        service = self.service("floor-end-to-end", "pika")
        names.queues.add(service)
        consumer = self._start_txass(
            "engine-floor-consumer",
            "cases.engine_consumer",
            ["--url", self.url, "--service", service, "--report-every", str(count)],
        )
        consumer.wait_event("ready", min(READY_TIMEOUT_SECONDS, deadline.remaining()))
        publisher = self._start_txass(
            "engine-floor-publisher",
            "cases.engine_publisher",
            self._round_arguments(service, count, deadline),
            stdin=True,
        )
        self._relay_reports(consumer, publisher, deadline)
        result = publisher.result(deadline.remaining())
        self._collect(outcome, names, FLOOR_SYSTEM, result, f"{count:,} messages, {END_TO_END}")

    def _cast(self, deadline: Deadline, outcome: Outcome, names: Names) -> None:
        """
        Run a txass server in a process of its own, and cast to it from
        another.  The engine floor's consume case runs beside it, paced:
        a floor round, then a cast round, each turn starting with the other
        one.  The cast target divides by this floor, measured in the same
        minutes, rather than by the engine-floor workload's, which ran
        earlier and under other load from the rest of the machine.
        """
        count = self.plan.cast_count
        service = self.service("cast", "txass")
        names.update(txass_names(service))
        floor_service = self.service("cast-floor", "pika")
        names.queues.add(floor_service)
        floor: Worker | None = self._start_txass(
            "cast-floor",
            "cases.engine_floor",
            [*self._round_arguments(floor_service, self.plan.floor_count, deadline), "--paced"],
            stdin=True,
        )
        server = self._start_txass(
            "cast-server",
            "cases.txass_server",
            [
                "--url", self.url,
                "--service", service,
                "--prefetch", str(SERVER_PREFETCH),
                "--report-every", str(count),
            ],
        )  # fmt: skip
        server.wait_event("ready", min(READY_TIMEOUT_SECONDS, deadline.remaining()))
        client = self._start_txass(
            "cast-client",
            "cases.txass_cast",
            [*self._round_arguments(service, count, deadline), "--paced"],
            stdin=True,
        )

        def floor_turn(turn: int) -> None:
            nonlocal floor
            if floor is None:
                return
            try:
                floor.send({"turn": turn})
                floor.wait_event("round", deadline.remaining())
            except WorkerFailed as error:
                # The casts go on without their baseline; the target then
                # uses the engine-floor workload's.
                outcome.errors.append(f"engine floor beside the casts: {error}")
                floor.stop()
                floor = None

        def cast_turn(turn: int) -> None:
            client.send({"turn": turn})
            self._relay_report(server, client, deadline)
            client.wait_event("round", deadline.remaining())

        for turn in range(self.plan.warmup + self.plan.rounds):
            steps = (floor_turn, cast_turn) if turn % 2 == 0 else (cast_turn, floor_turn)
            for step in steps:
                step(turn)
        result = client.result(deadline.remaining())
        self._collect(outcome, names, "txass", result, f"{count:,} casts, {END_TO_END}")
        if floor is not None:
            try:
                result = floor.result(deadline.remaining())
            except WorkerFailed as error:
                outcome.errors.append(f"engine floor beside the casts: {error}")
            else:
                self._collect(outcome, names, FLOOR_SYSTEM, result, f"{self.plan.floor_count:,} messages, in turns")

    def _rpc_sequential(self, deadline: Deadline, outcome: Outcome, names: Names) -> None:
        self._rpc(deadline, outcome, names, "sequential", self.plan.sequential_count, (1,))

    def _rpc_concurrent(self, deadline: Deadline, outcome: Outcome, names: Names) -> None:
        self._rpc(deadline, outcome, names, "concurrent", self.plan.concurrent_count, self.plan.concurrency)

    def _rpc(
        self,
        deadline: Deadline,
        outcome: Outcome,
        names: Names,
        kind: str,
        count: int,
        concurrency: tuple[int, ...],
    ) -> None:
        """
        Start the server and a paced client of each system, then run their
        rounds in turns: round 1 of every system, then round 2, each turn
        starting with the next system.  Load from other processes on this
        shared machine then falls on every system alike, rather than on
        whichever ran while it lasted.  A system that fails is reported,
        and the others go on.
        """
        clients: dict[str, tuple[RpcSystem, Worker]] = {}
        for system in self.systems:
            try:
                clients[system.key] = (system, self._start_rpc_system(system, kind, count, concurrency, deadline, names))
            except (WorkerFailed, RoundTimeout, KeyError) as error:
                outcome.errors.append(f"{system.label}: {error}")
        turns = len(concurrency) * (self.plan.warmup + self.plan.rounds)
        for turn in range(turns):
            order = list(clients)
            if order:
                shift = turn % len(order)
                order = order[shift:] + order[:shift]
            for key in order:
                system, client = clients[key]
                try:
                    client.send({"turn": turn})
                    client.wait_event("round", deadline.remaining())
                except WorkerFailed as error:
                    if client.process.poll() is not None:
                        # Its exit status and log describe the failure better.
                        try:
                            client.result(1.0)
                        except WorkerFailed as exited:
                            error = exited
                    outcome.errors.append(f"{system.label}: {error}")
                    client.stop()
                    del clients[key]
            if deadline.expired():
                outcome.errors.append(f"the workload's time limit of {deadline.seconds:g} s ran out")
                return
        for system, client in clients.values():
            try:
                self._collect(outcome, names, system.label, client.result(deadline.remaining()))
            except (WorkerFailed, KeyError) as error:
                outcome.errors.append(f"{system.label}: {error}")

    def _start_rpc_system(
        self,
        system: RpcSystem,
        kind: str,
        count: int,
        concurrency: tuple[int, ...],
        deadline: Deadline,
        names: Names,
    ) -> Worker:
        """
        Start the server of C{system}, wait until it is ready, and start its
        paced client.

        @return: The client, which waits for its first turn.
        """
        service = self.service(kind, system.key)
        declared = system.declared(service)
        names.queues.update(declared.queues)
        names.exchanges.update(declared.exchanges)
        exchange = system.exchange(service)
        extra = ["--exchange", exchange] if exchange is not None else []
        server = self.pool.start(
            f"rpc-{kind}-{system.key}-server",
            system.python,
            system.server_module,
            ["--url", self.url, "--service", service, *extra],
            child_environment(pythonpath=system.pythonpath),
        )
        server.wait_event("ready", min(READY_TIMEOUT_SECONDS, deadline.remaining()))
        return self.pool.start(
            f"rpc-{kind}-{system.key}-client",
            system.python,
            system.client_module,
            [
                *self._round_arguments(service, count, deadline),
                "--paced",
                "--concurrency",
                *map(str, concurrency),
                *extra,
            ],
            child_environment(pythonpath=system.pythonpath),
            stdin=True,
        )

    def _blocking(self, deadline: Deadline, outcome: Outcome, names: Names) -> None:
        service = self.service("blocking", "txass")
        names.update(txass_names(service))
        server = self._start_txass("blocking-server", "cases.txass_server", ["--url", self.url, "--service", service])
        server.wait_event("ready", min(READY_TIMEOUT_SECONDS, deadline.remaining()))
        client = self._start_txass(
            "blocking-client",
            "cases.txass_blocking",
            [
                *self._round_arguments(service, self.plan.blocking_count, deadline),
                "--threads",
                *map(str, self.plan.threads),
            ],
        )
        self._collect(outcome, names, "txass", client.result(deadline.remaining()))

    def _backlog(self, deadline: Deadline, outcome: Outcome, names: Names) -> None:
        """
        Run the backlog rounds.  Each round uses a new server process, so
        there is no warm-up round.
        """
        service = self.service("backlog", "txass")
        names.update(txass_names(service))
        count = self.plan.backlog_count
        rounds = []
        for index in range(self.plan.backlog_rounds):
            metrics = self._backlog_round(index + 1, service, count, deadline)
            formatted = ", ".join(f"{name}={value:.6g}" for name, value in metrics.items())
            print(f"  backlog round {index + 1}: {formatted}", flush=True)
            rounds.append(metrics)
        self._collect(outcome, names, "txass", {"cases": {f"{count:,} queued": rounds}})

    def _backlog_round(self, number: int, service: str, count: int, deadline: Deadline) -> dict[str, float]:
        """
        Queue C{count} requests with casts, then start a server in a new
        process and sample its memory while it drains the queue.
        """
        fill = self._start_txass(
            f"backlog-fill-{number}",
            "cases.txass_fill",
            [
                "--url", self.url,
                "--service", service,
                "--count", str(count),
                "--time-limit", f"{max(deadline.remaining() - WORKER_MARGIN_SECONDS, 1.0):.1f}",
            ],
        )  # fmt: skip
        filled = fill.result(deadline.remaining())

        server = self._start_txass(
            f"backlog-server-{number}",
            "cases.txass_server",
            [
                "--url", self.url,
                "--service", service,
                "--prefetch", str(SERVER_PREFETCH),
                "--expect", str(count),
            ],
        )  # fmt: skip
        sampler = MemorySampler(server.pid)
        sampler.start()
        try:
            connected = server.wait_event("connected", min(READY_TIMEOUT_SECONDS, deadline.remaining()))
            drain_started = time.monotonic()
            drained = server.wait_event("drained", deadline.remaining(), idle_timeout=STALL_TIMEOUT_SECONDS)
            drain_ended = time.monotonic()
            # The server's own reading is used if the process is already gone.
            peak = status_kilobytes("VmHWM", server.pid) or drained.get("hwm_kb")
        finally:
            sampler.stop()
            server.stop()
        if peak is None:
            raise WorkerFailed(f"cannot read VmHWM of the backlog server (pid {server.pid})")

        growth = rss_growth(sampler.samples, drain_started, drain_ended)
        return {
            "drain_per_s": count / float(drained["seconds"]),
            "baseline_rss_mb": float(connected["rss_kb"]) / 1024,
            "peak_rss_mb": float(peak) / 1024,
            "rss_growth_mb": growth / 1024,
            "fill_per_s": float(filled["casts_per_s"]),
        }


def rss_growth(samples: list[tuple[float, int]], started: float, ended: float) -> float:
    """
    Return how much resident memory grew while a queue drained, in
    kilobytes: the largest sample of the last tenth of the drain minus the
    largest sample of its first tenth.  For a tenth without samples, the
    sample nearest to it is used.

    C{samples} are (monotonic seconds, kilobytes) pairs; C{started} and
    C{ended} are monotonic seconds.
    """
    if not samples:
        return 0.0
    tenth = (ended - started) / 10

    def largest_near(low: float, high: float) -> int:
        inside = [kilobytes for moment, kilobytes in samples if low <= moment <= high]
        if inside:
            return max(inside)
        middle = (low + high) / 2
        return min(samples, key=lambda sample: abs(sample[0] - middle))[1]

    return float(largest_near(ended - tenth, ended) - largest_near(started, started + tenth))
