"""
A description of the machine, software and broker behind a run.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pika.exceptions

from benchkit.broker import BrokerAdmin

# Run by the Python that runs the txass workers, with their PYTHONPATH.
_VERSIONS_SCRIPT = """
import importlib.metadata, json, txass
print(json.dumps({
    "txass": txass.__version__,
    "txass_path": txass.__file__,
    "twisted": importlib.metadata.version("twisted"),
    "pika": importlib.metadata.version("pika"),
}))
"""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / (1024 * 1024)
    except (OSError, ValueError):
        pass
    return None


def _rabbitmq_version(admin: BrokerAdmin) -> str:
    try:
        properties = admin.server_properties()
    except pika.exceptions.AMQPError:
        properties = {}
    if "version" in properties:
        return f"{properties.get('product', 'RabbitMQ')} {properties['version']}"
    command = shutil.which("rabbitmqctl") or shutil.which("rabbitmqctl", path="/usr/sbin")
    if command is not None:
        try:
            completed = subprocess.run([command, "version"], capture_output=True, text=True, timeout=30, check=False)
            if completed.returncode == 0 and completed.stdout.strip():
                return f"RabbitMQ {completed.stdout.strip()}"
        except (OSError, subprocess.TimeoutExpired):
            pass
    return "unknown"


def txass_versions(python: str, env: dict[str, str], cwd: Path) -> dict[str, str]:
    """
    Return the versions of txass, Twisted and pika that the txass workers
    import, and where txass comes from.

    @raise RuntimeError: They cannot be imported with C{python}.
    """
    completed = subprocess.run(
        [python, "-c", _VERSIONS_SCRIPT], capture_output=True, text=True, env=env, cwd=cwd, timeout=60, check=False
    )
    if completed.returncode != 0:
        lines = completed.stderr.strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"exit status {completed.returncode}, no output")
    versions: dict[str, str] = json.loads(completed.stdout)
    return versions


def source_revision(directory: Path) -> str:
    """
    Return the short git commit of C{directory}, noting uncommitted changes
    to its C{txass/} package, or "unknown" with the reason.
    """
    git = shutil.which("git")
    if git is None:
        return "unknown (git is not installed)"
    try:
        commit = subprocess.run(
            [git, "-C", str(directory), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if commit.returncode != 0:
            return "unknown (not a git checkout)"
        changes = subprocess.run(
            [git, "-C", str(directory), "status", "--porcelain", "--", "txass"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (git failed)"
    revision = commit.stdout.strip()
    if changes.stdout.strip():
        revision += " with uncommitted changes to txass/"
    return revision


def describe(admin: BrokerAdmin, versions: dict[str, str]) -> dict[str, Any]:
    memory = _memory_gib()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory": f"{memory:.1f} GiB" if memory is not None else "unknown",
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "rabbitmq": _rabbitmq_version(admin),
        **versions,
    }
