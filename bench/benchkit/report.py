"""
Tables, ratios and target checks of a run.

Tables are reStructuredText simple tables, so they read well in a terminal
and can be pasted into C{docs/benchmarks.rst} as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from benchkit.workloads import FLOOR_SYSTEM, Measurement, Outcome

# The label and number format of each metric a worker reports.
METRICS: dict[str, tuple[str, str]] = {
    "publish_per_s": ("published/s", "rate"),
    "consume_per_s": ("consumed/s", "rate"),
    "requests_per_s": ("handled/s", "rate"),
    "confirmed_per_s": ("confirmed/s", "rate"),
    "calls_per_s": ("calls/s", "rate"),
    "p50_ms": ("p50 ms", "ms"),
    "p99_ms": ("p99 ms", "ms"),
    "drain_per_s": ("drained/s", "rate"),
    "baseline_rss_mb": ("RSS before drain, MB", "mb"),
    "peak_rss_mb": ("peak RSS, MB", "mb"),
    "rss_growth_mb": ("RSS growth in drain, MB", "mb"),
    "fill_per_s": ("queued/s (casts)", "rate"),
}

# The targets of the suite: cast against the engine floor, RPC against
# the peers, the blocking bridge, and the backlog server's memory.
CAST_FLOOR_RATIO = 0.6
PIKA_CONCURRENT_RATIO = 1.2
NAMEKO_CONCURRENT_RATIO = 5.0
PIKA_SEQUENTIAL_RATIO = 1.0
BLOCKING_CALLS_PER_S = 3000.0
BACKLOG_RSS_MB = 80.0
# The backlog server's memory counts as flat while it grows during the
# drain by at most this fraction of its size before the drain.
BACKLOG_FLAT_FRACTION = 0.05


def format_value(metric: str, value: float) -> str:
    kind = METRICS.get(metric, (metric, "ms"))[1]
    if kind == "rate":
        return f"{value:,.0f}"
    if kind == "mb":
        return f"{value:.1f}"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def simple_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """
    Lay out a reStructuredText simple table.  Every cell of the first
    column must be non-empty, which the format requires.
    """
    widths = [max(len(header), *(len(row[column]) for row in rows)) for column, header in enumerate(headers)]
    border = "  ".join("=" * width for width in widths)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()

    return "\n".join([border, line(headers), border, *(line(row) for row in rows), border])


def measurement_table(measurements: Sequence[Measurement]) -> str:
    rows = []
    for measurement in measurements:
        summary = measurement.summary
        label = METRICS.get(measurement.metric, (measurement.metric, ""))[0]

        def formatted(value: float, metric: str = measurement.metric) -> str:
            return format_value(metric, value)

        rows.append(
            [
                measurement.case,
                measurement.system,
                label,
                formatted(summary.median),
                f"{formatted(summary.minimum)} - {formatted(summary.maximum)}",
                f"{formatted(summary.q1)} - {formatted(summary.q3)}",
            ]
        )
    return simple_table(["case", "system", "metric", "median", "min - max", "IQR"], rows)


@dataclass(frozen=True)
class Ratio:
    """
    txass's median over a peer's median for one metric of one case.
    """

    workload: str
    case: str
    peer: str
    metric: str
    value: float


def ratios(outcome: Outcome) -> list[Ratio]:
    """
    Return txass/peer for calls per second and latency, for every case
    and peer of an RPC workload.
    """
    found = []
    peers = sorted({m.system for m in outcome.measurements if m.system != "txass"}, key=_peer_order)
    cases = list(dict.fromkeys(m.case for m in outcome.measurements))
    for case in cases:
        for peer in peers:
            for metric in ("calls_per_s", "p50_ms", "p99_ms"):
                ours = outcome.find(case, "txass", metric)
                theirs = outcome.find(case, peer, metric)
                if ours is None or theirs is None or theirs.summary.median == 0:
                    continue
                found.append(Ratio(outcome.workload, case, peer, metric, ours.summary.median / theirs.summary.median))
    return found


def _peer_order(label: str) -> int:
    order = ["pika pair", "aio-pika", "nameko"]
    return order.index(label) if label in order else len(order)


def ratio_table(found: Sequence[Ratio]) -> str:
    by_case: dict[tuple[str, str], dict[str, float]] = {}
    for ratio in found:
        by_case.setdefault((ratio.case, ratio.peer), {})[ratio.metric] = ratio.value
    rows = []
    for (case, peer), values in by_case.items():
        rows.append(
            [case, peer]
            + [f"{values[metric]:.2f}" if metric in values else "-" for metric in ("calls_per_s", "p50_ms", "p99_ms")]
        )
    return simple_table(["case", "peer", "calls/s txass/peer", "p50 txass/peer", "p99 txass/peer"], rows)


@dataclass(frozen=True)
class Target:
    """
    A goal, what the run measured for it, and whether it was met (L{None}
    when the run did not measure it).
    """

    goal: str
    measured: str
    met: bool | None

    @property
    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: "not measured"}[self.met]


def _median(outcomes: dict[str, Outcome], workload: str, case: str, system: str, metric: str) -> float | None:
    outcome = outcomes.get(workload)
    if outcome is None:
        return None
    measurement = outcome.find(case, system, metric)
    return measurement.summary.median if measurement is not None else None


def _median_of_metric(outcomes: dict[str, Outcome], workload: str, system: str, metric: str) -> float | None:
    """
    Return the median of the first case of C{workload} in which C{system}
    reports C{metric}.
    """
    outcome = outcomes.get(workload)
    if outcome is None:
        return None
    for measurement in outcome.measurements:
        if (measurement.system, measurement.metric) == (system, metric):
            return measurement.summary.median
    return None


def _ratio_target(goal: str, ours: float | None, theirs: float | None, minimum: float, unit: str) -> Target:
    if ours is None or theirs is None or theirs == 0:
        return Target(goal, "-", None)
    ratio = ours / theirs
    # Three decimals, so that a ratio just below its minimum does not print as equal to it.
    return Target(goal, f"{ratio:.3f} ({ours:,.0f} / {theirs:,.0f} {unit})", ratio >= minimum)


def targets(outcomes: dict[str, Outcome]) -> list[Target]:
    """
    Check the run against the suite's targets, from the medians over
    rounds.  The backlog's memory targets use the worst round.
    """
    return [
        _cast_target(outcomes),
        *_rpc_targets(outcomes),
        _blocking_target(outcomes),
        *_backlog_targets(outcomes.get("backlog")),
    ]


def _cast_target(outcomes: dict[str, Outcome]) -> Target:
    # The engine floor reports consume_per_s only in its consume-only case,
    # and requests_per_s only in its end-to-end case.  The floor measured in
    # turns with the casts comes first, and the engine-floor workload's is
    # used when that one failed.
    floor = _median_of_metric(outcomes, "cast", FLOOR_SYSTEM, "consume_per_s")
    if floor is None:
        floor = _median_of_metric(outcomes, "engine-floor", FLOOR_SYSTEM, "consume_per_s")
    cast = _median_of_metric(outcomes, "cast", "txass", "requests_per_s")
    goal = f"cast end to end >= {CAST_FLOOR_RATIO} x engine-floor consume rate"
    return _ratio_target(goal, cast, floor, CAST_FLOOR_RATIO, "msg/s")


@dataclass(frozen=True)
class Context:
    """
    A ratio printed beside the targets to help read one, with no goal of
    its own.
    """

    label: str
    measured: str


def context(outcomes: dict[str, Outcome]) -> list[Context]:
    """
    Compare txass's casts end to end with pika's Twisted adapter doing the
    same end to end, both with publisher and consumer in separate processes.
    """
    cast = _median_of_metric(outcomes, "cast", "txass", "requests_per_s")
    floor = _median_of_metric(outcomes, "engine-floor", FLOOR_SYSTEM, "requests_per_s")
    label = "cast end to end / engine floor end to end"
    if cast is None or floor is None or floor == 0:
        return [Context(label, "-")]
    return [Context(label, f"{cast / floor:.2f} ({cast:,.0f} / {floor:,.0f} msg/s)")]


def context_table(found: Sequence[Context]) -> str:
    return simple_table(["context (no target)", "measured"], [[c.label, c.measured] for c in found])


def _rpc_targets(outcomes: dict[str, Outcome]) -> list[Target]:
    checks = []
    concurrent = _median(outcomes, "rpc-concurrent", "100 in flight", "txass", "calls_per_s")
    for goal, peer, minimum in (
        (f"rpc 100 in flight >= {PIKA_CONCURRENT_RATIO} x pika pair", "pika pair", PIKA_CONCURRENT_RATIO),
        (f"rpc 100 in flight >= {NAMEKO_CONCURRENT_RATIO:g} x nameko", "nameko", NAMEKO_CONCURRENT_RATIO),
    ):
        theirs = _median(outcomes, "rpc-concurrent", "100 in flight", peer, "calls_per_s")
        checks.append(_ratio_target(goal, concurrent, theirs, minimum, "calls/s"))

    sequential = _median(outcomes, "rpc-sequential", "sequential", "txass", "calls_per_s")
    pika_sequential = _median(outcomes, "rpc-sequential", "sequential", "pika pair", "calls_per_s")
    checks.append(
        _ratio_target("rpc sequential >= pika pair", sequential, pika_sequential, PIKA_SEQUENTIAL_RATIO, "calls/s")
    )
    return checks


def _blocking_target(outcomes: dict[str, Outcome]) -> Target:
    blocking = _median(outcomes, "blocking", "8 threads", "txass", "calls_per_s")
    goal = f"blocking 8 threads >= {BLOCKING_CALLS_PER_S:,.0f} calls/s"
    if blocking is None:
        return Target(goal, "-", None)
    return Target(goal, f"{blocking:,.0f} calls/s", blocking >= BLOCKING_CALLS_PER_S)


def _backlog_targets(outcome: Outcome | None) -> list[Target]:
    rss_goal = f"backlog peak RSS < {BACKLOG_RSS_MB:g} MB"
    flat_goal = f"backlog RSS flat (growth in drain <= {BACKLOG_FLAT_FRACTION:.0%} of RSS before it)"
    peak = growth = baseline = None
    if outcome is not None:
        for measurement in outcome.measurements:
            if measurement.metric == "peak_rss_mb":
                peak = measurement
            elif measurement.metric == "rss_growth_mb":
                growth = measurement
            elif measurement.metric == "baseline_rss_mb":
                baseline = measurement
    found = []
    if peak is None:
        found.append(Target(rss_goal, "-", None))
    else:
        worst = max(peak.values)
        found.append(Target(rss_goal, f"{worst:.1f} MB (largest of {len(peak.values)} rounds)", worst < BACKLOG_RSS_MB))
    if growth is None or baseline is None:
        found.append(Target(flat_goal, "-", None))
    else:
        fractions = [grown / before for grown, before in zip(growth.values, baseline.values)]
        worst_fraction = max(fractions)
        found.append(
            Target(
                flat_goal,
                f"{max(growth.values):.1f} MB at most, {worst_fraction:.1%} of RSS before the drain",
                worst_fraction <= BACKLOG_FLAT_FRACTION,
            )
        )
    return found


def target_table(checks: Sequence[Target]) -> str:
    return simple_table(["target", "measured", "result"], [[t.goal, t.measured, t.verdict] for t in checks])
