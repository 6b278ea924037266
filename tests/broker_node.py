"""
A RabbitMQ node of a test's own, for tests that restart, kill or
reconfigure their broker.

L{BrokerNode} runs C{rabbitmq-server} as a child of the test process, under
a node name, ports and directories of its own, so it never disturbs the
shared broker.  Both nodes register with the same epmd, which is harmless.
The node listens on 127.0.0.1 only: AMQP on L{BrokerNode.port} and Erlang
distribution on L{BrokerNode.dist_port}.  It loads no plugins.

A node takes seconds to start: 3 to 6 s, a graceful stop 2 to 3 s and a
restart 7 to 8 s, measured with C{python -m tests.broker_node} and RabbitMQ
3.10.8 on a 2-core machine.  So tests that can share a node should use
L{shared_node}, which starts one node per test class on first use.
L{start_node} gives a test a node of its own.

Every node this process started is killed by the cleanup of its test, or
at the latest when the process exits.  If the test process itself is
killed, the Linux parent-death signal makes the node's start script stop
the node, and the next run removes the directories left behind.

Running as root on a Debian-style installation, the node uses the cookie
of the C{rabbitmq} user, which C{rabbitmqctl} uses there too.  Otherwise it
uses C{~/.erlang.cookie}.  Either way C{rabbitmqctl -n NODE ...} reaches the
node from a shell, and the helper copies the cookie and never changes it.
"""

from __future__ import annotations

import atexit
import math
import os
import pwd
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, error
from twisted.internet import reactor as global_reactor
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial import unittest

_log = Logger()

# The reactor's interfaces have no type information mypy can use.
reactor: Any = global_reactor

# Where to look for the RabbitMQ scripts when they are not on PATH.
SEARCH_DIRECTORIES = ("/usr/sbin", "/usr/lib/rabbitmq/bin")

# How long, in seconds, a node may take to start, and to stop.
START_TIMEOUT = 90.0
STOP_TIMEOUT = 60.0

# How long, in seconds, a plain rabbitmqctl command may take.
CTL_TIMEOUT = 60.0

# Ports a free port must not be: the usual RabbitMQ and epmd ports, and the
# range rabbitmqctl listens on for its own Erlang distribution.
_RESERVED_PORTS = frozenset({4369, 5671, 5672, 15672, 25672, *range(35672, 35683)})

_DIRECTORY_PREFIX = "txass-broker-"

# The program run as the node's parent-death guard: Linux sends SIGTERM to
# the start script if this process dies, and the script stops the node.
_PARENT_DEATH_GUARD = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGTERM)\n"  # 1 is PR_SET_PDEATHSIG.
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('the test process ended before the node started')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class BrokerNodeError(Exception):
    """
    A private RabbitMQ node failed to start, stop or run a command.
    """


@dataclass(frozen=True)
class RabbitMQScripts:
    """
    The paths of the RabbitMQ scripts that run as the calling user.

    Debian's C{/usr/sbin} scripts are wrappers that switch to the
    C{rabbitmq} user; these are the scripts the wrappers run.
    """

    server: str
    ctl: str


def find_rabbitmq(search: Iterable[str] | None = None) -> RabbitMQScripts:
    """
    Find C{rabbitmq-server} and C{rabbitmqctl}.

    @param search: The directories to search; by default those of C{PATH},
        then L{SEARCH_DIRECTORIES}.
    @raise unittest.SkipTest: if either script is not found, so a test
        that needs a node is skipped where RabbitMQ is not installed.
    """
    if search is None:
        search = [*os.environ.get("PATH", "").split(os.pathsep), *SEARCH_DIRECTORIES]
    directories = [directory for directory in search if directory]
    paths = {}
    for name in ("rabbitmq-server", "rabbitmqctl"):
        found = shutil.which(name, path=os.pathsep.join(directories))
        if found is None:
            raise unittest.SkipTest(f"{name} is not installed: it was not found in {', '.join(directories)}")
        paths[name] = _unwrapped(found, name)
    return RabbitMQScripts(server=paths["rabbitmq-server"], ctl=paths["rabbitmqctl"])


def _unwrapped(path: str, name: str) -> str:
    """
    Return the script that C{path} runs, past Debian's user-switching
    wrapper.
    """
    real = os.path.realpath(path)
    if os.path.basename(real) == "rabbitmq-script-wrapper":
        inner = os.path.join(os.path.dirname(real), name)
        if os.access(inner, os.X_OK):
            return inner
    return real


_ports_given: set[int] = set()


def free_port() -> int:
    """
    Return a TCP port free on 127.0.0.1, found by binding port 0.

    The port is free when this returns, and no other call in this process
    returns it again.

    NOTE: another program may still take the port before the node listens
    on it, and then the node fails to start; nothing retries with another.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port not in _RESERVED_PORTS and port not in _ports_given:
            _ports_given.add(port)
            return port
    raise BrokerNodeError("no free port on 127.0.0.1 after 100 tries")


def _cookie_files() -> list[str]:
    """
    Return the cookie files C{rabbitmqctl} run by this user would use, the
    first preferred.
    """
    files = []
    if os.geteuid() == 0:
        try:
            files.append(os.path.join(pwd.getpwnam("rabbitmq").pw_dir, ".erlang.cookie"))
        except KeyError:
            pass
    files.append(os.path.join(os.path.expanduser("~"), ".erlang.cookie"))
    return files


def _read_cookie() -> bytes | None:
    for path in _cookie_files():
        try:
            with open(path, "rb") as cookie:
                value = cookie.read().strip()
        except OSError:
            continue
        if value:
            return value
    return None


def _parent_pid(pid: int) -> int | None:
    """
    Return the parent of process C{pid}, or L{None} if it is not running.
    """
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # Fields after the command name: state, then the parent's pid.
    return None if fields[0] == "Z" else int(fields[1])


def _children(pid: int) -> list[int]:
    """
    Return the pids of the running child processes of process C{pid}.
    """
    children = []
    # NOTE: Linux only; elsewhere no child is found, so killing a node
    # kills its start script and may leave the Erlang VM running.
    for entry in os.listdir("/proc") if os.path.isdir("/proc/self") else []:
        if entry.isdigit() and _parent_pid(int(entry)) == pid:
            children.append(int(entry))
    return children


def _read_pid(path: str) -> int | None:
    try:
        with open(path) as pid_file:
            return int(pid_file.read().strip())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class _Result:
    code: int | None
    output: str
    errors: str
    timed_out: bool


class _Command(ProcessProtocol):
    """
    A short-lived command run by the reactor, whose output is collected.

    @ivar finished: Fires with a L{_Result} once the process has ended.
    """

    def __init__(self, argv: list[str], environment: Mapping[str, str], path: str, timeout: float) -> None:
        self.finished: defer.Deferred[_Result] = defer.Deferred()
        self._output = bytearray()
        self._errors = bytearray()
        self._timed_out = False
        self._process = reactor.spawnProcess(self, argv[0], argv, env=dict(environment), path=path)
        self._timer = reactor.callLater(timeout, self._expire)

    def _expire(self) -> None:
        self._timed_out = True
        self.kill()

    def kill(self) -> None:
        """
        Kill the command if it still runs.  L{finished} fires once it has
        ended.
        """
        if not self.finished.called:
            try:
                self._process.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass

    def outReceived(self, data: bytes) -> None:
        self._output += data

    def errReceived(self, data: bytes) -> None:
        self._errors += data

    def processEnded(self, reason: Failure) -> None:
        if self._timer.active():
            self._timer.cancel()
        code = getattr(reason.value, "exitCode", None)
        result = _Result(code, self._output.decode(errors="replace"), self._errors.decode(errors="replace"), self._timed_out)
        self.finished.callback(result)


class _NodeProcess(ProcessProtocol):
    """
    The protocol of a node's start script, whose output goes to a file.
    """

    def __init__(self) -> None:
        self.ended = False
        self.reason: Failure | None = None
        self._waiters: list[defer.Deferred[None]] = []

    def when_ended(self) -> defer.Deferred[None]:
        """
        Return a Deferred that fires once the start script has exited.
        """
        if self.ended:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(d)
        return d

    def processEnded(self, reason: Failure) -> None:
        self.ended = True
        self.reason = reason
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)


def _first_of(*deferreds: defer.Deferred[Any]) -> defer.Deferred[int]:
    """
    Return a Deferred that fires with the index of the first of
    C{deferreds} to fire; unlike L{defer.race}, it cancels none of them.
    """
    first: defer.Deferred[int] = defer.Deferred()

    for index, d in enumerate(deferreds):

        def fire(value: object, index: int = index) -> object:
            if not first.called:
                first.callback(index)
            return value

        d.addBoth(fire)
    return first


def _pause(seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    global_reactor.callLater(seconds, d.callback, None)  # type: ignore[attr-defined]
    return d


async def _within(d: defer.Deferred[Any], seconds: float, description: str) -> Any:
    try:
        return await d.addTimeout(seconds, reactor)
    except defer.TimeoutError:
        raise BrokerNodeError(f"{description} timed out after {seconds} s") from None


# Every node of this process not yet closed, killed at exit.
_open_nodes: set[BrokerNode] = set()


class BrokerNode:
    """
    A RabbitMQ node run by this process, with its own node name, ports and
    directories under a temporary folder.

    Create it, then call L{start}; call L{close} when done, or let
    L{start_node} or L{shared_node} arrange that.  Methods that return a
    Deferred fire once the event happened, and fail with L{BrokerNodeError}
    when it did not happen within their timeout.

    @ivar name: The Erlang node name, C{txass-test-HEX@localhost}.
    @ivar port: The AMQP port, on 127.0.0.1.
    @ivar dist_port: The Erlang distribution port, on 127.0.0.1.
    @ivar directory: The temporary folder holding the node's configuration,
        data and logs, removed by L{close}.
    @ivar durations: The seconds the last C{start}, C{stop}, C{kill} and
        C{restart} took, by name.
    """

    def __init__(
        self,
        config: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        *,
        start_timeout: float = START_TIMEOUT,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        """
        Choose the node's name and ports and write its configuration.

        @param config: Extra lines of C{rabbitmq.conf}, such as
            C{"consumer_timeout = 5000"}.
        @param env: Extra environment variables of the node and of
            L{ctl}, applied last.
        @raise unittest.SkipTest: if RabbitMQ is not installed.
        """
        self.scripts = find_rabbitmq()
        _remove_stale_directories()
        self.name = f"txass-test-{uuid.uuid4().hex[:12]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.durations: dict[str, float] = {}
        self.directory = tempfile.mkdtemp(prefix=_DIRECTORY_PREFIX)
        self.pid_file = os.path.join(self.directory, "node.pid")
        self.output_file = os.path.join(self.directory, "node.out")
        self.log_file = os.path.join(self.directory, "log", f"{self.name}.log")
        self._pid: int | None = None
        # The process transport of the start script.
        self._process: Any = None
        self._protocol: _NodeProcess | None = None
        _open_nodes.add(self)
        self._write_files(list(config))
        self._environment = self._make_environment(env or {})

    @property
    def url(self) -> str:
        """
        The AMQP URL of the node's default vhost, as guest.
        """
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    @property
    def running(self) -> bool:
        """
        Whether the node's OS process runs.
        """
        return self._protocol is not None and not self._protocol.ended

    @property
    def pid(self) -> int | None:
        """
        The OS process id of the running node, from its pid file.
        """
        return self._pid if self.running else None

    def _write_files(self, config: list[str]) -> None:
        for folder in ("home", "mnesia", "log"):
            os.mkdir(os.path.join(self.directory, folder))
        with open(os.path.join(self.directory, "owner.pid"), "w") as owner:
            owner.write(f"{os.getpid()}\n")
        with open(os.path.join(self.directory, "rabbitmq.conf"), "w") as conf:
            conf.write(f"# A private test node, {self.name}.\n")
            conf.write(f"listeners.tcp.1 = 127.0.0.1:{self.port}\n")
            conf.writelines(f"{line}\n" for line in config)
        with open(os.path.join(self.directory, "enabled_plugins"), "w") as plugins:
            plugins.write("[].\n")
        # An empty environment file, so /etc/rabbitmq/rabbitmq-env.conf,
        # which names the shared node, is not read.
        with open(os.path.join(self.directory, "rabbitmq-env.conf"), "w") as env_file:
            env_file.write("# Everything is set by the environment.\n")
        cookie = _read_cookie()
        if cookie is None:
            cookie = secrets.token_hex(20).upper().encode()
            _log.warn(
                "No Erlang cookie found in {files}, so node {node} has a random one: only BrokerNode.ctl can reach it",
                files=_cookie_files(),
                node=self.name,
            )
        cookie_path = os.path.join(self.directory, "home", ".erlang.cookie")
        descriptor = os.open(cookie_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(descriptor, "wb") as cookie_file:
            cookie_file.write(cookie)

    def _make_environment(self, extra: Mapping[str, str]) -> dict[str, str]:
        # Nothing of the caller's RabbitMQ settings may reach the node, nor
        # NOTIFY_SOCKET, which makes the start script act as a systemd unit.
        environment = {
            key: value for key, value in os.environ.items() if not key.startswith("RABBITMQ_") and key != "NOTIFY_SOCKET"
        }
        flags = environment.get("ERL_FLAGS", "")
        directory = self.directory
        environment.update(
            {
                "HOME": os.path.join(directory, "home"),
                "RABBITMQ_NODENAME": self.name,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_MNESIA_BASE": os.path.join(directory, "mnesia"),
                "RABBITMQ_LOG_BASE": os.path.join(directory, "log"),
                "RABBITMQ_CONFIG_FILE": os.path.join(directory, "rabbitmq.conf"),
                "RABBITMQ_CONF_ENV_FILE": os.path.join(directory, "rabbitmq-env.conf"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(directory, "enabled_plugins"),
                "RABBITMQ_PID_FILE": self.pid_file,
                "ERL_CRASH_DUMP": os.path.join(directory, "erl_crash.dump"),
                # An epmd started by this node, and the node's distribution
                # listener, take loopback only.
                "ERL_EPMD_ADDRESS": "127.0.0.1",
                "ERL_FLAGS": f"{flags} -kernel inet_dist_use_interface {{127,0,0,1}}".strip(),
            }
        )
        environment.update(extra)
        return environment

    def start(self) -> defer.Deferred[None]:
        """
        Start the node, keeping the data of an earlier run.

        @return: A Deferred that fires once RabbitMQ has started on the
            node.  It fails with L{BrokerNodeError}, including the end of
            the node's output, if the node exits or does not start in time;
            a node that did not start in time is killed.
        """
        return defer.Deferred.fromCoroutine(self._timed("start", self._start))

    def stop(self) -> defer.Deferred[None]:
        """
        Stop the node gracefully with C{rabbitmqctl stop}.

        @return: A Deferred that fires once the node's OS process has
            exited, at once if the node is not running.
        """
        return defer.Deferred.fromCoroutine(self._timed("stop", self._stop))

    def kill(self) -> defer.Deferred[None]:
        """
        Kill the node's OS process with SIGKILL, as a crash would.

        @return: A Deferred that fires once the process has exited, at once
            if the node is not running.
        """
        return defer.Deferred.fromCoroutine(self._timed("kill", self._kill))

    def restart(self) -> defer.Deferred[None]:
        """
        Stop the node gracefully and start it again with the same name,
        ports and data, so durable queues and persistent messages remain.
        """

        async def restart() -> None:
            await self._stop()
            await self._start()

        return defer.Deferred.fromCoroutine(self._timed("restart", restart))

    def ctl(self, *arguments: str, quiet: bool = True, timeout: float = CTL_TIMEOUT) -> defer.Deferred[str]:
        """
        Run C{rabbitmqctl} against this node.

        @param arguments: The command and its arguments, such as
            C{"list_queues", "name"}.  They cannot name another node.
        @param quiet: Whether to pass C{-q}, leaving only the command's
            own output.
        @return: A Deferred that fires with the standard output, or fails
            with L{BrokerNodeError} if the command failed or timed out.
        @raise ValueError: if C{arguments} name a node.
        """
        for argument in arguments:
            if argument in ("-n", "--node") or argument.startswith("--node="):
                raise ValueError(f"ctl runs against {self.name} only, so it rejects {argument!r}")
        return defer.Deferred.fromCoroutine(self._ctl(list(arguments), quiet=quiet, timeout=timeout))

    def close(self) -> defer.Deferred[None]:
        """
        Kill the node if it runs and remove its folder.  It cannot start
        again afterwards.
        """

        async def close() -> None:
            await self._kill()
            self._remove()

        return defer.Deferred.fromCoroutine(close())

    def when_exited(self) -> defer.Deferred[None]:
        """
        Return a Deferred that fires once the node's OS process has exited,
        whatever ended it, or at once if the node is not running.
        """
        if self._protocol is None:
            return defer.succeed(None)
        return self._protocol.when_ended()

    def output_excerpt(self, lines: int = 30) -> str:
        """
        Return, for error messages, the first error lines and the last
        C{lines} lines of the node's console output and of its log file.

        RabbitMQ logs the cause of a failed boot first and crash reports
        after it, so the tail alone may miss the cause.
        """
        parts = []
        for path in (self.output_file, self.log_file):
            try:
                with open(path, errors="replace") as text:
                    content = text.read().splitlines()
            except OSError:
                continue
            errors = [line for line in content[:-lines] if "[error]" in line][:10]
            if errors:
                parts.append(f"--- first errors in {path}\n" + "\n".join(errors))
            parts.append(f"--- end of {path}\n" + "\n".join(content[-lines:]))
        return "\n".join(parts) or "(no output)"

    async def _timed(self, operation: str, run: Callable[[], Any]) -> None:
        started = time.monotonic()
        await run()
        self.durations[operation] = time.monotonic() - started
        _log.info(
            "{operation} of RabbitMQ node {node} took {seconds:.2f} s",
            operation=operation,
            node=self.name,
            seconds=self.durations[operation],
        )

    async def _start(self) -> None:
        if self.running:
            raise BrokerNodeError(f"node {self.name} is already running")
        if not os.path.isdir(self.directory) or self not in _open_nodes:
            raise BrokerNodeError(f"node {self.name} is closed: create a new BrokerNode")
        # A pid file left by a killed node would end the wait below early.
        if os.path.exists(self.pid_file):
            os.remove(self.pid_file)
        self._spawn()
        assert self._protocol is not None
        wait = _Command(
            [self.scripts.ctl, "-n", self.name, "wait", "--timeout", str(math.ceil(self.start_timeout)), self.pid_file],
            self._environment,
            self.directory,
            self.start_timeout + 15,
        )
        ended = self._protocol.when_ended()
        if await _first_of(wait.finished, ended) == 1:
            wait.kill()
            await wait.finished
            reason = self._protocol.reason.getErrorMessage() if self._protocol.reason else "unknown reason"
            raise BrokerNodeError(f"node {self.name} exited while starting ({reason}):\n{self.output_excerpt()}")
        result = await wait.finished
        if result.code != 0:
            outcome = "timed out" if result.timed_out else f"failed with exit code {result.code}"
            await self._kill()
            raise BrokerNodeError(
                f"waiting for node {self.name} to start {outcome}: {result.output}{result.errors}\n{self.output_excerpt()}"
            )
        self._pid = self._node_pid()
        _log.info("Started RabbitMQ node {node} on 127.0.0.1:{port}, OS pid {pid}", node=self.name, port=self.port, pid=self._pid)

    def _spawn(self) -> None:
        argv = [self.scripts.server]
        if sys.platform.startswith("linux"):
            argv = [sys.executable, "-I", "-S", "-c", _PARENT_DEATH_GUARD, str(os.getpid()), *argv]
        null = os.open(os.devnull, os.O_RDONLY)
        output = os.open(self.output_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        protocol = _NodeProcess()
        try:
            # Files, not pipes, so the running node leaves no reader in the
            # reactor that trial would report, and kill, after a test.
            self._process = reactor.spawnProcess(
                protocol, argv[0], argv, env=self._environment, path=self.directory, childFDs={0: null, 1: output, 2: output}
            )
        finally:
            os.close(null)
            os.close(output)
        self._protocol = protocol
        self._pid = None

    def _node_pid(self) -> int | None:
        """
        Return the OS pid of the Erlang VM of this node's start script, read
        from the pid file, or L{None} if that process is not its child.
        """
        if not self.running or self._process is None:
            return None
        pid = _read_pid(self.pid_file)
        if pid is None:
            return None
        script = self._process.pid
        # The start script runs the VM as its child, or becomes the VM when
        # run under systemd.
        if pid == script or _parent_pid(pid) == script:
            return pid
        return None

    async def _stop(self) -> None:
        if not self.running:
            return
        assert self._protocol is not None
        ended = self._protocol.when_ended()
        if os.path.exists(self.pid_file):
            await self._ctl(["stop", self.pid_file], quiet=True, timeout=self.stop_timeout)
        else:
            await self._ctl(["stop"], quiet=True, timeout=self.stop_timeout)
        await _within(ended, self.stop_timeout, f"waiting for node {self.name} to exit")
        _log.info("Stopped RabbitMQ node {node}", node=self.name)

    async def _kill(self) -> None:
        if not self.running:
            return
        assert self._protocol is not None
        ended = self._protocol.when_ended()
        self._kill_processes()
        await _within(ended, self.stop_timeout, f"waiting for node {self.name} to exit after SIGKILL")
        # A node killed while it starts can leave helper processes that the
        # start script had not yet handed to the Erlang VM.
        deadline = time.monotonic() + self.stop_timeout
        while strays := [int(entry) for entry in os.listdir("/proc") if entry.isdigit() and _runs_in(int(entry), self.directory)]:
            if time.monotonic() > deadline:
                raise BrokerNodeError(f"processes {strays} of node {self.name} did not exit after SIGKILL")
            for pid in strays:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            await _pause(0.05)
        _log.info("Killed RabbitMQ node {node}", node=self.name)

    async def _ctl(self, arguments: list[str], *, quiet: bool, timeout: float) -> str:
        argv = [self.scripts.ctl, *(["-q"] if quiet else []), "-n", self.name, *arguments]
        result = await _Command(argv, self._environment, self.directory, timeout).finished
        if result.timed_out:
            raise BrokerNodeError(f"rabbitmqctl {' '.join(arguments)} on {self.name} timed out after {timeout} s")
        if result.code != 0:
            raise BrokerNodeError(
                f"rabbitmqctl {' '.join(arguments)} on {self.name} failed with exit code {result.code}: "
                f"{result.errors.strip() or result.output.strip()}"
            )
        return result.output

    def _remove(self) -> None:
        _open_nodes.discard(self)
        shutil.rmtree(self.directory, ignore_errors=True)

    def _kill_processes(self) -> list[int]:
        """
        Send SIGKILL to the node's processes, and return their pids.

        These are the children of the start script, which exits once they
        have ended.  The script itself is killed only if it has no child
        yet, or if it is the Erlang VM itself.
        """
        if not self.running:
            return []
        script: int = self._process.pid
        targets = _children(script) or [script]
        for pid in targets:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        return targets

    def kill_now(self) -> None:
        """
        Kill the node without the reactor and remove its folder, waiting at
        most a few seconds for the processes to end.  For exit handlers.
        """
        if self.running:
            script: int = self._process.pid
            _wait_for_exit(self._kill_processes(), reap=script)
        self._remove()


def _wait_for_exit(pids: list[int], reap: int | None, seconds: float = 5.0) -> None:
    """
    Wait up to C{seconds} for processes C{pids} to end, reaping our child
    C{reap}; polling, because no reactor runs at exit.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if reap is not None:
            try:
                if os.waitpid(reap, os.WNOHANG)[0] == reap:
                    reap = None
            except ChildProcessError:
                reap = None
        if reap is None and all(not os.path.exists(f"/proc/{pid}") or _parent_pid(pid) is None for pid in pids):
            return
        time.sleep(0.05)


@atexit.register
def _kill_open_nodes() -> None:
    for node in list(_open_nodes):
        node.kill_now()


_stale_checked = False


def _remove_stale_directories() -> None:
    """
    Remove the folders of nodes whose test process has died, once per
    process, killing a node still running in one.
    """
    global _stale_checked
    # Without /proc, a live owner cannot be distinguished from a dead one.
    if _stale_checked or not os.path.isdir("/proc/self"):
        return
    _stale_checked = True
    base = tempfile.gettempdir()
    for entry in os.listdir(base):
        directory = os.path.join(base, entry)
        if not entry.startswith(_DIRECTORY_PREFIX):
            continue
        owner = _read_pid(os.path.join(directory, "owner.pid"))
        if owner is None or os.path.exists(f"/proc/{owner}"):
            continue
        pid = _read_pid(os.path.join(directory, "node.pid"))
        if pid is not None and _runs_in(pid, directory):
            _log.warn("Killing RabbitMQ node process {pid} left by dead test process {owner}", pid=pid, owner=owner)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(directory, ignore_errors=True)


def _runs_in(pid: int, directory: str) -> bool:
    """
    Return whether process C{pid} is a node whose data is in C{directory}.
    """
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            variables = environ.read().split(b"\0")
    except OSError:
        return False
    return f"RABBITMQ_MNESIA_BASE={directory}/mnesia".encode() in variables


def start_node(
    testcase: unittest.TestCase, config: Iterable[str] = (), env: Mapping[str, str] | None = None
) -> defer.Deferred[BrokerNode]:
    """
    Start a node for one test, killed and removed after it.

    @param config: Extra lines of C{rabbitmq.conf}.
    @param env: Extra environment variables of the node.
    @raise unittest.SkipTest: if RabbitMQ is not installed.
    """
    node = BrokerNode(config, env)
    testcase.addCleanup(node.close)

    async def start() -> BrokerNode:
        await node.start()
        return node

    return defer.Deferred.fromCoroutine(start())


# The node shared by the tests of one test class, by class and settings.
_shared: dict[tuple[object, ...], BrokerNode] = {}


def shared_node(
    testcase: unittest.TestCase, config: Iterable[str] = (), env: Mapping[str, str] | None = None
) -> defer.Deferred[BrokerNode]:
    """
    Return the running node shared by the tests of C{testcase}'s class
    with these settings, starting it on first use.

    A node killed or stopped by an earlier test starts again, keeping its
    data.  Only one shared node runs at a time: asking for another closes
    the previous one, so tests of a class, which trial runs one after
    another, start their node once.  The last shared node is killed when
    the process exits.  Tests on a shared node must use unique names and
    undo node-wide changes such as memory limits.  A test that cannot undo
    its changes uses L{start_node} instead.

    Trial calls no C{setUpClass}, so a test class uses it from C{setUp} or
    from its tests::

        class ReconnectTests(unittest.TestCase):
            async def test_reconnects(self) -> None:
                node = await shared_node(self, ["consumer_timeout = 5000"])
                ...

    @raise unittest.SkipTest: if RabbitMQ is not installed.
    """
    config = tuple(config)
    key = (type(testcase), config, tuple(sorted((env or {}).items())))

    async def get() -> BrokerNode:
        for other_key, other in list(_shared.items()):
            if other_key != key:
                del _shared[other_key]
                await other.close()
        node = _shared.get(key)
        if node is None:
            node = _shared[key] = BrokerNode(config, env)
        if not node.running:
            try:
                await node.start()
            except BaseException:
                del _shared[key]
                await node.close()
                raise
        return node

    return defer.Deferred.fromCoroutine(get())


def _measure() -> None:
    """
    Start, restart, kill, start and stop a node, printing how long each
    step took.
    """
    from twisted.internet import task

    async def measure(_: Any) -> None:
        node = BrokerNode()
        try:
            for step in ("start", "restart", "kill", "start", "stop"):
                started = time.monotonic()
                await getattr(node, step)()
                print(f"{step:8} {time.monotonic() - started:6.2f} s")
        finally:
            await node.close()

    task.react(lambda r: defer.Deferred.fromCoroutine(measure(r)))


if __name__ == "__main__":
    _measure()
