"""
The mapping of a service name to AMQP exchanges, queues and routing keys.

For a service C{S}:

  - requests go to the durable direct exchange C{S} with routing key C{S};
  - the durable queue C{S}, bound to it with binding key C{S}, keeps them
    until a server takes them;
  - the results for the client with key C{K} go to the durable queue
    C{S.client.K}; a client without a key gets an exclusive queue
    C{S.client.tmp-<32 hex digits>} that the broker deletes with its
    connection;
  - replies are published to the default exchange with the request's
    C{reply_to} as routing key, so any queue name works as a reply
    destination;
  - a request waiting to be served again waits in the quorum queue
    C{S.retry.<milliseconds>}, which returns it to C{S} when its delay is
    over;
  - a request that failed for good is kept in the durable queue
    C{S.dead-letter};
  - a request whose last delivery never finished (its server died) waits in
    the durable queue C{S.unfinished}, which servers take one request at a
    time from.

Service names cannot contain C{.client.} or C{.retry.}, nor end with
C{.dead-letter} or C{.unfinished}, so these queues never take the name of
another service.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from txass.errors import InvalidName

# AMQP limits exchange and queue names to 255 bytes.  A service name leaves
# room for the ".client.<key>" suffix of its result queues, and the
# ".retry.<milliseconds>" and ".dead-letter" suffixes.
MAX_SERVICE_NAME = 200
MAX_CLIENT_KEY = 45

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*\Z")
_TEMPORARY_PREFIX = "tmp-"
_RETRY_INFIX = ".retry."
_DEAD_LETTER_SUFFIX = ".dead-letter"
_UNFINISHED_SUFFIX = ".unfinished"


def _check_name(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str):
        raise InvalidName(f"{what} must be a str, not {type(value).__name__}")
    if not _NAME.match(value) or len(value) > limit:
        raise InvalidName(
            f"invalid {what} {value!r}: use 1 to {limit} ASCII letters, digits, "
            f"'.', '_', ':' or '-', starting with a letter or digit"
        )
    if value.startswith("amq."):
        raise InvalidName(f"invalid {what} {value!r}: names starting with 'amq.' are reserved by AMQP")
    return value


def check_service_name(name: object) -> str:
    """
    Return C{name} if it can name a service.

    @raise InvalidName: if it cannot, for example because it contains
        C{.client.}, which would make its queue the result queue of a
        client of another service.
    """
    name = _check_name(name, "service name", MAX_SERVICE_NAME)
    if ".client." in name:
        raise InvalidName(f"invalid service name {name!r}: '.client.' is kept for result queues")
    if _RETRY_INFIX in name:
        raise InvalidName(f"invalid service name {name!r}: {_RETRY_INFIX!r} is kept for retry queues")
    for suffix, kept_for in ((_DEAD_LETTER_SUFFIX, "dead-letter queues"), (_UNFINISHED_SUFFIX, "queues of unfinished requests")):
        if name.endswith(suffix):
            raise InvalidName(f"invalid service name {name!r}: names ending with {suffix!r} are kept for {kept_for}")
    return name


def check_client_key(key: object) -> str:
    """
    Return C{key} if it can name a client's durable result queue.

    @raise InvalidName: if it cannot.
    """
    key = _check_name(key, "client key", MAX_CLIENT_KEY)
    if key.startswith(_TEMPORARY_PREFIX):
        raise InvalidName(
            f"invalid client key {key!r}: keys starting with {_TEMPORARY_PREFIX!r} "
            f"are kept for clients without a key"
        )
    return key


@dataclass(frozen=True, slots=True)
class Topology:
    """
    The AMQP names that belong to one service.
    """

    service: str

    @classmethod
    def for_service(cls, name: str) -> Topology:
        return cls(check_service_name(name))

    @property
    def exchange(self) -> str:
        """
        The durable direct exchange requests are published to.
        """
        return self.service

    @property
    def queue(self) -> str:
        """
        The durable queue that servers consume requests from.
        """
        return self.service

    @property
    def routing_key(self) -> str:
        """
        The routing key of requests, and the binding key of the queue.
        """
        return self.service

    def client_queue(self, key: str) -> str:
        """
        Return the name of the durable result queue of the client C{key}.
        """
        return f"{self.service}.client.{check_client_key(key)}"

    def temporary_client_queue(self) -> str:
        """
        Return a fresh name for the exclusive result queue of a client
        without a key.
        """
        return f"{self.service}.client.{_TEMPORARY_PREFIX}{uuid.uuid4().hex}"

    def retry_queue(self, milliseconds: int) -> str:
        """
        Return the name of the queue where requests wait C{milliseconds}
        before they return to the service queue.
        """
        return f"{self.service}{_RETRY_INFIX}{milliseconds}"

    def is_retry_queue(self, queue: str) -> bool:
        """
        Return whether C{queue} is one of this service's retry queues.
        """
        prefix = f"{self.service}{_RETRY_INFIX}"
        return queue.startswith(prefix) and queue[len(prefix) :].isdigit()

    @property
    def dead_letter_queue(self) -> str:
        """
        The durable queue that keeps the requests that failed for good.
        """
        return f"{self.service}{_DEAD_LETTER_SUFFIX}"

    @property
    def unfinished_queue(self) -> str:
        """
        The durable queue of requests whose last delivery never finished.
        """
        return f"{self.service}{_UNFINISHED_SUFFIX}"
