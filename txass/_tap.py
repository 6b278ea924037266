"""
The C{twistd ass} command: host one service stage as a long-running daemon.

    twistd -n ass --service echo --reactor mymod.Echo
"""

from __future__ import annotations

import atexit
import math
import os
import signal
import sys
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import usage

from txass._broker import DEFAULT_GRACE, DEFAULT_PREFETCH, Broker
from txass._connection import DEFAULT_URL, URL_ENVIRONMENT_VARIABLE, InvalidURL, add_tls_options, parse_url, read_url_file
from txass._handler import load_handler, make_dispatcher
from txass._policy import DEFAULT_MAX_ATTEMPTS, MAX_ATTEMPTS_LIMIT, Retry, check_max_attempts
from txass._server import DEFAULT_MAX_REQUEST_SIZE, Server
from txass._topology import check_service_name
from txass.errors import ConnectionLost, InvalidHandler, InvalidName, TxassError

# twistd's own exit status for a stage that could not start or lost its
# broker is 0 once the reactor stops; this status replaces it.
EXIT_FAILURE = 1


def _prefetch(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= 65535:
        raise ValueError(f"--prefetch must be an integer from 1 to 65535, not {value!r}")
    return number


def _max_request_size(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"--max-request-size must be a number of bytes >= 1, not {value!r}")
    return number


def _max_attempts(value: str) -> int:
    try:
        return check_max_attempts(int(value))
    except ValueError:
        raise ValueError(f"--max-attempts must be an integer from 1 to {MAX_ATTEMPTS_LIMIT}, not {value!r}") from None


# The TLS options of twistd ass, and the broker URL option each sets.
_TLS_URL_OPTIONS = {
    "tls-cacert": "cacertfile",
    "tls-cert": "certfile",
    "tls-key": "keyfile",
    "tls-server-name": "server_name",
}


def _add_tls_options(options: usage.Options) -> str | None:
    """
    Return the broker URL with the URL options that the TLS command-line
    options set, or the URL unchanged when none is given.

    @raise usage.UsageError: if the URL is not an C{amqps} URL, sets one of
        the options already, or the options do not go together.
    """
    url: str | None = options["broker"]
    added = {name: options[flag] for flag, name in _TLS_URL_OPTIONS.items()}
    if options["tls-insecure-skip-verify"]:
        added["insecure_skip_verify"] = "true"
    flags_given = [f"--{flag}" for flag in (*_TLS_URL_OPTIONS, "tls-insecure-skip-verify") if options[flag]]
    if not flags_given:
        return url
    if url is None:
        url = os.environ.get(URL_ENVIRONMENT_VARIABLE) or DEFAULT_URL
    try:
        url = add_tls_options(url, added)
        parse_url(url)
    except InvalidURL as e:
        raise usage.UsageError(f"{', '.join(flags_given)}: {e}") from None
    return url


def _expose(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",")]
    if not all(names):
        raise ValueError(f"--expose must be method names separated by commas, such as foo,bar, not {value!r}")
    return names


class Options(usage.Options):
    """
    Command-line options of C{twistd ass}.
    """

    synopsis = "--service NAME --reactor MODULE.ATTRIBUTE [options]"
    longdesc = (
        "Serve the requests of one txass service with a handler: a class (a new "
        "instance per request), a module (its public functions), a mapping of "
        "method names to callables, or any other object.  On SIGTERM the stage "
        "stops taking requests, lets those in flight finish and be acknowledged, "
        "and exits with status 0."
    )

    optParameters = [
        ["service", "s", None, "Name of the service to serve (required)."],
        [
            "reactor",
            None,
            None,
            "Handler to serve requests with, as module.attribute, for example "
            "mymod.Echo (required).  The current directory is importable.",
        ],
        ["handler", None, None, "Alias of --reactor."],
        [
            "expose",
            None,
            None,
            "Comma-separated names of the only methods that requests may call, "
            "such as foo,bar [default: every public method of the handler, or "
            "every method marked with @txass.expose].",
            _expose,
        ],
        [
            "broker-file",
            None,
            None,
            "File whose first line is the broker URL, readable by its owner only, "
            "so that the password does not appear in the command line.",
        ],
        [
            "broker",
            "b",
            None,
            f"AMQP URI of the broker, such as amqp://user:password@host:5672/%2F "
            f"[default: ${URL_ENVIRONMENT_VARIABLE}, else amqp://guest:guest@localhost:5672/%2F].",
        ],
        [
            "prefetch",
            "p",
            DEFAULT_PREFETCH,
            "Maximum number of requests held unacknowledged, and so served at once, "
            "by this process (1 to 65535).",
            _prefetch,
        ],
        [
            "grace",
            "g",
            DEFAULT_GRACE,
            "Seconds to let requests in flight finish on shutdown before they are "
            "requeued for another server.",
            float,
        ],
        [
            "max-request-size",
            None,
            DEFAULT_MAX_REQUEST_SIZE,
            "Maximum size of a request body in bytes; a larger request gets a "
            "RequestTooLarge error reply.",
            _max_request_size,
        ],
        [
            "retry-delay",
            None,
            None,
            "Serve a request whose handler failed again after this many seconds, "
            "rather than reply with the error at once; each later delay is "
            "--retry-backoff times longer.",
            float,
        ],
        ["retry-backoff", None, 2.0, "Factor by which each retry delay grows (1 to 100).", float],
        ["retry-max-delay", None, 300.0, "Longest retry delay in seconds.", float],
        [
            "max-attempts",
            None,
            DEFAULT_MAX_ATTEMPTS,
            "Attempts a request gets in all, counting failed attempts when retrying, "
            "resent requests and deliveries that never finished (a crashed server); "
            "then it goes to the queue SERVICE.dead-letter.",
            _max_attempts,
        ],
        [
            "tls-cacert",
            None,
            None,
            "PEM file of the CA certificates to verify the broker's certificate against, in place "
            "of the system trust store.  This and the other --tls options set the broker URL "
            "option of the same meaning (here cacertfile) and need an amqps:// URL.",
        ],
        [
            "tls-cert",
            None,
            None,
            "PEM file of the client certificate, for a broker that requires one; give --tls-key "
            "too (URL option certfile).",
        ],
        [
            "tls-key",
            None,
            None,
            "PEM file of the client certificate's unencrypted private key (URL option keyfile).",
        ],
        [
            "tls-server-name",
            None,
            None,
            "Name to check the broker's certificate against and to send as TLS server name, in "
            "place of the URL's host, for example when connecting by IP address (URL option "
            "server_name).",
        ],
    ]

    optFlags = [
        ["tracebacks", None, "Send the handler's traceback text in error replies (off by default)."],
        [
            "tls-insecure-skip-verify",
            None,
            "INSECURE: do not verify the broker's TLS certificate, so anyone on the network path "
            "can impersonate the broker; each connection logs a warning (URL option "
            "insecure_skip_verify=true).",
        ],
    ]

    def postOptions(self) -> None:
        if self["reactor"] and self["handler"] and self["reactor"] != self["handler"]:
            raise usage.UsageError("--reactor and --handler name the same option; give only one")
        self["reactor"] = self["reactor"] or self["handler"]
        if not self["service"]:
            raise usage.UsageError("--service is required: the name of the service to serve")
        if not self["reactor"]:
            raise usage.UsageError("--reactor is required: the handler to serve requests with, as module.attribute")
        try:
            check_service_name(self["service"])
        except InvalidName as e:
            raise usage.UsageError(str(e)) from None
        if self["broker-file"] is not None:
            if self["broker"] is not None:
                raise usage.UsageError("give --broker or --broker-file, not both")
            try:
                self["broker"] = read_url_file(self["broker-file"])
            except InvalidURL as e:
                raise usage.UsageError(str(e)) from None
        self["broker"] = _add_tls_options(self)
        try:
            parse_url(self["broker"])
        except InvalidURL as e:
            raise usage.UsageError(str(e)) from None
        if not (math.isfinite(self["grace"]) and self["grace"] >= 0):
            raise usage.UsageError(f"--grace must be a finite number of seconds >= 0, not {self['grace']}")
        self["retry"] = None
        if self["retry-delay"] is None:
            for name, default in (("retry-backoff", 2.0), ("retry-max-delay", 300.0)):
                if self[name] != default:
                    raise usage.UsageError(f"--{name} needs --retry-delay, which turns retrying on")
        else:
            max_delay = self["retry-max-delay"]
            if max_delay == 300.0 and self["retry-delay"] > max_delay:
                # The default longest delay gives way to a longer first one.
                max_delay = self["retry-delay"]
            try:
                self["retry"] = Retry(delay=self["retry-delay"], backoff=self["retry-backoff"], max_delay=max_delay)
            except ValueError as e:
                raise usage.UsageError(f"--retry-delay, --retry-backoff, --retry-max-delay: {e}") from None


class StageService(Service):
    """
    The twistd service hosting one txass server.

    It connects on start, and on stop drains the server before closing the
    connection.  When it cannot connect at start, or its server stops for
    good on its own, it logs the error and stops the process with a
    non-zero exit status; a connection lost later is reconnected.
    """

    log = Logger()

    def __init__(
        self,
        service_name: str,
        handler: Any,
        *,
        url: str | None = None,
        prefetch: int = DEFAULT_PREFETCH,
        grace: float | None = DEFAULT_GRACE,
        send_tracebacks: bool = False,
        max_request_size: int = DEFAULT_MAX_REQUEST_SIZE,
        retry: Retry | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        expose: list[str] | None = None,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.service_name = service_name
        self.handler = handler
        self.url = url
        self.prefetch = prefetch
        self.grace = grace
        self.send_tracebacks = send_tracebacks
        self.max_request_size = max_request_size
        self.retry = retry
        self.max_attempts = max_attempts
        self.expose = expose
        self._reactor = reactor
        self._broker: Broker | None = None
        self._server: Server | None = None
        self._starting: defer.Deferred[None] | None = None
        self._stopping = False
        self.exit_code = 0

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._reactor.callWhenRunning(self._install_sigterm_handler)
        self._starting = defer.Deferred.fromCoroutine(self._start())
        self._starting.addErrback(self._start_failed)

    def _install_sigterm_handler(self) -> None:
        # twistd re-raises SIGTERM after a clean shutdown, so the process
        # would end "killed by signal 15".  A drained stage exits with 0.
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_IGN,):
            return
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, number: int, frame: Any) -> None:
        self._reactor.callFromThread(self._terminate)

    def _terminate(self) -> None:
        if self._stopping:
            self.log.info("SIGTERM received again: still draining {service}", service=self.service_name)
            return
        self.log.info("SIGTERM received: draining {service}", service=self.service_name)
        if self._reactor.running:
            self._reactor.stop()

    async def _start(self) -> None:
        from txass import connect

        self._broker = await connect(self.url, reactor=self._reactor)
        self._server = await self._broker.service(self.service_name).react(
            self.handler,
            prefetch=self.prefetch,
            grace=self.grace,
            send_tracebacks=self.send_tracebacks,
            max_request_size=self.max_request_size,
            retry=self.retry,
            max_attempts=self.max_attempts,
            expose=self.expose,
        )
        self._server.when_stopped().addCallback(self._server_stopped)

    def _server_stopped(self, _: None) -> None:
        if not self._stopping:
            self._fail("the server of {service} stopped unexpectedly; exiting")

    def _start_failed(self, failure: Any) -> None:
        if self._stopping and failure.check(defer.CancelledError):
            self.log.info("stopped before serving {service}", service=self.service_name)
            return
        if self._stopping and failure.check(ConnectionLost):
            # Broker.close() ended the start, after the server drained the
            # requests it had taken, if any.
            self.log.info("stopped while starting to serve {service}", service=self.service_name)
            return
        if failure.check(TxassError):
            self.log.error(
                "cannot serve {service}: {error}",
                service=self.service_name,
                error=failure.value,
            )
        else:
            self.log.failure("cannot serve {service}", failure, service=self.service_name)
        self._fail("exiting with status {status}")

    def _fail(self, message: str) -> None:
        self.exit_code = EXIT_FAILURE
        self.log.error(message, service=self.service_name, status=EXIT_FAILURE)
        atexit.register(os._exit, EXIT_FAILURE)
        if self._reactor.running:
            self._reactor.stop()
        else:
            self._reactor.callWhenRunning(self._reactor.stop)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        self._stopping = True
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._broker is None:
            # The stage is still connecting, so there is nothing to drain.
            if self._starting is not None and not self._starting.called:
                self._starting.cancel()
            return
        # The server may still be starting and already serving requests
        # from its first consumer.  Closing the broker lets it finish
        # starting and drain them, whereas cancelling the start would close
        # its channel under them.
        await self._broker.close()


def makeService(options: Options) -> StageService:
    """
    Build the stage from parsed options.

    A handler path that cannot be imported ends the process with a one-line
    error before anything connects.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        handler = load_handler(options["reactor"])
        make_dispatcher(handler, expose=options["expose"])
    except InvalidHandler as e:
        raise SystemExit(f"twistd ass: {e}") from None
    return StageService(
        options["service"],
        handler,
        url=options["broker"],
        prefetch=options["prefetch"],
        grace=options["grace"],
        send_tracebacks=options["tracebacks"],
        max_request_size=options["max-request-size"],
        retry=options["retry"],
        max_attempts=options["max-attempts"],
        expose=options["expose"],
    )
