"""
Virtual environments of the peer libraries, installed with pip from PyPI.

Each peer gets its own environment under C{bench/.venvs/NAME}, built with
the Python that runs the driver.  An environment whose pinned requirements
and Python version match its marker file is reused as it is.
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

INSTALL_TIMEOUT_SECONDS = 600.0
MARKER = "bench-requirements.txt"


@dataclass(frozen=True)
class PeerLibrary:
    """
    A peer library: its pinned requirements and the reason for the pins.
    """

    name: str
    label: str
    requirements: tuple[str, ...]
    module: str
    pins: str


def _pika_version() -> str:
    try:
        return importlib.metadata.version("pika")
    except importlib.metadata.PackageNotFoundError:
        return "1.3.2"


def peer_libraries() -> dict[str, PeerLibrary]:
    """
    Return the peers by name.  The pika pair uses the pika release that
    txass runs on in this environment, so both measure the same engine.
    """
    pika_version = _pika_version()
    peers = [
        PeerLibrary(
            name="pika",
            label="pika pair",
            requirements=(f"pika=={pika_version}",),
            module="pika",
            pins=f"pika {pika_version}, the release txass runs on in the driver's environment",
        ),
        PeerLibrary(
            name="aio-pika",
            label="aio-pika",
            requirements=("aio-pika==10.2.1", "aiormq==7.2.4", "pamqp==4.0.1"),
            module="aio_pika",
            pins="the newest releases when the suite was written",
        ),
        PeerLibrary(
            name="nameko",
            label="nameko",
            requirements=("nameko==2.14.1", "eventlet==0.41.3", "greenlet==3.5.6", "kombu==5.7.0", "amqp==5.4.2"),
            module="nameko",
            pins=(
                "nameko 2.14.1 is its last release and leaves eventlet and kombu unbounded; "
                "these are the newest releases of both that the suite ran with on Python 3.11"
            ),
        ),
    ]
    return {peer.name: peer for peer in peers}


class PeerUnavailable(Exception):
    """
    Raised when a peer's environment cannot be built.
    """


def _python_in(venv: Path) -> Path:
    return venv / "bin" / "python"


def _marker_text(peer: PeerLibrary) -> str:
    return "\n".join([f"# python {platform.python_version()}", *peer.requirements]) + "\n"


def ensure_environment(peer: PeerLibrary, cache_dir: Path, base_python: str = sys.executable) -> Path:
    """
    Build or reuse the virtual environment of C{peer}, and return its
    Python.

    @raise PeerUnavailable: C{venv} or pip failed, or the library cannot be
        imported afterwards; the message names the log to read.
    """
    venv = cache_dir / peer.name
    python = _python_in(venv)
    marker = venv / MARKER
    expected_marker = _marker_text(peer)
    if python.exists() and marker.exists() and marker.read_text(encoding="utf-8") == expected_marker:
        return python
    try:
        _install(peer, venv, base_python)
        marker.write_text(expected_marker, encoding="utf-8")
    except OSError as error:
        raise PeerUnavailable(f"cannot build {venv}: {error}") from None
    return python


def _install(peer: PeerLibrary, venv: Path, base_python: str) -> None:
    """
    Create C{venv} afresh, install C{peer}'s requirements and import it,
    logging to C{NAME-install.log} beside C{venv}.
    """
    python = _python_in(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    log_path = venv.parent / f"{peer.name}-install.log"
    commands = [
        [base_python, "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *peer.requirements],
        [str(python), "-c", f"import {peer.module}"],
    ]
    with open(log_path, "w", encoding="utf-8") as log:
        for command in commands:
            log.write("$ " + " ".join(command) + "\n")
            log.flush()
            try:
                completed = subprocess.run(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=INSTALL_TIMEOUT_SECONDS,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise PeerUnavailable(
                    f"{' '.join(command[:4])} ... did not finish within {INSTALL_TIMEOUT_SECONDS:g} s; see {log_path}"
                ) from None
            except OSError as error:
                raise PeerUnavailable(f"cannot run {command[0]}: {error}") from None
            if completed.returncode != 0:
                raise PeerUnavailable(
                    f"{' '.join(command[:4])} ... failed with status {completed.returncode}; see {log_path}"
                )
