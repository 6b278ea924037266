"""
txass: Asynchronous Service Stages for Twisted.

A service is a name on a RabbitMQ broker.  Servers react to its requests by
calling methods of a handler; clients call it without waiting and receive
each result in the callback method of the same name::

    broker = await txass.connect("amqp://guest:guest@localhost:5672/%2F")
    await broker.service("echo").react(Echo)
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from txass._broker import Broker, Service
from txass._client import Client
from txass._connection import DEFAULT_URL, InvalidURL, open_connection, parse_url
from txass._context import RequestContext, current_request, in_thread
from txass._handler import expose
from txass._policy import Retry
from txass._rpc import RPCClient
from txass._server import Server
from txass.errors import (
    AuthenticationFailed,
    BrokerBlocked,
    CallTimeout,
    ChannelClosed,
    ConnectionFailed,
    ConnectionLost,
    EncodingError,
    InvalidHandler,
    InvalidName,
    InvalidReply,
    InvalidRequest,
    MessageTooLarge,
    MethodNotFound,
    NoCurrentRequest,
    PublishFailed,
    RemoteError,
    RequestDeadLettered,
    RequestTooLarge,
    ServiceNotFound,
    TLSFailed,
    TxassError,
    UnroutableMessage,
    VhostNotFound,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "connect",
    "current_request",
    "in_thread",
    "expose",
    "Broker",
    "Service",
    "Server",
    "Client",
    "RPCClient",
    "RequestContext",
    "Retry",
    "DEFAULT_URL",
    "TxassError",
    "ConnectionFailed",
    "AuthenticationFailed",
    "VhostNotFound",
    "TLSFailed",
    "ConnectionLost",
    "ChannelClosed",
    "PublishFailed",
    "UnroutableMessage",
    "MessageTooLarge",
    "ServiceNotFound",
    "CallTimeout",
    "BrokerBlocked",
    "InvalidURL",
    "InvalidName",
    "InvalidHandler",
    "InvalidRequest",
    "RequestTooLarge",
    "InvalidReply",
    "MethodNotFound",
    "EncodingError",
    "RemoteError",
    "NoCurrentRequest",
    "RequestDeadLettered",
]


def connect(url: str | None = None, *, reactor: Any = None, reconnect: bool = True) -> defer.Deferred[Broker]:
    """
    Connect to a RabbitMQ broker.

    @param url: An AMQP URI, C{amqp://user:password@host:port/vhost} with
        the vhost percent-encoded (C{%2F} for C{/}) and optional query
        options C{heartbeat} and C{connection_timeout} in seconds.  Without
        it, C{$TXASS_BROKER_URL} is used, or else L{DEFAULT_URL}.
    @param reactor: The reactor to use; the global one by default.
    @param reconnect: Whether the broker connects again, with exponential
        backoff and jitter, when the connection is lost after it was open.
        Servers and clients then consume again, and RPC calls made in the
        meantime wait for the connection within their timeout.  Without it,
        a lost connection stops every server and client of the broker.
    @return: A Deferred that fires with a L{Broker} once the AMQP handshake
        is complete.  It fails with L{ConnectionFailed} when nothing listens
        at the address, L{AuthenticationFailed} for a wrong user name or
        password, and L{VhostNotFound} for a missing vhost; each names host,
        port, vhost and user, never the password.  An unusable C{url} fails
        it with L{InvalidURL}.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor

    async def connecting() -> Broker:
        address = parse_url(url)
        connection = await open_connection(address, reactor)
        return Broker(connection, reactor, reconnect=reconnect)

    return defer.Deferred.fromCoroutine(connecting())
