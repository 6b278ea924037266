"""
The C{txass} command line, for calling a service from a shell::

    txass call echo greet '{"name": "Ada"}'

C{txass call} connects to the broker, sends one request through
L{txass.RPCClient}, prints the result as one line of JSON on standard
output, closes the connection and exits.  Its exit status distinguishes
the kinds of failure (see L{EXIT_STATUSES}), and its error messages go to
standard error without the broker password.

Text that comes from the reply or the broker, such as a remote exception's
message and traceback, reaches standard error with its control characters
escaped (see L{printable_line}), so a service cannot send escape sequences
to the operator's terminal.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import textwrap
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from types import FrameType
from typing import IO, Any, TextIO, cast

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
from txass._connection import (
    DEFAULT_URL,
    URL_ENVIRONMENT_VARIABLE,
    BrokerAddress,
    InvalidURL,
    add_tls_options,
    parse_url,
    read_url_file,
)
from txass._rpc import DEFAULT_TIMEOUT, MAX_TIMEOUT, check_timeout
from txass._topology import check_service_name
from txass._util import wait_at_most, when_done
from txass.errors import (
    BrokerBlocked,
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
# EX_IOERR of sysexits.h.
EXIT_OUTPUT_ERROR = 74
# A shell reports a process killed by signal N as 128 + N.
EXIT_SIGNAL_BASE = 128
EXIT_INTERRUPTED = EXIT_SIGNAL_BASE + 2

# Seconds that closing the connection may take before the process exits
# anyway, because a broker that stopped responding must not keep a finished
# call waiting.
CLOSE_TIMEOUT = 5.0

EXIT_STATUSES: tuple[tuple[str, str], ...] = (
    (str(EXIT_OK), "the call succeeded and its result was printed on stdout"),
    (
        str(EXIT_REMOTE_ERROR),
        "remote error: the handler raised an exception, the reply is not a txass "
        "reply, or its result cannot be printed as JSON (such as one nested too "
        "deeply).  The remote type, message and traceback (when the service sends "
        "tracebacks) are printed on stderr, with control characters escaped.",
    ),
    (str(EXIT_USAGE), "usage error: a missing or invalid argument, JSON value, timeout or broker URL"),
    (
        str(EXIT_TIMEOUT),
        "timeout: no reply within --timeout seconds.  The request may still be served "
        "later, unless the message states that it was not sent.",
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
        str(EXIT_OUTPUT_ERROR),
        "output error: the result could not be written to stdout, such as to a closed "
        "pipe, a full disk or a closed stdout",
    ),
    (
        "128+N",
        f"interrupted by signal N ({EXIT_INTERRUPTED} for Ctrl-C or SIGINT, "
        f"{EXIT_SIGNAL_BASE + 15} for SIGTERM).  Before the result came, the call is "
        f"cancelled and the connection closed first, which takes at most "
        f"{CLOSE_TIMEOUT:g} s; a signal while the connection closes ends the process "
        f"at once.",
    ),
)

# The signals that end the command.
_EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# The characters escaped in text from a reply or the broker before it is
# written to stderr.  These are the C0 controls, DEL, the C1 controls, lone
# surrogates, the Unicode line and paragraph separators, and the
# bidirectional embeddings, overrides and isolates.  The last can make the
# displayed text differ from what was sent.
_UNSAFE_IN_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
# The same, except line feed and tab, which lay out a traceback.
_UNSAFE_IN_BLOCK = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")

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


# The controls that have a short, well-known escape, and that escape.
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    character = match.group()
    short = _SHORT_ESCAPES.get(character)
    if short is not None:
        return short
    code = ord(character)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable_line(text: str) -> str:
    """
    Escape the control characters of C{text}, line feeds and tabs included,
    so that it prints as one line with nothing a terminal would act on.

    Each is written as a visible escape: C{\\n}, C{\\r}, C{\\t}, or one
    such as C{\\x1b} or C{\\u202e}.  Other text, backslashes included, is
    left as is.
    """
    return _UNSAFE_IN_LINE.sub(_escape, text)


def printable_block(text: str) -> str:
    """
    Escape the control characters of C{text} like L{printable_line}, except
    line feeds and tabs, so that a traceback keeps its layout.
    """
    return _UNSAFE_IN_BLOCK.sub(_escape, text)


class _EscapingWriter:
    """
    A text stream that passes what is written to another with its control
    characters escaped by L{printable_block}, for log events, which may
    quote a reply or the broker.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream: TextIO | None = stream

    def write(self, text: str) -> int:
        if self._stream is not None:
            try:
                self._stream.write(printable_block(text))
            except (OSError, ValueError):
                # Logs are dropped once stderr cannot take them.
                _discard_output(self._stream)
                self._stream = None
        return len(text)

    def flush(self) -> None:
        if self._stream is not None:
            try:
                self._stream.flush()
            except (OSError, ValueError):
                _discard_output(self._stream)
                self._stream = None


def _discard_output(stream: IO[Any]) -> None:
    """
    Point the file descriptor of C{stream} at the null device, after a
    write to it failed.

    What C{stream} still buffers then goes nowhere, instead of failing again
    when Python flushes it at exit, which would print a second error and
    change the exit status to 120.
    """
    try:
        descriptor = stream.fileno()
    except (OSError, ValueError):
        # Not backed by a file descriptor, or already closed.
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, descriptor)
    finally:
        os.close(null)


def _describe_os_error(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return printable_line(error.strerror)
    return printable_line(str(error))


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
    """
    Parse a timeout, which must pass L{check_timeout} like that of any call.

    @raise argparse.ArgumentTypeError: if C{text} is not a number, or not a
        timeout L{check_timeout} accepts.
    """
    seconds: object
    try:
        seconds = float(text)
    except ValueError:
        # check_timeout rejects text with its message for any invalid timeout.
        seconds = text
    try:
        return check_timeout(seconds)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    except OverflowError:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: too large") from None


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
        "--broker-file",
        metavar="PATH",
        default=None,
        help=(
            "File whose first line is the broker URL, readable by its owner only, so that the "
            "password does not appear in the command line."
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
            f"Seconds to wait for the reply once connected, a number greater than 0 and at "
            f"most {MAX_TIMEOUT:g} [default: {DEFAULT_TIMEOUT:g}].  Connecting has its own limit, the broker "
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
    tls = call.add_argument_group(
        "TLS options",
        "Each sets the broker URL option named in parentheses, and needs an\namqps:// broker URL.",
    )
    tls.add_argument(
        "--tls-cacert",
        metavar="PATH",
        help=(
            "PEM file of the CA certificates to verify the broker's certificate against, in place "
            "of the system trust store (cacertfile)."
        ),
    )
    tls.add_argument(
        "--tls-cert",
        metavar="PATH",
        help="PEM file of the client certificate, for a broker that requires one; give --tls-key too (certfile).",
    )
    tls.add_argument(
        "--tls-key",
        metavar="PATH",
        help="PEM file of the client certificate's unencrypted private key (keyfile).",
    )
    tls.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help=(
            "Name to check the broker's certificate against and to send as TLS server name, in place "
            "of the URL's host, for example when connecting by IP address (server_name)."
        ),
    )
    tls.add_argument(
        "--tls-insecure-skip-verify",
        action="store_true",
        help=(
            "INSECURE: do not verify the broker's TLS certificate, so anyone on the network path can "
            "impersonate the broker; a warning is logged (insecure_skip_verify=true)."
        ),
    )
    call.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="Log connection and call events of txass and pika to stderr (off by default).",
    )
    return parser, call


# The TLS options of txass call, and the broker URL option each sets.
_TLS_URL_OPTIONS = {
    "tls_cacert": "cacertfile",
    "tls_cert": "certfile",
    "tls_key": "keyfile",
    "tls_server_name": "server_name",
}


def _add_tls_options(call: argparse.ArgumentParser, namespace: argparse.Namespace, url: str) -> str:
    """
    Return C{url} with the URL options that the TLS command-line options
    set, exiting with a usage error if they cannot be added or do not go
    together.
    """
    added = {name: getattr(namespace, attribute) for attribute, name in _TLS_URL_OPTIONS.items()}
    if namespace.tls_insecure_skip_verify:
        added["insecure_skip_verify"] = "true"
    attributes = (*_TLS_URL_OPTIONS, "tls_insecure_skip_verify")
    flags_given = [f"--{attribute.replace('_', '-')}" for attribute in attributes if getattr(namespace, attribute)]
    if not flags_given:
        return url
    try:
        url = add_tls_options(url, added)
        parse_url(url)
    except InvalidURL as e:
        call.error(f"{', '.join(flags_given)}: {e}")
    return url


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
    if namespace.broker_file is not None:
        if url is not None:
            call.error("give --broker or --broker-file, not both")
        try:
            url = read_url_file(namespace.broker_file)
            parse_url(url)
        except InvalidURL as e:
            call.error(str(e))
    if url is None:
        # The same fallback as parse_url(None), resolved here so that an
        # invalid environment variable is a usage error that names it.
        url = os.environ.get(URL_ENVIRONMENT_VARIABLE) or DEFAULT_URL
        try:
            parse_url(url)
        except InvalidURL as e:
            call.error(f"environment variable {URL_ENVIRONMENT_VARIABLE}: {e}")
    url = _add_tls_options(call, namespace, url)
    return CallArguments(
        service=namespace.service,
        method=namespace.method,
        data=namespace.data,
        meta=namespace.meta,
        timeout=namespace.timeout,
        url=url,
        verbose=namespace.verbose,
    )


def configure_logging(verbose: bool, stream: TextIO | None) -> None:
    """
    Send the log events of Twisted, txass and pika to C{stream} when
    C{verbose} is true, and drop them otherwise.  Their control characters
    are escaped, as log events may quote a reply or the broker.

    Without this, Twisted would write critical events, such as an unhandled
    error in a Deferred, to stderr, and Python's C{logging} would write
    pika's warnings there.
    """
    # Twisted declares its observers and predicates with zope.interface,
    # which mypy does not check, so they are typed here through cast().
    observers: list[ILogObserver] = []
    if verbose and stream is not None:
        escaping = _EscapingWriter(stream)
        predicate = cast(ILogFilterPredicate, LogLevelFilterPredicate(defaultLogLevel=LogLevel.info))
        file_observer = textFileLogObserver(cast(IO[Any], escaping))
        observer = FilteringLogObserver(cast(ILogObserver, file_observer), [predicate])
        observers.append(cast(ILogObserver, observer))
        logging.basicConfig(
            stream=escaping,
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
        or is nested too deeply to print, which only a server that is not
        txass can send.
    """
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError as e:
        raise InvalidReply(f"the result cannot be printed as JSON: {e}") from None
    except RecursionError:
        raise InvalidReply("the result cannot be printed as JSON: it is nested too deeply") from None
    try:
        text.encode(encoding or "utf-8")
    except (UnicodeEncodeError, LookupError):
        text = json.dumps(value, ensure_ascii=True, allow_nan=False)
    return text


def describe_failure(error: BaseException, arguments: CallArguments) -> tuple[int, str]:
    """
    Choose the exit status and the message on stderr for a failed call.

    @return: The exit status and the message, which may span several lines.
        Text taken from C{error}, which may come from the reply or the
        broker, has its control characters escaped.
    """
    if isinstance(error, RemoteError):
        message = f"remote error: {printable_line(error.type)}: {printable_line(error.message)}"
        if error.traceback:
            message += "\n" + printable_block(error.traceback.rstrip("\n"))
        return EXIT_REMOTE_ERROR, message
    if isinstance(error, InvalidReply):
        return EXIT_REMOTE_ERROR, printable_line(str(error))
    # BrokerBlocked derives from CallTimeout, so it is checked first.
    if isinstance(error, BrokerBlocked):
        return EXIT_TIMEOUT, f"timed out: {printable_line(str(error))}"
    if isinstance(error, CallTimeout):
        return EXIT_TIMEOUT, f"timed out: {printable_line(str(error))}; the request may still be served later"
    # ServiceNotFound derives from PublishFailed, so it is checked first.
    if isinstance(error, ServiceNotFound):
        return EXIT_SERVICE_NOT_FOUND, printable_line(str(error))
    if isinstance(error, (ConnectionFailed, ConnectionLost, ChannelClosed, PublishFailed)):
        return EXIT_CONNECTION_ERROR, printable_line(str(error))
    if isinstance(error, (InvalidURL, InvalidName, EncodingError)):
        # parse_arguments checks these before anything connects.
        return EXIT_USAGE, printable_line(str(error))
    details = printable_block("".join(traceback.format_exception(error)).rstrip("\n"))
    call = printable_line(f"{arguments.service}.{arguments.method}")
    return EXIT_INTERNAL_ERROR, f"internal error while calling {call}:\n{details}"


class CallCommand:
    """
    One run of C{txass call}: connect, call, print, close.

    When the reactor shuts down before the result came (on SIGINT or
    SIGTERM), the connection attempt or the call in flight is cancelled,
    the connection is closed, and the run ends with status 128 + the
    signal number.  Once the call has its outcome, which is reported before
    the connection is closed, a SIGINT or SIGTERM ends the process at once
    with status 128 + the signal number.
    """

    def __init__(self, arguments: CallArguments, reactor: Any, stdout: TextIO | None, stderr: TextIO | None) -> None:
        """
        @param stdout: Where the result goes, or L{None} when the process
            has no standard output (Python sets C{sys.stdout} to L{None}
            then).
        @param stderr: Where error messages go, or L{None} when the process
            has no standard error.
        """
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
        """
        Write C{message}, whose control characters the caller escaped, to
        stderr.  Nothing more is written to a stderr that failed a write.
        """
        stderr = self._stderr
        if stderr is None:
            return
        try:
            stderr.write(f"txass call: {message}\n")
            stderr.flush()
        except (OSError, ValueError):
            _discard_output(stderr)

    def _report(self, error: Exception) -> int:
        """
        Report the failure C{error} on stderr and return the exit status.
        """
        if self._interrupted and isinstance(error, defer.CancelledError):
            self._error(f"interrupted while waiting for {self._waiting_for}")
            return self._interrupt_status()
        status, message = describe_failure(error, self._arguments)
        self._error(message)
        return status

    def _print_result(self, text: str) -> int:
        """
        Write the formatted result to stdout.

        @return: The exit status: L{EXIT_OK}, or L{EXIT_OUTPUT_ERROR} if
            stdout is closed or the write failed.
        """
        stdout = self._stdout
        if stdout is None:
            self._error("failed to write the result: stdout is closed")
            return EXIT_OUTPUT_ERROR
        try:
            stdout.write(text + "\n")
            stdout.flush()
        except (OSError, ValueError) as e:
            _discard_output(stdout)
            self._error(f"failed to write the result to stdout: {_describe_os_error(e)}")
            return EXIT_OUTPUT_ERROR
        return EXIT_OK

    async def _run(self) -> int:
        try:
            broker = await self._wait(txass.connect(self._arguments.url, reactor=self._reactor))
        except Exception as e:
            return self._report(e)
        outcome: str | Exception
        try:
            outcome = await self._call(broker)
        except Exception as e:
            outcome = e
        # The handlers are set before the outcome is reported, so that a
        # signal sent as soon as the report is seen finds them.
        with self._signals_end_process():
            try:
                if isinstance(outcome, Exception):
                    status = self._report(outcome)
                else:
                    status = self._print_result(outcome)
            except Exception as e:
                status = self._report(e)
            await self._close(broker)
        return status

    async def _call(self, broker: txass.Broker) -> str:
        """
        Call the method.

        @return: The result, formatted by L{format_result}.
        """
        arguments = self._arguments
        client = broker.rpc(arguments.service)
        call = printable_line(f"{arguments.service}.{arguments.method}")
        self._waiting_for = f"the reply of {call}; the request may still be served"
        result = await self._wait(
            client.call(arguments.method, arguments.data, meta=arguments.meta, timeout=arguments.timeout)
        )
        return format_result(result, getattr(self._stdout, "encoding", None))

    @contextmanager
    def _signals_end_process(self) -> Iterator[None]:
        """
        Make SIGINT and SIGTERM end the process at once, in place of
        stopping the reactor, until the block ends.
        """
        previous: dict[signal.Signals, Any] = {}

        def on_signal(number: int, frame: FrameType | None) -> None:
            # A signal handler runs between two bytecodes of whatever code
            # was running, so the work is left to the reactor.
            self._reactor.callFromThread(self._exit_on_signal, number)

        try:
            for exit_signal in _EXIT_SIGNALS:
                previous[exit_signal] = signal.signal(exit_signal, on_signal)
        except ValueError:
            # Signal handlers can only be set from the main thread.
            pass
        try:
            yield
        finally:
            for exit_signal, handler in previous.items():
                # signal.signal returns None for a handler not set from Python.
                signal.signal(exit_signal, signal.SIG_DFL if handler is None else handler)

    async def _close(self, broker: txass.Broker) -> None:
        """
        Close the connection, waiting at most L{CLOSE_TIMEOUT} seconds.
        """
        if not await wait_at_most(broker.close(), CLOSE_TIMEOUT, self._reactor):
            _log.warn(
                "closing the connection to {url} did not finish within {seconds} s, so the command "
                "exits without waiting for it",
                url=broker.address.safe_url(),
                seconds=CLOSE_TIMEOUT,
            )

    def _exit_on_signal(self, number: int) -> None:
        self._error("interrupted while closing the connection to the broker")
        if self._stdout is not None:
            try:
                self._stdout.flush()
            except (OSError, ValueError):
                pass
        # Exiting at once skips Python's cleanup, including the flush of
        # the standard streams, which were flushed above.
        os._exit(EXIT_SIGNAL_BASE + number)


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
