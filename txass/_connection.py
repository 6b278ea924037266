"""
The AMQP engine: broker URLs, connections and channels.

This is the only module of txass that imports pika.  It wraps pika's Twisted
adapter in a small typed surface (declare, publish with confirms, consume,
ack and reject, close notices) and turns pika's exceptions into those of
L{txass.errors}.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import stat
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import pika
import pika.exceptions
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
import OpenSSL
from OpenSSL import SSL, crypto
from pika.adapters.twisted_connection import TwistedChannel, TwistedProtocolConnection
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address
from service_identity.exceptions import CertificateError, VerificationError
from twisted.internet import abstract, defer, error as internet_error, task
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, CertificateOptions, platformTrust, trustRootFromCertificates
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer  # type: ignore[import-untyped]

from txass._frames import (
    DELIVER_IDS,
    FRAME_END,
    FRAME_KINDS,
    FRAME_METHOD,
    FRAME_PREFIX,
    RawDelivery,
    encode_publish,
    parse_delivery,
)

from txass.errors import (
    AuthenticationFailed,
    ChannelClosed,
    ConnectionFailed,
    ConnectionLost,
    MessageTooLarge,
    PublishFailed,
    TLSFailed,
    TxassError,
    UnroutableMessage,
    VhostNotFound,
)

DEFAULT_URL = "amqp://guest:guest@localhost:5672/%2F"
URL_ENVIRONMENT_VARIABLE = "TXASS_BROKER_URL"

# The largest message body published, in bytes: RabbitMQ's default
# max_message_size since 3.8.  The broker closes the channel of a larger
# message, failing every other publish in flight on it.
MAX_MESSAGE_SIZE = 128 * 1024 * 1024

# AMQP reply codes with which the broker refuses a consumer or declaration
# for good: access refused (403) and a queue that exists with other
# arguments (406).  A server or client that gets them while consuming again
# stops; other codes, such as 404 for a deleted queue, are retried.
TERMINAL_REPLY_CODES = frozenset({403, 406})

# AMQP reply codes the broker sends when it rejects the handshake.
_ACCESS_REFUSED = 403
_NOT_ALLOWED = 530

_log = Logger(namespace="txass.connection")


class InvalidURL(TxassError, ValueError):
    """
    Raised when a broker URL cannot be parsed.
    """


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """
    The broker's address and connection settings, parsed from an AMQP URI.

    @ivar heartbeat: The heartbeat interval to offer the broker, in seconds,
        or L{None} to accept the broker's.
    @ivar connection_timeout: Seconds allowed for the TCP, TLS and AMQP
        handshakes together.
    @ivar cacertfile: The PEM file of the CA certificates that the broker's
        certificate is verified against, or L{None} for the system trust
        store.
    @ivar certfile: The PEM file of the client certificate, followed by
        any intermediate CA certificates, or L{None} for no client
        certificate.
    @ivar keyfile: The PEM file of the client certificate's unencrypted
        private key.
    @ivar server_name: The name sent as TLS server name indication and
        checked against the broker's certificate, or L{None} for C{host}.
    @ivar insecure_skip_verify: Whether the broker's certificate goes
        unchecked, which lets anyone between client and broker read and
        change the traffic.
    """

    host: str
    port: int
    vhost: str
    user: str
    password: str = field(repr=False)
    tls: bool = False
    heartbeat: int | None = None
    connection_timeout: float = 10.0
    channel_max: int | None = None
    frame_max: int | None = None
    cacertfile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False

    def safe_url(self) -> str:
        """
        Return the URL with the password replaced by C{***}.

        The TLS options stay, so that a log shows which CA file, client
        certificate and server name a connection used, and whether it
        skipped certificate verification.
        """
        scheme = "amqps" if self.tls else "amqp"
        vhost = self.vhost.replace("%", "%25").replace("/", "%2F")
        url = f"{scheme}://{self.user}:***@{self.host}:{self.port}/{vhost}"
        query = "&".join(f"{name}={quote(value, safe='/')}" for name, value in self.tls_options().items())
        return f"{url}?{query}" if query else url

    def tls_options(self) -> dict[str, str]:
        """
        Return the TLS query options of the URL that are set, as text.
        """
        options = {}
        for name in ("cacertfile", "certfile", "keyfile", "server_name"):
            value = getattr(self, name)
            if value is not None:
                options[name] = value
        if self.insecure_skip_verify:
            options["insecure_skip_verify"] = "true"
        return options

    def connection_failed(self, reason: str, kind: type[ConnectionFailed] = ConnectionFailed) -> ConnectionFailed:
        return kind(self.host, self.port, self.vhost, self.user, reason)

    def pika_parameters(self) -> pika.ConnectionParameters:
        options: dict[str, Any] = {
            "virtual_host": self.vhost,
            "credentials": pika.PlainCredentials(self.user, self.password),
        }
        if self.heartbeat is not None:
            options["heartbeat"] = self.heartbeat
        if self.channel_max is not None:
            options["channel_max"] = self.channel_max
        if self.frame_max is not None:
            options["frame_max"] = self.frame_max
        return pika.ConnectionParameters(**options)


_INTEGER_OPTIONS = {"heartbeat", "channel_max", "frame_max"}
_FLOAT_OPTIONS = {"connection_timeout"}
_TLS_FILE_OPTIONS = {"cacertfile", "certfile", "keyfile"}
_TLS_OPTIONS = {*_TLS_FILE_OPTIONS, "server_name", "insecure_skip_verify"}

# A DNS name: dot-separated labels of letters, digits, hyphens and
# underscores, after IDNA encoding.
_DNS_NAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")


# The largest certificate or key file read, in bytes: a bundle of every
# public CA is about 250 KB.
MAX_TLS_FILE = 4 * 1024 * 1024


def read_url_file(path: str) -> str:
    """
    Read a broker URL from the first non-empty line of the file at
    C{path}, so that the password stays out of command lines.

    @raise InvalidURL: if the file cannot be read, contains no URL, or other
        users may read or change it.  The message names the file, never
        its content.
    """
    try:
        # Checked before it is opened: opening a FIFO would wait for a
        # writer, and a device such as /dev/zero never ends.
        status = os.stat(path)
        if not stat.S_ISREG(status.st_mode):
            raise InvalidURL(f"cannot read the broker URL file {path!r}: it is not a regular file")
        if status.st_mode & 0o077:
            raise InvalidURL(
                f"the broker URL file {path!r} can be read or changed by other users "
                f"(mode {stat.S_IMODE(status.st_mode):04o}); make it readable by its owner only, "
                f"for example with: chmod 600 {path}"
            )
        if status.st_uid != os.geteuid():
            raise InvalidURL(
                f"the broker URL file {path!r} belongs to another user (uid {status.st_uid}), who could "
                f"change it; make it the file of the user that runs txass"
            )
        with open(path, encoding="utf-8-sig") as lines:
            text = lines.read(65536)
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or type(e).__name__
        raise InvalidURL(f"cannot read the broker URL file {path!r}: {reason}") from None
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    raise InvalidURL(f"the broker URL file {path!r} is empty: write the URL on its first line")


def parse_url(url: str | None = None) -> BrokerAddress:
    """
    Parse an AMQP URI such as C{amqp://user:password@host:5672/%2F?heartbeat=30}.

    With no URL, use C{$TXASS_BROKER_URL}, or failing that
    C{amqp://guest:guest@localhost:5672/%2F}.  The vhost is the
    percent-decoded path; an absent path means C{/}.  Query options:
    C{heartbeat} (seconds, 0 turns heartbeats off), C{connection_timeout}
    (seconds), C{channel_max} and C{frame_max}; and for C{amqps} only, the
    TLS options C{cacertfile}, C{certfile} and C{keyfile} (paths of PEM
    files), C{server_name} and C{insecure_skip_verify} (C{true} or
    C{false}).

    @raise InvalidURL: if the URL is not a usable AMQP URI.
    """
    if url is None:
        url = os.environ.get(URL_ENVIRONMENT_VARIABLE) or DEFAULT_URL
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        # The text of urlsplit's error can contain part of the password, so
        # it is not shown.
        raise InvalidURL(
            "invalid broker URL: the host or port cannot be read; a port must be a number "
            "from 0 to 65535, and '@', ':', '/', '?' and '#' in the user name or password "
            "must be percent-encoded (for example %40 for '@')"
        ) from None
    if parts.scheme not in ("amqp", "amqps"):
        raise InvalidURL(
            f"invalid broker URL scheme {parts.scheme!r}: expected 'amqp' or 'amqps', "
            f"as in {DEFAULT_URL}"
        )
    if "@" in parts.path or "@" in parts.query or "@" in parts.fragment:
        # An unencoded '/' or '?' in a password ends the host part early,
        # and the rest of the password would be taken for the vhost or an
        # option, to be shown in messages.
        raise InvalidURL(
            "invalid broker URL: '@' after the host part; '@', ':', '/', '?' and '#' in the user "
            "name or password must be percent-encoded (for example %2F for '/'), and so must '@' "
            "in a vhost (%40)"
        )
    tls = parts.scheme == "amqps"
    host = parts.hostname or "localhost"
    if port is None:
        port = 5671 if tls else 5672
    path = parts.path
    vhost = "/" if path in ("", "/") else unquote(path[1:])
    user = unquote(parts.username) if parts.username is not None else "guest"
    password = unquote(parts.password) if parts.password is not None else "guest"

    options: dict[str, Any] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in options:
            raise InvalidURL(f"broker URL option {name!r} is given more than once")
        if name in _TLS_OPTIONS:
            options[name] = _parse_tls_option(name, value)
            continue
        try:
            if name in _INTEGER_OPTIONS:
                options[name] = int(value)
            elif name in _FLOAT_OPTIONS:
                options[name] = float(value)
            else:
                known = ", ".join(sorted(_INTEGER_OPTIONS | _FLOAT_OPTIONS | _TLS_OPTIONS))
                raise InvalidURL(f"unknown broker URL option {name!r}; known options: {known}")
        except ValueError as e:
            if isinstance(e, InvalidURL):
                raise
            expected = "an integer" if name in _INTEGER_OPTIONS else "a number"
            raise InvalidURL(f"invalid value {value!r} for broker URL option {name!r}: expected {expected}") from None
        if options[name] < 0:
            raise InvalidURL(f"invalid value {value!r} for broker URL option {name!r}: must not be negative")
        if name == "heartbeat" and options[name] > 65535:
            raise InvalidURL(f"invalid value {value!r} for broker URL option 'heartbeat': at most 65535 seconds")
        if name == "connection_timeout" and not (math.isfinite(options[name]) and options[name] > 0):
            raise InvalidURL(
                f"invalid value {value!r} for broker URL option 'connection_timeout': "
                f"expected a finite number of seconds above 0"
            )
    _check_tls_options(tls, options)
    address = BrokerAddress(host=host, port=port, vhost=vhost, user=user, password=password, tls=tls, **options)
    try:
        address.pika_parameters()
    except (TypeError, ValueError) as e:
        raise InvalidURL(f"invalid broker URL option: {e}") from None
    return address


def _parse_tls_option(name: str, value: str) -> str | bool:
    """
    Check the value of the TLS URL option C{name}.

    @raise InvalidURL: if the value is not usable.
    """
    if name in _TLS_FILE_OPTIONS:
        if not value or "\0" in value:
            raise InvalidURL(f"invalid value {value!r} for broker URL option {name!r}: expected the path of a PEM file")
        return value
    if name == "insecure_skip_verify":
        if value.lower() not in ("true", "false"):
            raise InvalidURL(f"invalid value {value!r} for broker URL option 'insecure_skip_verify': expected true or false")
        return value.lower() == "true"
    # The option server_name.
    if not _is_ip_address(value):
        try:
            ascii_name = value.encode("idna").decode("ascii")
        except UnicodeError:
            ascii_name = ""
        if not _DNS_NAME.fullmatch(ascii_name):
            raise InvalidURL(
                f"invalid value {value!r} for broker URL option 'server_name': expected a DNS name or an IP address"
            )
    return value


def _check_tls_options(tls: bool, options: Mapping[str, Any]) -> None:
    """
    Check that the TLS options of a URL go together.

    @raise InvalidURL: if they do not.
    """
    tls_options = sorted(name for name in options if name in _TLS_OPTIONS)
    if tls_options and not tls:
        raise InvalidURL(
            f"broker URL option {tls_options[0]!r} is a TLS option, but the URL connects without TLS: "
            f"use an amqps:// URL (default port 5671)"
        )
    if ("certfile" in options) != ("keyfile" in options):
        raise InvalidURL(
            "broker URL options 'certfile' and 'keyfile' go together: give the client certificate "
            "and its private key (both may name one file holding both)"
        )
    if options.get("insecure_skip_verify") and "cacertfile" in options:
        raise InvalidURL(
            "broker URL options 'cacertfile' and 'insecure_skip_verify=true' contradict each other: "
            "with insecure_skip_verify no certificate is checked, so remove one of them"
        )


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def add_tls_options(url: str, options: Mapping[str, str | None]) -> str:
    """
    Return C{url} with the TLS query options C{options} added, for command
    lines that take them as options of their own.

    Options whose value is L{None} are left out, and the values are
    percent-encoded.

    @raise InvalidURL: if C{url} already sets one of the options, or is
        not an C{amqps} URL while C{options} sets any.
    """
    values = {name: value for name, value in options.items() if value is not None}
    if not values:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        raise InvalidURL("invalid broker URL: the host or port cannot be read") from None
    if parts.scheme != "amqps":
        raise InvalidURL("TLS options need an amqps:// broker URL, but the broker URL does not use TLS")
    present = {name for name, _ in parse_qsl(parts.query, keep_blank_values=True)}
    for name in values:
        if name not in _TLS_OPTIONS:
            raise ValueError(f"{name!r} is not a TLS option of a broker URL")
        if name in present:
            raise InvalidURL(f"the broker URL sets the option {name!r} already; give it once")
    added = "&".join(f"{name}={quote(value, safe='/')}" for name, value in values.items())
    query = f"{parts.query}&{added}" if parts.query else added
    return parts._replace(query=query).geturl()


@dataclass(slots=True)
class MessageProperties:
    """
    The AMQP basic properties txass reads and writes.
    """

    content_type: str | None = None
    content_encoding: str | None = None
    headers: dict[str, Any] | None = None
    delivery_mode: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    message_id: str | None = None
    type: str | None = None
    timestamp: int | None = None
    app_id: str | None = None
    expiration: str | None = None

    def to_pika(self) -> pika.BasicProperties:
        return pika.BasicProperties(
            content_type=self.content_type,
            content_encoding=self.content_encoding,
            headers=self.headers,
            delivery_mode=self.delivery_mode,
            correlation_id=self.correlation_id,
            reply_to=self.reply_to,
            message_id=self.message_id,
            type=self.type,
            timestamp=self.timestamp,
            app_id=self.app_id,
            expiration=self.expiration,
        )

    @classmethod
    def from_pika(cls, properties: pika.BasicProperties) -> MessageProperties:
        return cls(
            content_type=properties.content_type,
            content_encoding=properties.content_encoding,
            headers=properties.headers,
            delivery_mode=properties.delivery_mode,
            correlation_id=properties.correlation_id,
            reply_to=properties.reply_to,
            message_id=properties.message_id,
            type=properties.type,
            timestamp=properties.timestamp,
            app_id=properties.app_id,
            expiration=properties.expiration,
        )


class FastConsumer:
    """
    A consumer whose deliveries the protocol decodes itself, and the pika
    channel it consumes on, which must be open for it to take them.
    """

    __slots__ = ("_channel", "deliver")

    def __init__(self, channel: Any, deliver: Callable[[RawDelivery], None]) -> None:
        self._channel = channel
        self.deliver = deliver

    @property
    def is_open(self) -> bool:
        return bool(self._channel.is_open)


@dataclass(slots=True)
class Delivery:
    """
    A message the broker delivered to one of our consumers.
    """

    body: bytes
    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    properties: MessageProperties


def _closed_by_client(e: Any) -> ConnectionLost:
    return ConnectionLost(
        f"channel closed by this client ({e.reply_code} {e.reply_text}), for example by "
        f"Broker.close(); a message being published may or may not have reached the broker"
    )


def _translate(failure: Failure) -> Failure:
    """
    Replace a pika exception in C{failure} by the txass exception for it.
    """
    e = failure.value
    if isinstance(e, pika.exceptions.ChannelClosedByClient):
        return Failure(_closed_by_client(e))
    if isinstance(e, pika.exceptions.ChannelClosed):
        return Failure(ChannelClosed(e.reply_code, e.reply_text))
    if isinstance(e, pika.exceptions.UnroutableError):
        returned = e.messages[0] if e.messages else None
        if returned is not None:
            return Failure(UnroutableMessage(returned.method.exchange, returned.method.routing_key))
        return Failure(UnroutableMessage("", ""))
    if isinstance(e, pika.exceptions.NackError):
        return Failure(PublishFailed("the broker rejected the message (basic.nack)"))
    if isinstance(
        e,
        (
            pika.exceptions.ConnectionClosed,
            pika.exceptions.AMQPConnectionError,
            internet_error.ConnectionLost,
            internet_error.ConnectionDone,
        ),
    ):
        return Failure(ConnectionLost(f"connection to the broker lost: {e!r}"))
    if isinstance(e, pika.exceptions.ChannelWrongStateError):
        return Failure(ChannelClosed(0, str(e)))
    return failure


# Seconds to wait for the broker to confirm cancelling a consumer or
# closing a channel or connection, before going on without it.
CLOSE_TIMEOUT = 5.0


async def _wait_bounded(d: defer.Deferred[Any], reactor: Any) -> bool:
    """
    Wait for C{d} at most L{CLOSE_TIMEOUT} seconds, without cancelling it.

    @return: Whether C{d} fired in time.
    """
    if d.called:
        return True
    timer: defer.Deferred[None] = defer.Deferred()
    call = reactor.callLater(CLOSE_TIMEOUT, timer.callback, None)
    await defer.DeferredList([d, timer], fireOnOneCallback=True, fireOnOneErrback=True, consumeErrors=True)
    if call.active():
        call.cancel()
        return True
    return False


async def _call(d: defer.Deferred[Any], on_abandoned: Callable[[Any], object] | None = None) -> Any:
    """
    Wait for the result of C{d}, a Deferred of pika's.

    Cancelling the wait leaves C{d} alone: pika fires it later, when the
    broker replies or the channel closes, and firing a cancelled Deferred
    raises inside pika's frame handling, which drops the connection.

    @param on_abandoned: Called with the result of C{d} when it succeeds
        after the wait was cancelled, to release what it opened.
    """
    waiting: defer.Deferred[Any] = defer.Deferred()

    def succeeded(result: Any) -> None:
        if not waiting.called:
            waiting.callback(result)
        elif on_abandoned is not None:
            on_abandoned(result)

    def failed(failure: Failure) -> None:
        if not waiting.called:
            waiting.errback(_translate(failure))

    d.addCallbacks(succeeded, failed)
    return await waiting


class AMQPChannel:
    """
    One AMQP channel.

    L{AMQPConnection.channel} creates it.
    """

    def __init__(self, channel: TwistedChannel, confirms: bool, reactor: Any = None, protocol: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._reactor = reactor
        self._channel = channel
        # NOTE: consumers use pika's callback-based channel underneath the
        # Twisted wrapper, so every delivery reaches our callback at once
        # without one Deferred per message.
        self._raw = channel._channel
        self.confirms = confirms
        self._close_callbacks: list[Callable[[Exception], object]] = []
        # Set before on_closed can fire, since _on_closed reads them.
        self._protocol: _PikaProtocol | None = protocol
        # This channel's entries in the protocol's fast_consumers.
        self._fast_keys: set[tuple[int, str | bytes]] = set()
        # On a confirm channel: the publish numbers of the unconfirmed
        # messages by message id, the numbers of those the broker returned,
        # and of those whose id a return could not tell apart.
        self._unconfirmed_ids: dict[Any, list[int]] = {}
        self._returned: set[int] = set()
        self._ambiguous: set[int] = set()
        channel.on_closed.addBoth(self._on_closed)
        self.close_reason: Exception | None = None
        self._cancel_callbacks: dict[str, Callable[[], None]] = {}
        self._raw.add_on_cancel_callback(self._on_cancelled_by_broker)
        # Acknowledgements made while the protocol handles received data
        # are sent together when it is done (see _PikaProtocol), with one
        # multiple-ack frame for every run of them at the start of the
        # unsettled deliveries.  A frame per delivery costs as much as
        # the rest of serving a small request.
        self._unsettled: deque[int] = deque()
        self._settled: set[int] = set()
        self._pending_acks: set[int] = set()

    def _on_cancelled_by_broker(self, frame: Any) -> None:
        self._forget_fast(frame.method.consumer_tag)
        callback = self._cancel_callbacks.pop(frame.method.consumer_tag, None)
        if callback is not None:
            callback()

    def _on_closed(self, reason: Any) -> None:
        self._forget_fast()
        if isinstance(reason, Failure):
            reason = reason.value
        if isinstance(reason, pika.exceptions.ChannelClosedByClient):
            exc: Exception = _closed_by_client(reason)
        elif isinstance(reason, pika.exceptions.ChannelClosed):
            exc = ChannelClosed(reason.reply_code, reason.reply_text)
        elif isinstance(reason, Exception):
            exc = ConnectionLost(f"connection to the broker lost: {reason!r}")
        else:
            exc = ChannelClosed(0, "closed")
        self.close_reason = exc
        callbacks, self._close_callbacks = self._close_callbacks, []
        for callback in callbacks:
            callback(exc)

    def _call_when_closed(self, callback: Callable[[Exception], object]) -> None:
        if self.close_reason is not None:
            callback(self.close_reason)
        else:
            self._close_callbacks.append(callback)

    @property
    def is_open(self) -> bool:
        return bool(self._channel.is_open)

    async def _call(self, operation: Callable[[], defer.Deferred[Any]]) -> Any:
        # NOTE: pika 1.4 leaves behind a Deferred that fails unhandled when a
        # method is called on a closing channel, so the state is checked here.
        if not self._channel.is_open:
            if self.close_reason is not None:
                raise self.close_reason
            if not self._channel.connection.is_open:
                raise ConnectionLost("connection to the broker is closing")
            raise ChannelClosed(0, "channel is closing")
        return await _call(operation())

    def when_closed(self) -> defer.Deferred[Exception]:
        """
        Return a Deferred that fires with a L{ChannelClosed} or
        L{ConnectionLost} describing why the channel closed.
        """
        d: defer.Deferred[Exception] = defer.Deferred()
        self._call_when_closed(d.callback)
        return d

    async def declare_exchange(self, name: str, exchange_type: str = "direct", *, durable: bool = True) -> None:
        await self._call(lambda: self._channel.exchange_declare(exchange=name, exchange_type=exchange_type, durable=durable))

    async def declare_queue(
        self,
        name: str,
        *,
        durable: bool = True,
        exclusive: bool = False,
        auto_delete: bool = False,
        passive: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> tuple[int, int]:
        """
        Declare a queue; return its message count and consumer count.
        """
        frame = await self._call(
            lambda: self._channel.queue_declare(
                queue=name,
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                passive=passive,
                arguments=arguments,
            )
        )
        return frame.method.message_count, frame.method.consumer_count

    async def bind_queue(self, queue: str, exchange: str, routing_key: str) -> None:
        await self._call(lambda: self._channel.queue_bind(queue=queue, exchange=exchange, routing_key=routing_key))

    async def delete_queue(self, queue: str) -> None:
        await self._call(lambda: self._channel.queue_delete(queue=queue))

    async def delete_exchange(self, exchange: str) -> None:
        await self._call(lambda: self._channel.exchange_delete(exchange=exchange))

    async def set_prefetch(self, count: int) -> None:
        await self._call(lambda: self._channel.basic_qos(prefetch_count=count))

    async def enable_confirms(self) -> None:
        await self._call(lambda: self._channel.confirm_delivery())
        self.confirms = True
        self._raw.add_on_return_callback(self._on_confirm_return)

    def _on_confirm_return(self, _channel: Any, _method: Any, properties: Any, _body: bytes) -> None:
        # The broker returns a message before it acknowledges it, and the
        # return carries no publish number: the message id finds it.
        numbers = self._unconfirmed_ids.get(properties.message_id)
        if not numbers:
            return
        if len(numbers) == 1:
            self._returned.add(numbers[0])
        else:
            self._ambiguous.update(numbers)

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: MessageProperties,
        *,
        mandatory: bool = False,
    ) -> defer.Deferred[None]:
        """
        Publish a message.

        @return: A Deferred that fires with L{None} once the broker has
            confirmed the message (at once when confirms are off).  It fails
            with L{UnroutableMessage} when a mandatory message was returned,
            L{PublishFailed} when the broker nacked it, and L{ChannelClosed}
            or L{ConnectionLost} when the channel closed before the confirm.
            It fails at once with L{MessageTooLarge}, sending nothing, when
            C{body} is larger than L{MAX_MESSAGE_SIZE}.
        """
        if len(body) > MAX_MESSAGE_SIZE:
            return defer.fail(MessageTooLarge(len(body), MAX_MESSAGE_SIZE))
        try:
            encoded = self._publish_encoded(exchange, routing_key, body, properties, mandatory)
        except Exception:
            return defer.fail(_translate(Failure()))
        if encoded is not None:
            confirm, number = encoded
            message_id = properties.message_id
            if message_id is not None:
                self._unconfirmed_ids.setdefault(message_id, []).append(number)
            confirm.addBoth(self._check_return, number, message_id, exchange, routing_key)
            return confirm.addCallbacks(lambda _: None, _translate)
        try:
            d = self._channel.basic_publish(
                exchange=exchange,
                routing_key=routing_key,
                body=body,
                properties=properties.to_pika(),
                mandatory=mandatory,
            )
        except Exception:
            return defer.fail(_translate(Failure()))
        confirmed: defer.Deferred[None] = d.addCallbacks(lambda _: None, _translate)
        return confirmed

    def send(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: MessageProperties,
        *,
        mandatory: bool = False,
    ) -> None:
        """
        Publish a message on a channel without publisher confirms, where
        nothing comes back to wait for, so no Deferred is made.

        @raise MessageTooLarge: C{body} is larger than L{MAX_MESSAGE_SIZE};
            nothing is sent.
        @raise ChannelClosed: The channel is closed or closing.
        @raise ConnectionLost: The connection is closed or closing.
        """
        assert not self.confirms, "a confirm channel publishes with publish()"
        if len(body) > MAX_MESSAGE_SIZE:
            raise MessageTooLarge(len(body), MAX_MESSAGE_SIZE)
        if self.close_reason is not None:
            raise self.close_reason
        if self._write_encoded(exchange, routing_key, body, properties, mandatory):
            return
        try:
            self._raw.basic_publish(exchange, routing_key, body, properties.to_pika(), mandatory)
        except Exception as e:
            raise cast(Exception, _translate(Failure(e)).value) from None

    def _write_encoded(
        self, exchange: str, routing_key: str, body: bytes, properties: MessageProperties, mandatory: bool
    ) -> bool:
        """
        Write a publish encoded here rather than by pika, which builds
        frame, method and property objects for each message; the bytes are
        the same.

        @return: Whether it was written; L{False} leaves it to pika, as
            before the connection is tuned, on a channel that is not open,
            or for a value pika would reject or convert.
        """
        protocol = self._protocol
        if protocol is None or protocol.transport is None or not self._raw.is_open:
            return False
        body_max = protocol.body_max
        if not body_max:
            return False
        encoded = encode_publish(self._raw.channel_number, exchange, routing_key, mandatory, properties, body, body_max)
        if encoded is None:
            return False
        data, frames = encoded
        # pika's heartbeat checker reads these counters.
        connection = protocol._impl
        connection.bytes_sent += len(data)
        connection.frames_sent += frames
        protocol.write(data)
        return True

    def _publish_encoded(
        self, exchange: str, routing_key: str, body: bytes, properties: MessageProperties, mandatory: bool
    ) -> tuple[defer.Deferred[Any], int] | None:
        """
        Publish through L{_write_encoded} and wait for the confirm as
        pika's Twisted channel does.

        @return: pika's Deferred of the confirm and the publish's number on
            the channel, or L{None} when the message is left to pika.
        """
        # NOTE: a confirm waits in the private table of pika's Twisted
        # channel (pika 1.3 and 1.4), under the number of the publish on the
        # channel.  When the table is not there, pika publishes.
        channel = self._channel
        deliveries = getattr(channel, "_deliveries", None)
        number = getattr(channel, "_delivery_message_id", None)
        confirming = getattr(channel, "_delivery_confirmation", None)
        if not self.confirms or confirming is not True or getattr(channel, "_closed", True):
            return None
        if not isinstance(deliveries, dict) or not isinstance(number, int):
            return None
        if not self._write_encoded(exchange, routing_key, body, properties, mandatory):
            return None
        number += 1
        channel._delivery_message_id = number
        confirm: defer.Deferred[Any] = defer.Deferred()
        deliveries[number] = confirm
        return confirm, number

    def _check_return(
        self, result: Any, number: int, message_id: Any, exchange: str, routing_key: str
    ) -> Any:
        """
        Correct pika's verdict on a confirmed publish by the returns matched
        to it.

        pika keeps one returned message per channel and blames it on the
        next publish it confirms, which is another one when an
        acknowledgement covers several.  So a publish is judged by the
        returns of its message id instead.  A publish without an id, or
        whose id another unconfirmed publish shared when a return of it
        came, keeps pika's verdict.
        """
        returned = number in self._returned
        self._returned.discard(number)
        ambiguous = number in self._ambiguous
        self._ambiguous.discard(number)
        if message_id is None:
            return result
        numbers = self._unconfirmed_ids.get(message_id, [])
        if number in numbers:
            numbers.remove(number)
        if not numbers:
            self._unconfirmed_ids.pop(message_id, None)
        if ambiguous:
            return result
        if isinstance(result, Failure):
            if result.check(pika.exceptions.UnroutableError) and not returned:
                return None
            return result
        if returned:
            return Failure(UnroutableMessage(exchange, routing_key))
        return result

    def on_returned(self, callback: Callable[[MessageProperties], object]) -> None:
        """
        Call C{callback} with the properties of each mandatory message the
        broker returns as unroutable (C{basic.return}) on this channel,
        which must be one without publisher confirms.
        """
        assert not self.confirms, "a confirm channel reports returns through publish()"
        self._channel.add_on_return_callback(lambda returned: callback(MessageProperties.from_pika(returned.properties)))

    async def consume(
        self,
        queue: str,
        on_delivery: Callable[[Delivery], None],
        *,
        exclusive: bool = False,
        auto_ack: bool = False,
        on_cancelled: Callable[[], None] | None = None,
    ) -> str:
        """
        Start consuming C{queue}, with manual acknowledgements unless
        C{auto_ack} is set.

        @param on_delivery: Called with each L{Delivery}, in order.
        @param on_cancelled: Called when the broker cancels the consumer,
            for example because the queue was deleted.
        @return: The consumer tag.
        """

        def deliver(delivery: Delivery) -> None:
            if not auto_ack:
                self._unsettled.append(delivery.delivery_tag)
            on_delivery(delivery)

        def on_message(_channel: Any, method: Any, properties: Any, body: bytes) -> None:
            deliver(
                Delivery(
                    body=body,
                    delivery_tag=method.delivery_tag,
                    redelivered=method.redelivered,
                    exchange=method.exchange,
                    routing_key=method.routing_key,
                    properties=MessageProperties.from_pika(properties),
                )
            )

        if not self._channel.is_open:
            raise self.close_reason or ChannelClosed(0, "channel is not open")
        started: defer.Deferred[Any] = defer.Deferred()

        def consume_failed(reason: Exception) -> None:
            if not started.called:
                started.errback(reason)

        def consume_ok(frame: Any) -> None:
            if not started.called:
                started.callback(frame)

        self._call_when_closed(consume_failed)
        self._raw.basic_consume(
            queue=queue,
            on_message_callback=on_message,
            auto_ack=auto_ack,
            exclusive=exclusive,
            callback=consume_ok,
        )
        frame = await started
        tag = str(frame.method.consumer_tag)
        if on_cancelled is not None:
            self._cancel_callbacks[tag] = on_cancelled

        def on_raw(raw: RawDelivery) -> None:
            # The same as on_message, from frames the protocol decoded.
            deliver(
                Delivery(
                    body=raw.body,
                    delivery_tag=raw.delivery_tag,
                    redelivered=raw.redelivered,
                    exchange=cast(str, raw.exchange),
                    routing_key=cast(str, raw.routing_key),
                    properties=MessageProperties(**raw.properties),
                )
            )

        if self._protocol is not None and self._channel.is_open:
            key = (self._raw.channel_number, tag)
            self._protocol.fast_consumers[key] = FastConsumer(self._raw, on_raw)
            self._fast_keys.add(key)
        return tag

    def _forget_fast(self, consumer_tag: str | None = None) -> None:
        """
        Stop decoding the deliveries of one consumer, or of all of this
        channel's, outside pika; pika then handles any that still arrive.
        """
        if self._protocol is None:
            return
        for key in list(self._fast_keys):
            if consumer_tag is None or key[1] == consumer_tag:
                self._fast_keys.discard(key)
                self._protocol.fast_consumers.pop(key, None)

    async def cancel(self, consumer_tag: str) -> None:
        """
        Cancel a consumer; deliveries already sent may still arrive.
        """
        self._cancel_callbacks.pop(consumer_tag, None)
        if not self._channel.is_open or consumer_tag not in self._raw.consumer_tags:
            # The broker cancelled it already, or the channel is gone.
            return
        done: defer.Deferred[None] = defer.Deferred()

        def finished(_: object) -> None:
            # pika removes the consumer at cancel-ok too.
            self._forget_fast(consumer_tag)
            if not done.called:
                done.callback(None)

        self._call_when_closed(finished)
        self._raw.basic_cancel(consumer_tag, callback=finished)
        # NOTE: pika itself requeues every delivery that arrives between
        # basic.cancel and cancel-ok, which marks it redelivered.  Taking
        # the tag out of pika's private set of cancelling consumers hands
        # those deliveries to our callback instead, and the consumer's
        # owner decides.  pika still removes the consumer at cancel-ok.
        cancelling = getattr(self._raw, "_cancelled", None)
        if isinstance(cancelling, set):
            cancelling.discard(consumer_tag)
        # A broker that stopped responding must not delay a stop.
        await _wait_bounded(done, self._reactor)

    def ack(self, delivery_tag: int) -> None:
        """
        Acknowledge a delivery.  On a channel or connection that is closing
        this does nothing: the broker requeues the delivery.

        While the connection handles received data, the acknowledgement
        waits until it is done, and is sent with the others made meanwhile.
        """
        protocol = self._protocol
        if protocol is not None and protocol.receiving:
            if not self._pending_acks:
                protocol.after_receiving.append(self._send_acks)
            self._pending_acks.add(delivery_tag)
            return
        self._settle(delivery_tag)
        self._send_ack(delivery_tag, multiple=False)

    def _send_ack(self, delivery_tag: int, *, multiple: bool) -> None:
        try:
            if self._channel.is_open:
                self._channel.basic_ack(delivery_tag, multiple=multiple)
        except (pika.exceptions.ChannelWrongStateError, pika.exceptions.ConnectionWrongStateError):
            pass

    def _settle(self, delivery_tag: int) -> None:
        """
        Forget a delivery settled on its own, and every settled one at the
        start of the unsettled deliveries.
        """
        self._settled.add(delivery_tag)
        unsettled = self._unsettled
        while unsettled and unsettled[0] in self._settled:
            self._settled.discard(unsettled.popleft())

    def _send_acks(self) -> None:
        """
        Send the acknowledgements that waited: one multiple-ack for those
        at the start of the unsettled deliveries, one frame for each other.
        """
        pending, self._pending_acks = self._pending_acks, set()
        unsettled = self._unsettled
        highest: int | None = None
        run = 0
        while unsettled and (unsettled[0] in pending or unsettled[0] in self._settled):
            tag = unsettled.popleft()
            run += 1
            if tag in pending:
                pending.discard(tag)
                highest = tag
            else:
                self._settled.discard(tag)
        if highest is not None:
            # A run of one is sent as a plain ack.
            self._send_ack(highest, multiple=run > 1)
        for tag in sorted(pending):
            self._settled.add(tag)
            self._send_ack(tag, multiple=False)

    def reject(self, delivery_tag: int, *, requeue: bool) -> None:
        """
        Reject a delivery.  On a channel or connection that is closing this
        does nothing: the broker requeues the delivery.
        """
        if delivery_tag in self._pending_acks:
            return
        self._settle(delivery_tag)
        try:
            if self._channel.is_open:
                self._channel.basic_reject(delivery_tag, requeue=requeue)
        except (pika.exceptions.ChannelWrongStateError, pika.exceptions.ConnectionWrongStateError):
            pass

    async def close(self) -> None:
        # Acknowledgements held back until the received data is handled
        # must go out before the channel closes, or the broker requeues
        # deliveries that were served.
        if self._pending_acks:
            self._send_acks()
        # pika cancels the consumers as it closes the channel, and drops
        # their later deliveries.
        self._forget_fast()
        try:
            if self._channel.is_open:
                self._channel.close()
        except (pika.exceptions.ChannelWrongStateError, pika.exceptions.ConnectionWrongStateError):
            pass
        # Without close-ok, the channel ends with its connection.
        await _wait_bounded(self.when_closed(), self._reactor)


@implementer(IPushProducer)
class _SendBuffer:
    """
    Whether the data written to a connection waits unsent in a full buffer.

    It is the transport's streaming producer: Twisted pauses it when more
    than the transport's buffer size waits to be sent, as when the broker
    stops reading, and resumes it once the buffer has drained.
    """

    def __init__(self, socket: abstract.FileDescriptor | None) -> None:
        self._socket = socket
        self.full = False
        self._on_drained: list[Callable[[], object]] = []

    def on_drained(self, callback: Callable[[], object]) -> None:
        """
        Call C{callback} each time a full buffer has drained, and once when
        the connection is lost.
        """
        self._on_drained.append(callback)

    def _drained(self) -> None:
        self.full = False
        for callback in list(self._on_drained):
            callback()

    def pauseProducing(self) -> None:
        self.full = True

    def resumeProducing(self) -> None:
        if self._socket is not None and self._socket.disconnecting:
            # Twisted does not close a transport whose buffer drained while
            # its producer was paused until the producer is unregistered.
            self._socket.unregisterProducer()
        self._drained()

    def stopProducing(self) -> None:
        self._drained()


class _WritesThroughProtocol:
    """
    The transport that pika writes to: it passes pika's frames to
    L{_PikaProtocol.write}, so that they keep their order with the frames
    txass encodes itself.
    """

    def __init__(self, protocol: _PikaProtocol) -> None:
        self._protocol = protocol

    def write(self, data: bytes) -> None:
        self._protocol.write(data)

    def loseConnection(self) -> None:
        # What was written before the close leaves before it, as it would
        # without holding.
        self._protocol.release_held()
        transport = self._protocol.transport
        if transport is not None:
            transport.loseConnection()


# The maximum number of bytes held back while received data is handled.
# Beyond it they go to the transport at once, so that its full buffer
# pauses the senders as it would without holding.
HOLD_LIMIT = 65536


class _PikaProtocol(TwistedProtocolConnection):
    """
    pika's protocol, keeping the cause of a failed AMQP handshake that pika
    itself would replace by a generic error.
    """

    handshake_error: Exception | None = None
    # The exception with which the transport closed, such as the
    # OpenSSL.SSL.Error of a failed TLS handshake.
    lost_reason: BaseException | None = None
    _clock: Any = None
    # The reactor time at which the last bytes arrived from the broker.
    last_received = 0.0

    # The socket's transport, under the TLS wrapper if there is one.
    socket_transport: abstract.FileDescriptor | None = None
    send_buffer: _SendBuffer

    # Received bytes not handled yet, which end inside a frame; None once
    # the bytes turned out not to be AMQP frames, which pika then reports.
    _received: bytearray | None = None
    # The consumers whose deliveries are decoded here rather than by pika,
    # by channel number and consumer tag.
    fast_consumers: dict[tuple[int, str | bytes], FastConsumer]

    @property
    def body_max(self) -> int:
        """
        The largest body frame payload the connection negotiated, or 0
        before the negotiation.
        """
        frame_max = self._impl.params.frame_max if self._impl.is_open else 0
        return max(int(frame_max) - 8, 0)

    def makeConnection(self, transport: Any) -> None:
        # Unlike pika's own makeConnection, pika writes through this
        # protocol rather than to the transport, and the protocol is ready
        # before pika writes its first bytes.
        Protocol.makeConnection(self, transport)
        self._impl.connection_made(_WritesThroughProtocol(self))

    def connectionMade(self) -> None:
        self.after_receiving = []
        self._held_writes = []
        self._held_bytes = 0
        self._received = bytearray()
        self.fast_consumers = {}
        # A message is several small AMQP frames, and an RPC caller waits
        # for the reply: with Nagle's algorithm on, the kernel can hold the
        # last frame back until the broker's delayed ACK, about 40 ms on
        # Linux.  Under TLS, the TCP transport is the wrapper's transport.
        # Twisted's TLS wrapper passes unknown attributes, setTcpNoDelay
        # among them, on to the transport below it, so the socket's
        # transport is found by its class.
        transport = self.transport
        for _ in range(3):
            if isinstance(transport, abstract.FileDescriptor):
                self.socket_transport = transport
                break
            transport = getattr(transport, "transport", None)
        set_no_delay = getattr(self.socket_transport or self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        self.send_buffer = _SendBuffer(self.socket_transport)
        if self.socket_transport is not None:
            # On the socket's transport itself, not on the TLS wrapper,
            # which would not close while a producer is registered.
            self.socket_transport.registerProducer(cast(IPushProducer, self.send_buffer), True)
        super().connectionMade()

    # Whether the protocol is handling received data now, and what runs
    # once it is done: the acknowledgements that channels held back.
    receiving = False
    after_receiving: list[Callable[[], None]]
    # Whether writes wait in C{_held_writes} until the received data is
    # handled, and their size in bytes.
    _holding = False
    _held_writes: list[bytes]
    _held_bytes = 0

    def dataReceived(self, data: bytes) -> None:
        self.last_received = self._clock.seconds()
        self.receiving = True
        self._holding = True
        try:
            self._split_frames(data)
        finally:
            self.receiving = False
            try:
                waiting = self.after_receiving
                if waiting:
                    self.after_receiving = []
                    for send in waiting:
                        send()
            finally:
                self._holding = False
                self.send_held()

    def write(self, data: bytes) -> None:
        """
        Write C{data} to the broker.

        While received data is handled, writes wait, so that the replies,
        acknowledgements and next requests that handling causes leave in one
        send, made by L{send_held} at the end.  At other times they go to the
        transport, which sends them in the reactor's next turn.

        Nothing is sent from here.  Sending can resume paused senders, and
        their writes would land among the frames of a message that pika
        writes one frame at a time.
        """
        if self._holding:
            if self._held_bytes + len(data) <= HOLD_LIMIT:
                self._held_writes.append(data)
                self._held_bytes += len(data)
                return
            # Data past the hold limit goes to the transport, whose full
            # buffer pauses the senders as it would without holding.
            self.release_held()
        if self.transport is not None:
            self.transport.write(data)

    def _take_held(self) -> bytes:
        """
        Return the writes held back as one string of bytes, and forget them.
        """
        writes = self._held_writes
        data = writes[0] if len(writes) == 1 else b"".join(writes)
        writes.clear()
        self._held_bytes = 0
        return data

    def release_held(self) -> None:
        """
        Pass the writes held back to the transport, without sending them.
        """
        if self._held_writes:
            data = self._take_held()
            if self.transport is not None:
                self.transport.write(data)

    def send_held(self) -> None:
        """
        Send the writes held back, and what waits in the transport, without
        waiting for the reactor's next turn.

        Twisted sends written data once the reactor finds the socket
        writable, which costs each request and reply a turn of the reactor
        of its own, and two system calls that start and stop watching the
        socket.  A plain TCP socket with nothing waiting to be sent is
        written here directly, as the reactor would write it.  What the
        socket does not take, or any write under TLS, goes to the
        transport, and is sent now if the socket takes it.
        """
        transport = self.transport
        if self._held_writes and transport is not None:
            data = self._take_held()
            socket = self.socket_transport
            reactor = self._clock
            # A socket the reactor no longer reads has been aborted (or
            # paused), and one it watches for writing has data waiting,
            # which goes first.
            if (
                socket is transport
                and reactor is not None
                and socket.connected
                and not socket.disconnecting
                and socket in reactor.getReaders()
                and socket not in reactor.getWriters()
            ):
                sent = socket.writeSomeData(data)
                if isinstance(sent, int):
                    if sent == len(data):
                        return
                    data = data[sent:]
                # A socket that failed takes the data into its buffer like
                # any other, and the reactor finds the failure when it
                # writes it.
            transport.write(data)
        self._held_writes.clear()
        self._held_bytes = 0
        self._send_now()

    def _split_frames(self, data: bytes) -> None:
        """
        Hand the deliveries of fast consumers to them, and every other frame
        to pika, in the order received.

        Only whole frames go to pika, so that its own buffer always ends at
        a frame boundary and a delivery can be taken out between two of
        its calls.  Bytes leave the buffer before they are handed on, so
        that code run by pika or a consumer always finds the buffer
        starting at the next frame not handled yet.
        """
        buffer = self._received
        if buffer is None:
            super().dataReceived(data)
            return
        buffer += data
        # The end of the whole frames scanned so far, all for pika.
        offset = 0
        while len(buffer) - offset >= 8:
            kind, channel, size = FRAME_PREFIX.unpack_from(buffer, offset)
            frame_end = offset + 7 + size
            if kind in FRAME_KINDS and frame_end >= len(buffer):
                break
            if kind not in FRAME_KINDS or buffer[frame_end] != FRAME_END:
                # For example the protocol header of a broker that speaks
                # another AMQP version: pika reads and reports it.
                self._received = None
                rest = bytes(buffer)
                buffer.clear()
                super().dataReceived(rest)
                return
            if kind == FRAME_METHOD and self.fast_consumers and buffer[offset + 7 : offset + 11] == DELIVER_IDS:
                # A delivery that has not arrived whole goes to pika, which
                # takes frames one at a time.  Waiting for the rest here
                # would scan a large body again at each chunk.  It would
                # also hide its bytes from pika's heartbeat checker.
                delivery = parse_delivery(buffer, offset, channel, size)
                if isinstance(delivery, RawDelivery):
                    consumer = self.fast_consumers.get((channel, delivery.consumer_tag))
                    if consumer is not None and consumer.is_open and self._impl.is_open:
                        if offset:
                            # The frames before it go first; the delivery
                            # is found again at the start of the buffer.
                            self._hand_to_pika(buffer, offset)
                            offset = 0
                            continue
                        del buffer[: delivery.end]
                        # pika's heartbeat checker counts what it receives.
                        self._impl.bytes_received += delivery.end
                        self._impl.frames_received += delivery.frames
                        consumer.deliver(delivery)
                        continue
            offset = frame_end + 1
        if offset:
            self._hand_to_pika(buffer, offset)

    def _hand_to_pika(self, buffer: bytearray, length: int) -> None:
        """
        Take the first C{length} bytes, whole frames, out of C{buffer} and
        hand them to pika.
        """
        frames = bytes(buffer[:length])
        del buffer[:length]
        super().dataReceived(frames)

    def _send_now(self) -> None:
        """
        Send what waits in the socket's transport now, as the reactor would
        once it finds the socket writable: a socket that takes only part of
        the data, or fails, leaves the rest to the reactor, which still
        watches it.
        """
        socket = self.socket_transport
        if socket is None or not socket.connected or socket.disconnecting:
            # A closing transport is left to the reactor, which closes it
            # once its buffer is empty.
            return
        reactor = self._clock
        if reactor is not None and socket in reactor.getWriters():
            socket.doWrite()

    def connectionLost(self, reason: Failure = internet_error.ConnectionDone()) -> None:  # type: ignore[assignment]
        self.lost_reason = reason.value
        # NOTE: pika 1.3 and 1.4 replace the broker's Connection.Close reason
        # by ConnectionDone once the socket closes, so it is read here first,
        # from pika's private connection state.
        connection = self._impl
        if not connection.is_open and self.ready is not None:
            pending = getattr(connection, "_error", None)
            if isinstance(pending, pika.exceptions.ConnectionClosedByBroker):
                self.handshake_error = pending
            elif connection.connection_state == connection.CONNECTION_START:
                self.handshake_error = pika.exceptions.ProbableAuthenticationError(repr(reason.value))
            elif connection.connection_state == connection.CONNECTION_TUNE:
                self.handshake_error = pika.exceptions.ProbableAccessDeniedError(repr(reason.value))
        super().connectionLost(reason)

    def _on_connection_failed(self, _connection: Any, _error_message: Exception | None = None) -> None:
        if self.handshake_error is None:
            self.handshake_error = _error_message
        super()._on_connection_failed(_connection, _error_message)


def _describe_handshake_error(address: BrokerAddress, error: Exception | None) -> ConnectionFailed:
    if isinstance(error, pika.exceptions.ConnectionClosedByBroker):
        if error.reply_code == _ACCESS_REFUSED:
            return address.connection_failed(
                f"the broker rejected the user name or password ({error.reply_text})",
                AuthenticationFailed,
            )
        if error.reply_code == _NOT_ALLOWED:
            return address.connection_failed(
                f"the vhost does not exist or the user has no access to it ({error.reply_text}); "
                f"create it with 'rabbitmqctl add_vhost' and grant access with "
                f"'rabbitmqctl set_permissions'",
                VhostNotFound,
            )
        return address.connection_failed(f"the broker closed the connection: {error.reply_code} {error.reply_text}")
    if isinstance(error, pika.exceptions.AuthenticationError):
        return address.connection_failed(f"the broker rejected the user name or password ({error})", AuthenticationFailed)
    # RabbitMQ reports a rejected login or vhost with connection.close, read
    # above.  A socket that closes at those steps without it may as well be
    # a network failure, so the error does not claim either cause.
    if isinstance(error, pika.exceptions.ProbableAuthenticationError):
        return address.connection_failed(
            "the connection closed during the AMQP login without a reason from the broker: "
            "the network failed, or the broker rejected the user name or password"
        )
    if isinstance(error, pika.exceptions.ProbableAccessDeniedError):
        return address.connection_failed(
            "the connection closed while opening the vhost without a reason from the broker: "
            "the network failed, or the vhost does not exist or the user has no access to it"
        )
    return address.connection_failed(f"AMQP handshake failed: {error!r}")


# OpenSSL's certificate verification errors (X509_V_ERR_*).
_VERIFY = SSL.X509VerificationCodes
_UNKNOWN_ISSUER_ERRORS = frozenset(
    {
        _VERIFY.ERR_UNABLE_TO_GET_ISSUER_CERT,
        _VERIFY.ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
        _VERIFY.ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE,
    }
)

# TLS alert descriptions (RFC 8446, section 6) that the broker may send
# while it rejects a handshake.
_TLS_ALERTS = {
    10: "unexpected_message",
    20: "bad_record_mac",
    40: "handshake_failure",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    49: "access_denied",
    50: "decode_error",
    51: "decrypt_error",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    112: "unrecognized_name",
    116: "certificate_required",
    120: "no_application_protocol",
}
_HANDSHAKE_FAILURE_ALERT = 40
_PROTOCOL_VERSION_ALERT = 70
_CERTIFICATE_REQUIRED_ALERT = 116
# Alerts with which a server rejects the client certificate it was sent.
_CLIENT_CERTIFICATE_ALERTS = frozenset({42, 43, 44, 45, 46, 48, 49})
_FATAL_ALERT_LEVEL = 2


def _describe_certificate(certificate: x509.Certificate) -> str:
    return repr(certificate.subject.rfc4514_string() or "(empty subject)")


def _certificate_names(certificate: x509.Certificate) -> str:
    """
    Return the DNS names and IP addresses a certificate is for, as text.
    """
    try:
        alternative_names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        common_names = [str(a.value) for a in certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
        listed = ", ".join(common_names) or "no name"
        return f"{listed} (in its common name only: it has no subjectAltName, which TLS clients check)"
    names = [*alternative_names.get_values_for_type(x509.DNSName)]
    names += [str(address) for address in alternative_names.get_values_for_type(x509.IPAddress)]
    return ", ".join(names) or "no DNS name or IP address"


def _read_tls_file(address: BrokerAddress, option: str, path: str, description: str) -> bytes:
    try:
        status = os.stat(path)
        if not stat.S_ISREG(status.st_mode) or status.st_size > MAX_TLS_FILE:
            raise address.connection_failed(
                f"cannot read the {description} {path} (broker URL option {option}): it is not a regular "
                f"file of at most {MAX_TLS_FILE} bytes",
                TLSFailed,
            )
        with open(path, "rb") as pem:
            return pem.read(MAX_TLS_FILE + 1)
    except OSError as e:
        raise address.connection_failed(
            f"cannot read the {description} {path} (broker URL option {option}): {e.strerror or e}", TLSFailed
        ) from None


def _load_certificates(address: BrokerAddress, option: str, path: str, description: str) -> list[x509.Certificate]:
    data = _read_tls_file(address, option, path, description)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise address.connection_failed(
            f"the {description} {path} (broker URL option {option}) contains no certificate txass can read: "
            f"expected PEM text starting with -----BEGIN CERTIFICATE-----",
            TLSFailed,
        )
    return certificates


# pyOpenSSL 24.3 and later take cryptography's certificates and keys, and
# deprecate passing their own X509 and PKey types in their place.
_PYOPENSSL_TAKES_CRYPTOGRAPHY = tuple(int(part) for part in OpenSSL.__version__.split(".")[:2]) >= (24, 3)

# The private key types pyOpenSSL can sign a TLS handshake with.
_SigningKey = (
    rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | dsa.DSAPrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
)


def _load_private_key(address: BrokerAddress, path: str) -> _SigningKey:
    """
    Load the client's private key, which must not be encrypted.
    """
    data = _read_tls_file(address, "keyfile", path, "client private key file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        # cryptography's error for an encrypted key read without a password.
        raise address.connection_failed(
            f"cannot use the client private key file {path} (broker URL option keyfile): it is encrypted, "
            f"and txass reads only unencrypted keys; protect the file with its permissions instead",
            TLSFailed,
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise address.connection_failed(
            f"the client private key file {path} (broker URL option keyfile) contains no private key txass "
            f"can read: expected unencrypted PEM text such as -----BEGIN PRIVATE KEY-----",
            TLSFailed,
        ) from None
    if not isinstance(
        key,
        (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, dsa.DSAPrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey),
    ):
        raise address.connection_failed(
            f"cannot use the client private key file {path} (broker URL option keyfile): a "
            f"{type(key).__name__} cannot sign a TLS handshake",
            TLSFailed,
        )
    return key


def _certificate_options(address: BrokerAddress) -> CertificateOptions:
    """
    Read the CA and client certificate files the URL names, and build the
    TLS settings of a connection from them.

    The files are read at each connection attempt, so that a reconnection
    uses renewed certificates.

    @raise TLSFailed: if a file cannot be read or used.
    """
    options: dict[str, Any] = {}
    if address.certfile is not None and address.keyfile is not None:
        chain = _load_certificates(address, "certfile", address.certfile, "client certificate file")
        key = _load_private_key(address, address.keyfile)
        public_key_format = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if chain[0].public_key().public_bytes(*public_key_format) != key.public_key().public_bytes(*public_key_format):
            raise address.connection_failed(
                f"the client certificate {address.certfile} (broker URL option certfile) does not match the "
                f"private key {address.keyfile} (broker URL option keyfile)",
                TLSFailed,
            )
        if _PYOPENSSL_TAKES_CRYPTOGRAPHY:
            options["certificate"] = chain[0]
            options["privateKey"] = key
            options["extraCertChain"] = chain[1:]
        else:
            options["certificate"] = crypto.X509.from_cryptography(chain[0])
            options["privateKey"] = crypto.PKey.from_cryptography_key(key)
            options["extraCertChain"] = [crypto.X509.from_cryptography(certificate) for certificate in chain[1:]]
    if address.insecure_skip_verify:
        return CertificateOptions(verify=False, **options)
    if address.cacertfile is not None:
        authorities = _load_certificates(address, "cacertfile", address.cacertfile, "CA file")
        options["trustRoot"] = trustRootFromCertificates(
            [Certificate(crypto.X509.from_cryptography(authority)) for authority in authorities]
        )
    else:
        options["trustRoot"] = platformTrust()
    return CertificateOptions(**options)


@implementer(IOpenSSLClientConnectionCreator)
class _ClientTLS:
    """
    The TLS side of one connection attempt to the broker.

    It sends the server name, verifies the broker's certificate against the
    trust root and its name against the server name, and records why a
    handshake failed.  Twisted 26.10's C{optionsForClientTLS} checks the
    name in a verify callback that it sets on each connection, which
    pyOpenSSL cannot return for wrapping.  So this class makes the same
    checks, with Twisted's certificate options and service_identity, in a
    verify callback of its own, which also records OpenSSL's error.
    """

    def __init__(self, address: BrokerAddress) -> None:
        """
        @raise TLSFailed: if a certificate or key file cannot be used.
        """
        self._address = address
        self._server_name = address.server_name or address.host
        self._server_name_is_ip = _is_ip_address(self._server_name)
        # An IP address is never sent as a server name (RFC 6066).
        self._sni: bytes | None = None
        if not self._server_name_is_ip:
            try:
                self._sni = self._server_name.encode("idna")
            except UnicodeError:
                raise address.connection_failed(
                    f"the host name {self._server_name!r} cannot be sent as a TLS server name", TLSFailed
                ) from None
        try:
            self._context = _certificate_options(address).getContext()
        except SSL.Error as e:
            raise address.connection_failed(f"cannot set up TLS with the configured files: {e}", TLSFailed) from None
        self._context.set_info_callback(self._on_tls_event)
        self.handshake_done = False
        # The first failed verification: OpenSSL's error code, the depth
        # of the certificate in the chain and the certificate.
        self.verify_error: tuple[int, int, x509.Certificate] | None = None
        # The broker's certificate, when it is not for the server name.
        self.name_mismatch: x509.Certificate | None = None
        # The first fatal alert the broker sent.
        self.alert: int | None = None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self._sni is not None:
            connection.set_tlsext_host_name(self._sni)
        if not self._address.insecure_skip_verify:
            # The mode is the context's, so verification stays as strict.
            connection.set_verify(self._context.get_verify_mode(), self._verify_certificate)
        return connection

    def _verify_certificate(
        self, connection: SSL.Connection, certificate: crypto.X509, error: int, depth: int, ok: int
    ) -> bool:
        """
        Keep OpenSSL's verdict on each certificate of the chain, and check
        the name of the broker's own certificate (depth 0).
        """
        try:
            if not ok:
                if self.verify_error is None:
                    self.verify_error = (error, depth, certificate.to_cryptography())
                return False
            if depth != 0:
                return True
            broker_certificate = certificate.to_cryptography()
            try:
                if self._server_name_is_ip:
                    verify_certificate_ip_address(broker_certificate, self._server_name)
                else:
                    verify_certificate_hostname(broker_certificate, self._server_name)
            except (VerificationError, CertificateError):
                self.name_mismatch = broker_certificate
                return False
            return True
        except Exception:
            # An exception would escape into OpenSSL, so the certificate is
            # rejected and the error logged.
            _log.failure("checking the broker's certificate failed")
            return False

    def _on_tls_event(self, connection: SSL.Connection, where: int, value: int) -> None:
        if where & SSL.SSL_CB_HANDSHAKE_DONE:
            self.handshake_done = True
        # For an alert, value contains its level in the high byte and its
        # description in the low byte.
        received_alert = (where & SSL.SSL_CB_READ_ALERT) == SSL.SSL_CB_READ_ALERT
        if received_alert and value >> 8 == _FATAL_ALERT_LEVEL and self.alert is None:
            self.alert = value & 0xFF

    def describe_failure(self, reason: object) -> str | None:
        """
        Describe why the connection failed, when TLS is the cause.

        @param reason: The exception with which the connection was lost.
        @return: The description, or L{None} when TLS did not fail.
        """
        if self.name_mismatch is not None:
            return (
                f"hostname mismatch: certificate is for {_certificate_names(self.name_mismatch)}, not "
                f"{self._server_name}; connect to a name the certificate is for, or set it with the broker URL "
                f"option server_name"
            )
        if self.verify_error is not None:
            return self._describe_verify_error(*self.verify_error)
        if self.alert is not None:
            return self._describe_alert(self.alert)
        if isinstance(reason, SSL.Error):
            text = _describe_ssl_error(reason)
            # OpenSSL's error for a reply that is not a TLS record, such as
            # RabbitMQ's AMQP protocol header on a port without TLS.
            if "wrong version number" in text:
                return (
                    f"TLS handshake failed ({text}): the broker did not answer with TLS; is the port a TLS "
                    f"listener? An amqp:// URL connects without TLS"
                )
            return f"TLS handshake failed: {text}"
        closed = isinstance(reason, (internet_error.ConnectionDone, internet_error.ConnectionLost))
        if closed and not self.handshake_done:
            return "the connection closed during the TLS handshake; is the port a TLS listener?"
        return None

    def _trust_source(self) -> str:
        if self._address.cacertfile is not None:
            return f"the CA file {self._address.cacertfile} (broker URL option cacertfile)"
        return "the system trust store; name the broker's CA file with the broker URL option cacertfile"

    def _describe_verify_error(self, error: int, depth: int, certificate: x509.Certificate) -> str:
        subject = _describe_certificate(certificate)
        role = f"the broker's certificate {subject}" if depth == 0 else f"the CA certificate {subject} of the broker's chain"
        if error == _VERIFY.ERR_CERT_HAS_EXPIRED:
            return f"certificate has expired: {role} was valid until {certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
        if error == _VERIFY.ERR_CERT_NOT_YET_VALID:
            return (
                f"certificate is not yet valid: {role} is valid from "
                f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC; check the clocks of client and broker"
            )
        if error in _UNKNOWN_ISSUER_ERRORS:
            issuer = repr(certificate.issuer.rfc4514_string())
            return f"certificate is not trusted (unknown CA): {role} was issued by {issuer}, which is not in {self._trust_source()}"
        if error == _VERIFY.ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
            return f"certificate is not trusted (self-signed): {role} signed itself and is not in {self._trust_source()}"
        if error == _VERIFY.ERR_SELF_SIGNED_CERT_IN_CHAIN:
            return (
                f"certificate is not trusted (unknown CA): the broker's chain ends in the CA certificate {subject}, "
                f"which is not in {self._trust_source()}"
            )
        if error == _VERIFY.ERR_CERT_REVOKED:
            return f"certificate has been revoked: {role}"
        if error == _VERIFY.ERR_CERT_SIGNATURE_FAILURE:
            return f"certificate signature is invalid: {role}"
        if error == _VERIFY.ERR_INVALID_CA:
            return f"certificate chain is invalid: {role} is used as a CA certificate but is not one"
        if error == _VERIFY.ERR_INVALID_PURPOSE:
            return f"certificate is not for a TLS server: the extended key usage of {role} does not allow it"
        return f"certificate verification failed: OpenSSL verify error {error} on {role}"

    def _describe_alert(self, alert: int) -> str:
        name = _TLS_ALERTS.get(alert, f"number {alert}")
        certfile = self._address.certfile
        if alert == _CERTIFICATE_REQUIRED_ALERT:
            return (
                f"the broker requires a client certificate ({name} alert): give one with the broker URL "
                f"options certfile and keyfile"
            )
        if alert == _HANDSHAKE_FAILURE_ALERT and certfile is None:
            return (
                f"the broker rejected the TLS handshake ({name} alert): it may require a client certificate "
                f"(broker URL options certfile and keyfile), or accept no TLS version or cipher this client offers"
            )
        if alert in _CLIENT_CERTIFICATE_ALERTS and certfile is not None:
            return f"the broker rejected the client certificate {certfile} ({name} alert)"
        if alert == _PROTOCOL_VERSION_ALERT:
            return f"the broker accepts no TLS version this client offers ({name} alert)"
        return f"the broker rejected the TLS handshake ({name} alert)"


def _describe_ssl_error(error: SSL.Error) -> str:
    """
    Return the reasons of OpenSSL's error queue in C{error}, such as
    C{"wrong version number"}.
    """
    reasons = []
    for entry in error.args[0] if error.args and isinstance(error.args[0], list) else []:
        if isinstance(entry, tuple) and entry and entry[-1]:
            reasons.append(str(entry[-1]))
    return "; ".join(reasons) or str(error) or type(error).__name__


class AMQPConnection:
    """
    An open AMQP connection.

    L{open_connection} creates it.
    """

    def __init__(self, protocol: _PikaProtocol, address: BrokerAddress, reactor: Any) -> None:
        self._protocol = protocol
        self.address = address
        self._reactor = reactor
        self.close_reason: Exception | None = None
        self._lost: list[defer.Deferred[Exception]] = []
        assert protocol.closed is not None
        protocol.closed.addBoth(self._on_closed)
        # The reason the broker gave for blocking publishes on this
        # connection (connection.blocked), or None while it does not.
        self.blocked_reason: str | None = None
        self._blocked_callbacks: list[Callable[[str | None], object]] = []
        protocol._impl.add_on_connection_blocked_callback(self._on_blocked)
        protocol._impl.add_on_connection_unblocked_callback(self._on_unblocked)
        # pika checks heartbeats only every interval + 5 s, so a dead peer
        # can go unnoticed for two such periods.  This watchdog drops the
        # connection once nothing arrived for two heartbeat intervals, which
        # is safe because the broker sends a heartbeat every half interval.
        self.heartbeat: int = protocol._impl.params.heartbeat or 0
        self._watchdog: task.LoopingCall | None = None
        self._last_check = reactor.seconds()
        if self.heartbeat > 0:
            self._watchdog = task.LoopingCall(self._check_alive)
            self._watchdog.clock = reactor
            self._watchdog.start(self.heartbeat / 2, now=False)

    def _check_alive(self) -> None:
        now = self._reactor.seconds()
        late = now - self._last_check > self.heartbeat
        self._last_check = now
        if late:
            # The reactor was blocked, so data may be waiting unread: count
            # the silence from now.
            self._protocol.last_received = now
            return
        silent = now - self._protocol.last_received
        if silent > 2 * self.heartbeat and self._protocol.transport is not None:
            _log.error(
                "no data from the broker at {url} for {seconds:.1f} s, over two heartbeat intervals "
                "of {heartbeat} s; dropping the connection",
                url=self.address.safe_url(),
                seconds=silent,
                heartbeat=self.heartbeat,
            )
            self._stop_watchdog()
            self._protocol.transport.abortConnection()

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self._watchdog = None

    def _on_blocked(self, _connection: Any, frame: Any) -> None:
        reason = getattr(frame.method, "reason", None) or "no reason given"
        self.blocked_reason = str(reason)
        self._notify_blocked()

    def _on_unblocked(self, _connection: Any, _frame: Any) -> None:
        self.blocked_reason = None
        self._notify_blocked()

    def _notify_blocked(self) -> None:
        for callback in list(self._blocked_callbacks):
            callback(self.blocked_reason)

    def on_blocked(self, callback: Callable[[str | None], object]) -> None:
        """
        Call C{callback} with the broker's reason when it blocks publishing
        on this connection (as RabbitMQ does during a memory or disk alarm),
        and with L{None} when it unblocks it.
        """
        self._blocked_callbacks.append(callback)

    @property
    def send_buffer_full(self) -> bool:
        """
        Whether the data written to this connection waits unsent in a full
        buffer, as when the broker or the network stopped taking it.
        """
        return self._protocol.send_buffer.full

    def on_drained(self, callback: Callable[[], object]) -> None:
        """
        Call C{callback} each time the full send buffer of this connection
        has drained, and once when the connection is lost.
        """
        self._protocol.send_buffer.on_drained(callback)

    def _on_closed(self, reason: Any) -> None:
        self._stop_watchdog()
        if isinstance(reason, Failure):
            reason = reason.value
        if isinstance(reason, pika.exceptions.ConnectionClosedByClient):
            exc = ConnectionLost("connection closed by this client")
        else:
            exc = ConnectionLost(f"connection to the broker at {self.address.host}:{self.address.port} lost: {reason!r}")
        self.close_reason = exc
        waiting, self._lost = self._lost, []
        for d in waiting:
            d.callback(exc)

    @property
    def is_open(self) -> bool:
        return self.close_reason is None and bool(self._protocol.is_open)

    def when_closed(self) -> defer.Deferred[Exception]:
        """
        Return a Deferred that fires with a L{ConnectionLost} once the
        connection has closed, whether the broker, the network or this
        client closed it.
        """
        if self.close_reason is not None:
            return defer.succeed(self.close_reason)
        d: defer.Deferred[Exception] = defer.Deferred()
        self._lost.append(d)
        return d

    async def channel(self, *, confirms: bool = False) -> AMQPChannel:
        """
        Open a channel, with publisher confirms when C{confirms} is true.

        @raise ConnectionLost: if the connection is closed.
        """
        if not self.is_open:
            raise self.close_reason or ConnectionLost("connection to the broker is closed")
        try:
            opening = self._protocol.channel()
        except pika.exceptions.NoFreeChannels:
            raise ChannelClosed(
                0, "no free channel number: every channel this connection negotiated (channel_max) is open"
            ) from None
        twisted_channel = await _call(opening, on_abandoned=_close_abandoned_channel)
        channel = AMQPChannel(twisted_channel, confirms=False, reactor=self._reactor, protocol=self._protocol)
        if confirms:
            await channel.enable_confirms()
        return channel

    async def close(self) -> None:
        """
        Close the connection and wait until the socket is closed.
        """
        if self.close_reason is not None:
            return
        closed = self.when_closed()
        self._protocol.close()
        if not await _wait_bounded(closed, self._reactor) and self._protocol.transport is not None:
            _log.warn(
                "the broker at {url} did not confirm closing within {seconds:g} s; dropping the connection",
                url=self.address.safe_url(),
                seconds=CLOSE_TIMEOUT,
            )
            self._protocol.transport.abortConnection()
            await closed


def _close_abandoned_channel(channel: TwistedChannel) -> None:
    """
    Close a channel that opened after the caller stopped waiting for it.
    """
    try:
        channel.close()
    except (pika.exceptions.ChannelWrongStateError, pika.exceptions.ConnectionWrongStateError):
        pass


async def open_connection(address: BrokerAddress, reactor: Any) -> AMQPConnection:
    """
    Connect to the broker and complete the AMQP handshake.

    @raise ConnectionFailed: or one of its subclasses, naming host, port,
        vhost and user, when the connection cannot be opened.
    """
    endpoint: Any = HostnameEndpoint(reactor, address.host, address.port, timeout=address.connection_timeout)
    tls: _ClientTLS | None = None
    if address.tls:
        tls = _ClientTLS(address)
        # zope.interface declarations are invisible to mypy.
        endpoint = wrapClientTLS(cast(IOpenSSLClientConnectionCreator, tls), endpoint)
        if address.insecure_skip_verify:
            _log.warn(
                "INSECURE: connecting to {url} without verifying the broker's TLS certificate "
                "(insecure_skip_verify=true), so anyone on the network path can impersonate the broker "
                "and read or change the traffic, including the password",
                url=address.safe_url(),
            )
    parameters = address.pika_parameters()

    def build_protocol() -> _PikaProtocol:
        protocol = _PikaProtocol(parameters, custom_reactor=reactor)
        protocol._clock = reactor
        protocol.last_received = reactor.seconds()
        return protocol

    factory = Factory.forProtocol(build_protocol)

    try:
        protocol: _PikaProtocol = await endpoint.connect(factory)
    except defer.CancelledError:
        raise
    except internet_error.ConnectionRefusedError:
        raise address.connection_failed("connection refused; is RabbitMQ running and listening on that port?") from None
    except (internet_error.TimeoutError, defer.TimeoutError):
        raise address.connection_failed(f"no answer within {address.connection_timeout:g} s") from None
    except internet_error.DNSLookupError:
        raise address.connection_failed("the host name could not be resolved") from None
    except Exception as e:
        if tls is not None and (tls_reason := tls.describe_failure(e)) is not None:
            raise address.connection_failed(tls_reason, TLSFailed) from None
        raise address.connection_failed(f"{type(e).__name__}: {e}") from None

    ready = protocol.ready
    if ready is None:
        raise address.connection_failed("the connection closed during the AMQP handshake")
    ready.addTimeout(address.connection_timeout, reactor)
    try:
        await ready
    except defer.CancelledError:
        if protocol.transport is not None:
            protocol.transport.abortConnection()
        raise
    except defer.TimeoutError:
        if protocol.transport is not None:
            protocol.transport.abortConnection()
        if tls is not None and not tls.handshake_done:
            raise address.connection_failed(
                f"the TLS handshake did not complete within {address.connection_timeout:g} s", TLSFailed
            ) from None
        raise address.connection_failed(
            f"the AMQP handshake did not complete within {address.connection_timeout:g} s"
        ) from None
    except Exception as e:
        # A failed TLS handshake surfaces as a connection closed during the
        # AMQP handshake, so its cause is looked for first.
        if tls is not None and (tls_reason := tls.describe_failure(protocol.lost_reason)) is not None:
            raise address.connection_failed(tls_reason, TLSFailed) from None
        if protocol.handshake_error is not None:
            raise _describe_handshake_error(address, protocol.handshake_error) from None
        raise address.connection_failed(f"the connection closed during the AMQP handshake: {e!r}") from None
    _log.info("connected to {url}", url=address.safe_url())
    return AMQPConnection(protocol, address, reactor)
