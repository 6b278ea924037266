"""
The C{txass} command line, for calling a service from a shell::

    txass call echo greet '{"name": "Ada"}'

C{txass call} connects to the broker, sends one request through
L{txass.RPCClient}, prints the result as one line of JSON on standard
output, closes the connection and exits.  Its exit status distinguishes
the kinds of failure (see L{EXIT_STATUSES}), and its error messages go to
standard error without the broker password.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import textwrap
import traceback
from dataclasses import dataclass, field, fields
from typing import Any, TextIO, cast

from twisted.internet import defer, task
from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    globalLogBeginner,
    textFileLogObserver,
)

import txass
from txass import _envelope
from txass._connection import DEFAULT_URL, URL_ENVIRONMENT_VARIABLE, BrokerAddress, InvalidURL, parse_url
from txass._rpc import DEFAULT_TIMEOUT
from txass._topology import check_service_name
from txass._util import wait_at_most, when_done
from txass.errors import (
    CallTimeout,
    ChannelClosed,
    ConnectionFailed,
    ConnectionLost,
    EncodingError,
    InvalidName,
    InvalidReply,
    PublishFailed,
    RemoteError,
    ServiceNotFound,
)

EXIT_OK = 0
EXIT_REMOTE_ERROR = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_CONNECTION_ERROR = 4
EXIT_SERVICE_NOT_FOUND = 5
# EX_SOFTWARE of sysexits.h.
EXIT_INTERNAL_ERROR = 70
# A shell reports a process killed by signal N as 128 + N.
EXIT_SIGNAL_BASE = 128
EXIT_INTERRUPTED = EXIT_SIGNAL_BASE + 2

EXIT_STATUSES: tuple[tuple[str, str], ...] = (
    (str(EXIT_OK), "the call succeeded and its result was printed on stdout"),
    (
        str(EXIT_REMOTE_ERROR),
        "remote error: the handler raised an exception, or the reply is not a txass "
        "reply.  The remote type, message and traceback (when the service sends "
        "tracebacks) are printed on stderr.",
    ),
    (str(EXIT_USAGE), "usage error: a missing or invalid argument, JSON value, timeout or broker URL"),
    (
        str(EXIT_TIMEOUT),
        "timeout: no reply within --timeout seconds.  The request may still be served later.",
    ),
    (
        str(EXIT_CONNECTION_ERROR),
        "connection error: the broker could not be reached (connection refused or timed "
        "out, authentication failed, vhost not found), the connection or channel closed "
        "before the reply came, or the broker rejected the request",
    ),
    (
        str(EXIT_SERVICE_NOT_FOUND),
        "service not found: the broker has no queue for the service.  Start a server of "
        "the service first.",
    ),
    (str(EXIT_INTERNAL_ERROR), "internal error in txass.  The traceback is printed on stderr."),
    (
        "128+N",
        f"interrupted by signal N before the result came ({EXIT_INTERRUPTED} for Ctrl-C "
        f"or SIGINT, {EXIT_SIGNAL_BASE + 15} for SIGTERM)",
    ),
)

# Seconds that closing the connection may take before the process exits
# anyway, because a broker that stopped responding must not keep a finished
# call waiting.
CLOSE_TIMEOUT = 5.0

# The connection_timeout of a broker URL without that option, in seconds.
_DEFAULT_CONNECTION_TIMEOUT = next(
    option.default for option in fields(BrokerAddress) if option.name == "connection_timeout"
)

_log = Logger(namespace="txass.cli")


@dataclass(frozen=True, slots=True)
class CallArguments:
    """
    The validated arguments of C{txass call}.

    @ivar url: The broker URL, which may contain a password.
    @ivar timeout: Seconds to wait for the reply.
    """

    service: str
    method: str
    data: Any
    meta: dict[str, Any]
    timeout: float
    url: str = field(repr=False)
    verbose: bool = False


def _format_statuses() -> str:
    width = max(len(status) for status, _ in EXIT_STATUSES)
    lines = ["exit status:"]
    for status, meaning in EXIT_STATUSES:
        lines.append(
            textwrap.fill(
                meaning,
                width=79,
                initial_indent=f"  {status.ljust(width)}  ",
                subsequent_indent=" " * (width + 4),
            )
        )
    return "\n".join(lines)


_CALL_EXAMPLES = """
examples:
  txass call echo greet '{"name": "Ada"}'
  txass call --timeout 5 --meta '{"user": "ops"}' billing total '[1, 2, 3]'
  txass call -b amqps://user:password@rabbit.example:5671/prod inventory count
"""


def _json_type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _json_value(text: str) -> Any:
    """
    Parse one JSON value that can be sent in a request.

    Python's C{json} module accepts C{NaN} and C{Infinity}, which are not
    JSON, so they are rejected here.

    @raise argparse.ArgumentTypeError: if C{text} is not valid JSON or
        cannot be sent.
    """
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None
    except RecursionError:
        raise argparse.ArgumentTypeError("not valid JSON: nested too deeply") from None
    try:
        _envelope.encode_json(value)
    except EncodingError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def _json_object(text: str) -> dict[str, Any]:
    value = _json_value(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"must be a JSON object such as '{{\"user\": \"ops\"}}', not {_json_type_name(value)}"
        )
    return value


def _timeout(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds greater than 0, not {text!r}")
    return seconds


def _service_name(text: str) -> str:
    try:
        return check_service_name(text)
    except InvalidName as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _method_name(text: str) -> str:
    try:
        _envelope.encode_request(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _broker_url(text: str) -> str:
    # The message of InvalidURL never contains the password; the value is
    # not repeated in the error for the same reason.
    try:
        parse_url(text)
    except InvalidURL as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """
    Build the parser of the C{txass} command.

    @return: The parser of C{txass} and that of its subcommand C{call}.
    """
    parser = argparse.ArgumentParser(
        prog="txass",
        description="Command-line tools for txass services on RabbitMQ.",
        epilog="Run 'txass COMMAND --help' for the options and exit statuses of a command.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {txass.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # argparse formats help with the % operator, so a literal % is written %%.
    default_url = DEFAULT_URL.replace("%", "%%")
    call = commands.add_parser(
        "call",
        help="Call a method of a service and print its result as JSON.",
        description=textwrap.fill(
            "Call METHOD of SERVICE with JSON_DATA, wait for the reply and print the "
            "result as one line of JSON on stdout.  Errors go to stderr, and the exit "
            "status shows what failed.",
            width=79,
        ),
        epilog=_format_statuses() + "\n" + _CALL_EXAMPLES,
        # Option help is wrapped as usual, but the description and the
        # epilog keep their line breaks.
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    call.add_argument("service", metavar="SERVICE", type=_service_name, help="Name of the service to call.")
    call.add_argument("method", metavar="METHOD", type=_method_name, help="Name of the method to call.")
    call.add_argument(
        "data",
        metavar="JSON_DATA",
        nargs="?",
        type=_json_value,
        default=None,
        help=(
            "The request's data as one JSON value, such as '{\"name\": \"Ada\"}' or '[1, 2]' "
            "[default: null].  Put -- before a number in exponent form such as -1e3, "
            "which would otherwise be taken for an option."
        ),
    )
    call.add_argument(
        "-b",
        "--broker",
        metavar="URL",
        type=_broker_url,
        default=None,
        help=(
            f"AMQP URI of the broker, such as amqp://user:password@host:5672/%%2F "
            f"[default: ${URL_ENVIRONMENT_VARIABLE}, else {default_url}].  Error "
            f"messages and logs show it without the password."
        ),
    )
    call.add_argument(
        "-t",
        "--timeout",
        metavar="SECONDS",
        type=_timeout,
        default=DEFAULT_TIMEOUT,
        help=(
            f"Seconds to wait for the reply once connected, a number greater than 0 "
            f"[default: {DEFAULT_TIMEOUT:g}].  Connecting has its own limit, the broker "
            f"URL option connection_timeout ({_DEFAULT_CONNECTION_TIMEOUT:g} seconds unless set)."
        ),
    )
    call.add_argument(
        "--meta",
        metavar="JSON_OBJECT",
        type=_json_object,
        default={},
        help=(
            "A JSON object sent as the request's meta, which the handler reads as "
            "txass.current_request().meta [default: {}]."
        ),
    )
    call.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="Log connection and call events of txass and pika to stderr (off by default).",
    )
    return parser, call


def parse_arguments(argv: list[str] | None = None) -> CallArguments:
    """
    Parse and validate the command line.

    @param argv: The arguments after the program name; C{sys.argv[1:]} when
        not given.
    @raise SystemExit: with status 0 after C{--help} or C{--version}, and
        with status 2 after printing the usage and an error on stderr when
        an argument is missing or invalid.
    """
    parser, call = build_parser()
    namespace = parser.parse_args(argv)
    url = namespace.broker
    if url is None:
        # The same fallback as parse_url(None), resolved here so that an
        # invalid environment variable is a usage error that names it.
        url = os.environ.get(URL_ENVIRONMENT_VARIABLE) or DEFAULT_URL
        try:
            parse_url(url)
        except InvalidURL as e:
            call.error(f"environment variable {URL_ENVIRONMENT_VARIABLE}: {e}")
    return CallArguments(
        service=namespace.service,
        method=namespace.method,
        data=namespace.data,
        meta=namespace.meta,
        timeout=namespace.timeout,
        url=url,
        verbose=namespace.verbose,
    )


def configure_logging(verbose: bool, stream: TextIO) -> None:
    """
    Send the log events of Twisted, txass and pika to C{stream} when
    C{verbose} is true, and drop them otherwise.

    Without this, Twisted would write critical events, such as an unhandled
    error in a Deferred, to stderr, and Python's C{logging} would write
    pika's warnings there.
    """
    # Twisted declares its observers and predicates with zope.interface,
    # which mypy does not check, so they are typed here through cast().
    observers: list[ILogObserver] = []
    if verbose:
        predicate = cast(ILogFilterPredicate, LogLevelFilterPredicate(defaultLogLevel=LogLevel.info))
        observer = FilteringLogObserver(cast(ILogObserver, textFileLogObserver(stream)), [predicate])
        observers.append(cast(ILogObserver, observer))
        logging.basicConfig(
            stream=stream,
            level=logging.INFO,
            format="%(asctime)s [%(name)s#%(levelname)s] %(message)s",
        )
    else:
        # A handler on the root logger stops logging from falling back to
        # writing warnings to stderr.
        logging.getLogger().addHandler(logging.NullHandler())
    # Standard output carries the result alone, so it is not redirected.
    globalLogBeginner.beginLoggingTo(observers, discardBuffer=not verbose, redirectStandardIO=False)


def format_result(value: Any, encoding: str | None) -> str:
    """
    Format a result as one line of JSON.

    Non-ASCII text is kept as is when C{encoding} can encode it, and written
    as C{\\u} escapes otherwise (including lone surrogates, which no
    encoding can write).

    @raise InvalidReply: if C{value} contains a float JSON cannot represent,
        which only a server that is not txass can send.
    """
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError as e:
        raise InvalidReply(f"the result cannot be printed as JSON: {e}") from None
    try:
        text.encode(encoding or "utf-8")
    except (UnicodeEncodeError, LookupError):
        text = json.dumps(value, ensure_ascii=True, allow_nan=False)
    return text


def describe_failure(error: BaseException, arguments: CallArguments) -> tuple[int, str]:
    """
    Choose the exit status and the message on stderr for a failed call.

    @return: The exit status and the message, which may span several lines.
    """
    if isinstance(error, RemoteError):
        message = f"remote error: {error.type}: {error.message}"
        if error.traceback:
            message += "\n" + error.traceback.rstrip("\n")
        return EXIT_REMOTE_ERROR, message
    if isinstance(error, InvalidReply):
        return EXIT_REMOTE_ERROR, str(error)
    if isinstance(error, CallTimeout):
        return EXIT_TIMEOUT, f"timed out: {error}; the request may still be served later"
    # ServiceNotFound derives from PublishFailed, so it is checked first.
    if isinstance(error, ServiceNotFound):
        return EXIT_SERVICE_NOT_FOUND, str(error)
    if isinstance(error, (ConnectionFailed, ConnectionLost, ChannelClosed, PublishFailed)):
        return EXIT_CONNECTION_ERROR, str(error)
    if isinstance(error, (InvalidURL, InvalidName, EncodingError)):
        # parse_arguments checks these before anything connects.
        return EXIT_USAGE, str(error)
    details = "".join(traceback.format_exception(error)).rstrip("\n")
    return EXIT_INTERNAL_ERROR, f"internal error while calling {arguments.service}.{arguments.method}:\n{details}"


class CallCommand:
    """
    One run of C{txass call}: connect, call, print, close.

    When the reactor shuts down before the result came (on SIGINT or
    SIGTERM), the connection attempt or the call in flight is cancelled,
    the connection is closed, and the run ends with status 128 + the
    signal number.
    """

    def __init__(self, arguments: CallArguments, reactor: Any, stdout: TextIO, stderr: TextIO) -> None:
        self._arguments = arguments
        self._reactor = reactor
        self._stdout = stdout
        self._stderr = stderr
        self._in_flight: defer.Deferred[Any] | None = None
        # What the command is waiting for, named in the message when it is
        # interrupted.
        self._waiting_for = "the connection to the broker"
        self._interrupted = False
        self._done: defer.Deferred[int] | None = None

    def run(self) -> defer.Deferred[int]:
        """
        Run the command.

        @return: A Deferred that fires with the exit status.  Every
            C{Exception} raised on the way is reported on stderr and turned
            into a status.
        """
        self._done = defer.Deferred.fromCoroutine(self._run())
        self._reactor.addSystemEventTrigger("before", "shutdown", self._on_shutdown)
        return self._done

    def _on_shutdown(self) -> defer.Deferred[None] | None:
        # The reactor waits for the returned Deferred, so the connection is
        # closed before the process exits.
        assert self._done is not None
        if self._done.called:
            return None
        self._interrupted = True
        if self._in_flight is not None:
            self._in_flight.cancel()
        return when_done(self._done)

    async def _wait(self, d: defer.Deferred[Any]) -> Any:
        """
        Wait for C{d}, which is cancelled if the reactor shuts down first.
        """
        if self._interrupted:
            d.cancel()
        self._in_flight = d
        try:
            return await d
        finally:
            self._in_flight = None

    def _interrupt_status(self) -> int:
        # NOTE: _exitSignal is private to Twisted (present in 26.10): the
        # number of the signal that stopped the reactor.  Without it, the
        # status is that of SIGINT.
        signal_number = getattr(self._reactor, "_exitSignal", None)
        if isinstance(signal_number, int) and signal_number > 0:
            return EXIT_SIGNAL_BASE + signal_number
        return EXIT_INTERRUPTED

    def _error(self, message: str) -> None:
        self._stderr.write(f"txass call: {message}\n")
        self._stderr.flush()

    async def _run(self) -> int:
        arguments = self._arguments
        try:
            await self._call()
        except Exception as e:
            if self._interrupted and isinstance(e, defer.CancelledError):
                self._error(f"interrupted while waiting for {self._waiting_for}")
                return self._interrupt_status()
            status, message = describe_failure(e, arguments)
            self._error(message)
            return status
        return EXIT_OK

    async def _call(self) -> None:
        arguments = self._arguments
        broker = await self._wait(txass.connect(arguments.url, reactor=self._reactor))
        try:
            client = broker.rpc(arguments.service)
            self._waiting_for = (
                f"the reply of {arguments.service}.{arguments.method}; the request may still be served"
            )
            result = await self._wait(
                client.call(arguments.method, arguments.data, meta=arguments.meta, timeout=arguments.timeout)
            )
            text = format_result(result, getattr(self._stdout, "encoding", None))
            self._stdout.write(text + "\n")
            self._stdout.flush()
        finally:
            await self._close(broker)

    async def _close(self, broker: txass.Broker) -> None:
        if not await wait_at_most(broker.close(), CLOSE_TIMEOUT, self._reactor):
            _log.warn(
                "closing the connection to {url} did not finish within {seconds} s, so the command "
                "exits without waiting for it",
                url=broker.address.safe_url(),
                seconds=CLOSE_TIMEOUT,
            )


async def _react_main(reactor: Any, arguments: CallArguments) -> None:
    status = await CallCommand(arguments, reactor, sys.stdout, sys.stderr).run()
    raise SystemExit(status)


def main(argv: list[str] | None = None) -> None:
    """
    Run the C{txass} command and end the process with its exit status.

    @param argv: The arguments after the program name; C{sys.argv[1:]} when
        not given.
    @raise SystemExit: always, with the exit status.
    """
    arguments = parse_arguments(argv)
    configure_logging(arguments.verbose, sys.stderr)
    task.react(_react_main, (arguments,))
