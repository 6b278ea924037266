"""
The exceptions txass raises, and the error types its error replies name.

Every exception derives from L{TxassError}, so C{except TxassError} catches
any failure of the broker, the connection or a message.  Invalid arguments,
such as a prefetch out of range, raise C{ValueError} or C{TypeError} at
once.  No message or attribute ever contains a broker password.
"""

from __future__ import annotations

__all__ = [
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


class TxassError(Exception):
    """
    Base class of every exception raised by txass.
    """


class ConnectionFailed(TxassError):
    """
    Raised when a connection to the broker cannot be opened: nothing listens
    at the address, the TCP or TLS handshake fails, or the broker rejects the
    AMQP handshake.

    @ivar host: The broker host that was tried.
    @ivar port: The broker port that was tried.
    @ivar vhost: The virtual host that was requested.
    @ivar user: The user name that was presented (never the password).
    @ivar reason: A short description of the cause.
    """

    def __init__(self, host: str, port: int, vhost: str, user: str, reason: str) -> None:
        self.host = host
        self.port = port
        self.vhost = vhost
        self.user = user
        self.reason = reason
        super().__init__(
            f"cannot connect to AMQP broker at {host}:{port}, vhost {vhost!r}, "
            f"user {user!r}: {reason}"
        )


class AuthenticationFailed(ConnectionFailed):
    """
    Raised when the broker rejects the user name or password.
    """


class VhostNotFound(ConnectionFailed):
    """
    Raised when the broker has no such virtual host, or the user has no
    access to it (RabbitMQ reports both the same way).
    """


class TLSFailed(ConnectionFailed):
    """
    Raised when a TLS (C{amqps}) connection cannot be set up: a certificate
    or key file named by the broker URL cannot be used, the broker's
    certificate fails verification, or the broker rejects the TLS
    handshake.  C{reason} names the check that failed, for example that the
    certificate has expired or is for another host name.
    """


class ConnectionLost(TxassError):
    """
    Raised when an open connection to the broker closes before an operation
    that needed it completed.  A publish that fails this way may or may not
    have reached the broker.
    """


class ChannelClosed(TxassError):
    """
    Raised when the broker closes an AMQP channel, for example because a
    queue was declared with arguments that differ from the existing queue.

    @ivar reply_code: The AMQP reply code the broker sent (0 when unknown).
    @ivar reply_text: The text the broker sent with it.
    """

    def __init__(self, reply_code: int, reply_text: str) -> None:
        self.reply_code = reply_code
        self.reply_text = reply_text
        super().__init__(f"AMQP channel closed: {reply_code} {reply_text}")


class PublishFailed(TxassError):
    """
    Raised when the broker negatively acknowledges a published message
    (C{basic.nack}), so it was not stored.
    """


class UnroutableMessage(PublishFailed):
    """
    Raised when the broker returns a mandatory message because no queue is
    bound to receive it.

    @ivar exchange: The exchange the message was published to.
    @ivar routing_key: The routing key it was published with.
    """

    def __init__(self, exchange: str, routing_key: str) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        shown = repr(exchange) if exchange else "the default exchange"
        super().__init__(
            f"message to {shown} with routing key {routing_key!r} was returned "
            f"as unroutable: no queue is bound for it"
        )


class MessageTooLarge(PublishFailed):
    """
    Raised, without sending anything, for a message larger than the broker
    accepts, so that the broker does not close the channel it would be
    published on.

    @ivar size: The size of the message body in bytes.
    @ivar limit: The maximum size in bytes.
    """

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"message body of {size} bytes is larger than the maximum of {limit} bytes "
            f"(RabbitMQ's default max_message_size); it was not sent"
        )


class ServiceNotFound(UnroutableMessage, LookupError):
    """
    Raised when an RPC call is sent to a service that has no request queue
    on the broker, so no server has ever declared it.  The call was not
    stored.

    @ivar service: The name of the service.
    @ivar vhost: The virtual host the call was sent in.
    """

    def __init__(self, service: str, vhost: str) -> None:
        self.service = service
        self.vhost = vhost
        self.exchange = ""
        self.routing_key = service
        Exception.__init__(
            self,
            f"no such service {service!r} in vhost {vhost!r}: the broker has no queue named "
            f"{service!r}; start a server of the service first",
        )


class CallTimeout(TxassError, TimeoutError):
    """
    Raised when an RPC call gets no reply within its timeout.  The request
    may still be served later; its reply is then dropped.

    @ivar service: The service called.
    @ivar method: The method called.
    @ivar timeout: The timeout, in seconds.
    """

    def __init__(self, service: str, method: str, timeout: float) -> None:
        self.service = service
        self.method = method
        self.timeout = timeout
        super().__init__(f"no reply from {service}.{method} within {timeout:g} s")


class BrokerBlocked(CallTimeout):
    """
    Raised when an RPC call could not be sent within its timeout because the
    broker blocked publishing on the connection, as RabbitMQ does during a
    memory or disk alarm.  The request was not sent.

    @ivar reason: The reason the broker gave.
    """

    def __init__(self, service: str, method: str, timeout: float, reason: str) -> None:
        super().__init__(service, method, timeout)
        self.reason = reason
        Exception.__init__(
            self,
            f"no reply from {service}.{method} within {timeout:g} s: the broker blocked publishing "
            f"({reason}), so the request was not sent",
        )


class InvalidName(TxassError, ValueError):
    """
    Raised when a service name or client key cannot be used as part of an
    AMQP exchange or queue name.
    """


class InvalidHandler(TxassError, ValueError):
    """
    Raised when a handler, or the import path naming one, cannot be used.
    """


class InvalidRequest(TxassError):
    """
    The error type of a reply to a request that could not be decoded: its
    body is not a JSON envelope, or its content type is not accepted.
    """


class RequestTooLarge(InvalidRequest):
    """
    The error type of a reply to a request whose body is larger than the
    service's maximum request size.
    """


class InvalidReply(TxassError):
    """
    Raised by an RPC call whose reply is not a reply envelope, for example
    because something other than a txass server answered it.
    """


class MethodNotFound(TxassError):
    """
    The error type of a reply to a request naming a method the handler does
    not expose: a missing name, a private name (starting with C{_}) or an
    attribute that is not callable.
    """


class EncodingError(TxassError, ValueError):
    """
    Raised when a value cannot be encoded as JSON for the wire, for example
    a set, an arbitrary object, or a float that is NaN or infinite.
    """


class RemoteError(TxassError):
    """
    The error a service handler raised, as reported by its error reply.

    Client callbacks receive an instance of this class in place of a result
    when the request failed.  Nothing in an error reply is imported or
    instantiated: C{type} is only the name the server reported.

    @ivar type: The name of the exception type raised on the server, such as
        C{"ValueError"}.
    @ivar message: The exception's message.
    @ivar traceback: The remote traceback text, or L{None} when the service
        does not send tracebacks.
    @ivar method: The method the request named.
    """

    def __init__(
        self,
        type: str,
        message: str,
        traceback: str | None = None,
        method: str | None = None,
    ) -> None:
        self.type = type
        self.message = message
        self.traceback = traceback
        self.method = method
        super().__init__(f"{type}: {message}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RemoteError):
            return NotImplemented
        return (self.type, self.message, self.traceback, self.method) == (
            other.type,
            other.message,
            other.traceback,
            other.method,
        )

    def __hash__(self) -> int:
        return hash((self.type, self.message, self.method))

    def __repr__(self) -> str:
        return f"RemoteError(type={self.type!r}, message={self.message!r}, method={self.method!r})"


class NoCurrentRequest(TxassError, LookupError):
    """
    Raised by L{txass.current_request} when it is called outside the code of
    a handler serving a request or receiving a result.
    """


class RequestDeadLettered(TxassError):
    """
    The error a caller gets when its request was moved to the service's
    dead-letter queue without a handler error to report: the handler
    resent it, or no delivery of it finished, on its last attempt.  (When
    the handler failed on its last attempt, the caller gets that error.)
    """
