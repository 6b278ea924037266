"""
Run txass's benchmark suite against a RabbitMQ broker.

    .venv/bin/python bench/run.py [--quick] [--only NAME ...] [--json FILE]

Run it with a Python that has txass's dependencies (Twisted and pika), such
as the .venv that scripts/venv builds.  The workers import txass from this
checkout.  docs/benchmarks.rst describes the workloads and how to read the
results.  Type-check the suite, but not its peers (their libraries are in
their own environments), from the checkout with

    cd bench && MYPYPATH=.. mypy --strict --python-version 3.11 run.py benchkit cases
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

try:
    import pika.exceptions
except ImportError as missing:
    sys.exit(
        f"bench/run.py: {missing}; run it with a Python that has txass's dependencies, "
        "such as .venv/bin/python after 'bash scripts/venv'"
    )

# These modules import pika too, so they come after the check above.
from benchkit.broker import BrokerAdmin  # noqa: E402
from benchkit.environments import PeerLibrary, PeerUnavailable, ensure_environment, peer_libraries  # noqa: E402
from benchkit.machine import describe, source_revision, txass_versions  # noqa: E402
from benchkit.processes import ProcessPool, child_environment  # noqa: E402
from benchkit.report import (  # noqa: E402
    context,
    context_table,
    measurement_table,
    ratio_table,
    ratios,
    target_table,
    targets,
)
from benchkit.rounds import DEFAULT_URL  # noqa: E402
from benchkit.workloads import FULL, QUICK, WORKLOADS, Outcome, Plan, Runner  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
CHECKOUT = BENCH_DIR.parent
RPC_WORKLOADS = ("rpc-sequential", "rpc-concurrent")


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Measure txass against pika's Twisted adapter and other RPC libraries on RabbitMQ.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer rounds and smaller counts (docs/benchmarks.rst lists both plans)"
    )
    parser.add_argument(
        "--only", nargs="+", choices=WORKLOADS, metavar="NAME", help=f"run only these workloads: {', '.join(WORKLOADS)}"
    )
    parser.add_argument(
        "--peers",
        nargs="*",
        choices=sorted(peer_libraries()),
        metavar="PEER",
        help="peer libraries to compare with in the RPC workloads (default: all; none with an empty list)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every round's numbers to FILE as JSON")
    # argparse expands %-formats in help text, and the default URI contains "%2F".
    escaped_url = DEFAULT_URL.replace("%", "%%")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"AMQP URI of the broker (default {escaped_url})")
    parser.add_argument(
        "--txass-dir",
        type=Path,
        default=CHECKOUT,
        metavar="DIR",
        help="directory whose txass package the workers import (default: this checkout)",
    )
    parser.add_argument(
        "--venv-dir",
        type=Path,
        default=BENCH_DIR / ".venvs",
        metavar="DIR",
        help="where the peers' virtual environments are kept (default bench/.venvs)",
    )
    return parser.parse_args(argv)


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SystemExit unwinds through the finally blocks that stop the workers
    # and delete the run's queues.
    print(f"bench/run.py: stopped by signal {signum}; stopping workers and deleting queues", file=sys.stderr)
    raise SystemExit(128 + signum)


def print_header(machine: dict[str, Any], plan: Plan, command: str) -> None:
    print(f"txass benchmark suite, {plan.name} run, {machine['date']}")
    print(
        f"machine: {machine['cpus']} CPUs ({machine['cpu_model']}), {machine['memory']}, {machine['kernel']}; "
        f"{machine['python']}; {machine['rabbitmq']}"
    )
    print(
        f"txass {machine['txass']} from {machine['txass_path']} (commit {machine['txass_revision']}); "
        f"Twisted {machine['twisted']}; pika {machine['pika']}"
    )
    print(f"command: {command}")
    print(
        f"rounds: {plan.rounds} measured after {plan.warmup} warm-up per case "
        f"(backlog: {plan.backlog_rounds}, each with a new server process); "
        "median, range and interquartile range (IQR) over the measured rounds"
    )
    print(flush=True)


def prepare_peers(selected: list[str], venv_dir: Path) -> tuple[dict[str, Path], dict[str, dict[str, Any]]]:
    """
    Build or reuse the environment of each selected peer; a peer whose
    installation fails is skipped with a message.
    """
    libraries = peer_libraries()
    pythons: dict[str, Path] = {}
    report: dict[str, dict[str, Any]] = {}
    for name in selected:
        library: PeerLibrary = libraries[name]
        print(f"peer {name}: {' '.join(library.requirements)}", flush=True)
        entry: dict[str, Any] = {"requirements": list(library.requirements), "pins": library.pins}
        try:
            pythons[name] = ensure_environment(library, venv_dir)
            entry["status"] = "ready"
        except PeerUnavailable as error:
            print(f"  skipping peer {name}: {error}", flush=True)
            entry["status"] = f"skipped: {error}"
        report[name] = entry
    return pythons, report


def print_outcome(outcome: Outcome) -> None:
    print(f"\n{outcome.workload} ({outcome.seconds:.0f} s)\n")
    if outcome.measurements:
        print(measurement_table(outcome.measurements))
    for error in outcome.errors:
        print(f"ERROR: {error}")
    if outcome.workload in RPC_WORKLOADS and outcome.measurements:
        found = ratios(outcome)
        if found:
            print(
                f"\n{outcome.workload}: txass / peer, from the medians "
                "(calls/s above 1 and latency below 1 favor txass)\n"
            )
            print(ratio_table(found))
    print(flush=True)


def outcome_json(outcome: Outcome) -> dict[str, Any]:
    return {
        "workload": outcome.workload,
        "seconds": outcome.seconds,
        "errors": outcome.errors,
        "measurements": [
            {
                "case": m.case,
                "system": m.system,
                "metric": m.metric,
                "values": m.values,
                **dataclasses.asdict(m.summary),
            }
            for m in outcome.measurements
        ],
    }


def main(argv: list[str]) -> int:
    options = parse_arguments(argv)
    plan = QUICK if options.quick else FULL
    selected = [name for name in WORKLOADS if options.only is None or name in options.only]
    peer_names = sorted(peer_libraries()) if options.peers is None else list(dict.fromkeys(options.peers))
    command = shlex.join([sys.executable, *sys.argv])
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()

    txass_dir = options.txass_dir.resolve()
    if not (txass_dir / "txass" / "__init__.py").is_file():
        print(f"bench/run.py: --txass-dir {txass_dir} contains no txass package (txass/__init__.py)", file=sys.stderr)
        return 2
    admin = BrokerAdmin(options.url)
    try:
        versions = txass_versions(sys.executable, child_environment(pythonpath=txass_dir), BENCH_DIR)
    except RuntimeError as error:
        print(
            f"bench/run.py: {sys.executable} cannot import txass and its dependencies from {txass_dir} ({error}); "
            "build a virtual environment with 'bash scripts/venv' and run .venv/bin/python bench/run.py",
            file=sys.stderr,
        )
        return 2
    try:
        admin.server_properties()
    except pika.exceptions.AMQPError as error:
        print(
            f"bench/run.py: cannot connect to the broker at {options.url} ({error!r}); "
            "start one with 'bash scripts/ensure-broker'",
            file=sys.stderr,
        )
        return 2
    machine = describe(admin, versions)
    machine["txass_revision"] = source_revision(txass_dir)
    print_header(machine, plan, command)

    peer_pythons: dict[str, Path] = {}
    peers_report: dict[str, dict[str, Any]] = {}
    setup_started = time.monotonic()
    if any(workload in RPC_WORKLOADS for workload in selected):
        peer_pythons, peers_report = prepare_peers(peer_names, options.venv_dir)
    setup_seconds = time.monotonic() - setup_started

    run_id = uuid.uuid4().hex[:8]
    log_dir = BENCH_DIR / ".logs" / run_id
    pool = ProcessPool(BENCH_DIR, log_dir)
    runner = Runner(
        plan=plan,
        url=options.url,
        run_id=run_id,
        txass_python=sys.executable,
        checkout=txass_dir,
        pool=pool,
        admin=admin,
        peers=peer_pythons,
    )
    outcomes: dict[str, Outcome] = {}
    swept: list[str] = []
    sweep_errors: list[str] = []
    try:
        for workload in selected:
            print(f"running {workload} (time limit {plan.timeouts[workload]:g} s)", flush=True)
            outcomes[workload] = runner.run(workload)
            print_outcome(outcomes[workload])
    finally:
        pool.stop_all()
        swept, sweep_errors = admin.sweep(f"bench-{run_id}")
        for problem in sweep_errors:
            print(f"cleanup: {problem}", file=sys.stderr)

    checks = targets(outcomes)
    print("targets (medians over rounds; memory from the worst round)\n")
    print(target_table(checks))
    comparisons = context(outcomes)
    print()
    print(context_table(comparisons))
    total_seconds = time.monotonic() - started
    failed = any(outcome.errors for outcome in outcomes.values())
    print(
        f"\nfinished in {total_seconds:.0f} s, of which {setup_seconds:.0f} s preparing peer environments; "
        f"names left over and deleted at the end: {len(swept)}"
    )
    if failed:
        print(f"worker logs: {log_dir}")
    else:
        shutil.rmtree(log_dir, ignore_errors=True)

    if options.json is not None:
        document = {
            "command": command,
            "machine": machine,
            "plan": dataclasses.asdict(plan),
            "peers": peers_report,
            "workloads": [outcome_json(outcome) for outcome in outcomes.values()],
            "ratios": [
                dataclasses.asdict(ratio)
                for outcome in outcomes.values()
                if outcome.workload in RPC_WORKLOADS
                for ratio in ratios(outcome)
            ],
            "targets": [{**dataclasses.asdict(t), "verdict": t.verdict} for t in checks],
            "context": [dataclasses.asdict(c) for c in comparisons],
            "seconds": {"total": total_seconds, "peer_setup": setup_seconds},
            "swept": swept,
        }
        options.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"results written to {options.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
