"""
Worker processes started by the driver, and the sampling of their memory.

Every process is started in a session of its own and recorded in a
L{ProcessPool}, which stops each one by its process id; the driver never
signals a process it did not start.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchkit.rounds import status_kilobytes

# How long a terminated worker has to exit before it is killed.
STOP_GRACE_SECONDS = 10.0

# How many lines of a failed worker's log go into the error message.
LOG_TAIL_LINES = 12


class WorkerFailed(Exception):
    """
    Raised when a worker exits with an error, prints no result, or runs out
    of time.
    """


class Worker:
    """
    A child process whose standard output is read line by line by a thread,
    and whose standard error goes to a log file.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: dict[str, str],
        log_path: Path,
        stdin: bool = False,
    ) -> None:
        """
        Start the process.  With C{stdin}, its standard input is a pipe
        that L{send} writes to, and otherwise it is C{/dev/null}.
        """
        self.name = name
        self.log_path = log_path
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w", encoding="utf-8") as log:
            log.write("$ " + " ".join(argv) + "\n")
            log.flush()
            self.process = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=env,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
            )
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as error:
            return f"(log {self.log_path} unreadable: {error})"
        return "\n".join("    " + line for line in lines[-LOG_TAIL_LINES:])

    def _failure(self, problem: str) -> WorkerFailed:
        return WorkerFailed(f"{self.name} {problem}; last lines of {self.log_path}:\n{self.log_tail()}")

    def _next_line(self, timeout: float) -> str | None:
        """
        Return the next line of output, or L{None} at its end.

        @raise queue.Empty: No line came within C{timeout} seconds.
        """
        line = self._lines.get(timeout=max(timeout, 0.0))
        if line is not None:
            self.output.append(line)
        return line

    def wait_event(self, event: str, timeout: float, idle_timeout: float | None = None) -> dict[str, Any]:
        """
        Read output until the JSON line of C{event}, and return it.

        @param idle_timeout: When given, the seconds the worker may print
            nothing before it is taken as stalled.
        @raise WorkerFailed: The worker exited first, C{timeout} seconds
            passed, or it printed nothing for C{idle_timeout} seconds.
        """
        end = time.monotonic() + timeout
        while True:
            remaining = end - time.monotonic()
            wait = remaining if idle_timeout is None else min(remaining, idle_timeout)
            try:
                line = self._next_line(wait)
            except queue.Empty:
                if wait < remaining:
                    raise self._failure(f"printed nothing for {idle_timeout:g} s before its {event!r} event") from None
                raise self._failure(f"sent no {event!r} event within {timeout:g} s") from None
            if line is None:
                self.stop()
                raise self._failure(f"exited with status {self.process.returncode} before its {event!r} event")
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict) and message.get("event") == event:
                return message

    def result(self, timeout: float) -> dict[str, Any]:
        """
        Wait for the worker to exit, and return the last JSON object it
        printed.

        @raise WorkerFailed: It exited with an error or printed no JSON
            object, or it ran longer than C{timeout} seconds (it is then
            stopped).
        """
        end = time.monotonic() + timeout
        while True:
            try:
                line = self._next_line(end - time.monotonic())
            except queue.Empty:
                self.stop()
                raise self._failure(f"did not finish within {timeout:g} s and was stopped") from None
            if line is None:
                break
        try:
            self.process.wait(timeout=max(end - time.monotonic(), 1.0))
        except subprocess.TimeoutExpired:
            self.stop()
            raise self._failure(f"did not exit within {timeout:g} s and was stopped") from None
        if self.process.returncode != 0:
            raise self._failure(f"exited with status {self.process.returncode}")
        for line in reversed(self.output):
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict) and "event" not in message:
                return message
        raise self._failure("printed no result")

    def send(self, message: dict[str, Any]) -> None:
        """
        Write C{message} as one JSON line to the worker's standard input.

        @raise WorkerFailed: The worker has exited or closed its standard
            input.
        @raise ValueError: The worker was started without C{stdin}.
        """
        if self.process.stdin is None:
            raise ValueError(f"{self.name} was started without a standard input pipe")
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            raise self._failure("closed its standard input") from None

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """
        Terminate the worker with SIGTERM, and kill it with SIGKILL when it
        has not exited after C{grace} seconds.
        """
        if self.process.stdin is not None and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                # Unsent data of a worker that has exited is dropped.
                pass
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=grace)


class ProcessPool:
    """
    Starts workers and stops every one still running.
    """

    def __init__(self, bench_dir: Path, log_dir: Path) -> None:
        self.bench_dir = bench_dir
        self.log_dir = log_dir
        self._workers: list[Worker] = []

    def start(
        self,
        name: str,
        python: Path | str,
        module: str,
        arguments: Sequence[str],
        env: dict[str, str],
        *,
        stdin: bool = False,
    ) -> Worker:
        """
        Run C{python -m module arguments} in C{bench/}, logging to a file
        named after C{name}.  With C{stdin}, the driver can L{Worker.send}
        it lines.
        """
        argv = [str(python), "-m", module, *arguments]
        worker = Worker(name, argv, cwd=self.bench_dir, env=env, log_path=self.log_dir / f"{name}.log", stdin=stdin)
        self._workers.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self._workers:
            worker.stop()
        self._workers.clear()


class MemorySampler:
    """
    Samples the resident memory (C{VmRSS}) of a process at a fixed interval
    in a thread, until stopped or until the process is gone.  Each sample is
    a pair of monotonic seconds and kilobytes.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sample-{pid}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            kilobytes = status_kilobytes("VmRSS", self.pid)
            if kilobytes is None:
                return
            self.samples.append((time.monotonic(), kilobytes))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def child_environment(*, pythonpath: Path | None) -> dict[str, str]:
    """
    Return the driver's environment for a worker, with C{PYTHONPATH} set to
    C{pythonpath} alone, or removed.
    """
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return env
