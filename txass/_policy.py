"""
The failure policy of servers: retries of failed requests, and the limit
on attempts for requests that fail or never finish.

Every request carries the number of attempts made before it in the
C{x-txass-attempts} header (absent means none).  The server counts an
attempt when the handler ran and failed, when the handler called
L{txass.RequestContext.resend}, and when the broker delivers the request
again because the last delivery was never finished (its server crashed or
lost its connection).  The broker does not count redeliveries of a classic
queue.  So a server that receives a redelivered request publishes a copy
with the count raised and then acknowledges the original, and the copy
carries the count from then on.

Delays go through the broker: a request waiting for its next attempt sits
in the quorum queue C{<service>.retry.<milliseconds>}, whose message TTL is
that delay and whose dead-letter route leads back to the service queue.
Nothing waits in the server's memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from txass.errors import MethodNotFound

# The header that counts the attempts made before this copy of a request.
ATTEMPTS_HEADER = "x-txass-attempts"

# Headers that a dead-lettered request carries, besides its own.
REASON_HEADER = "x-txass-reason"
ERROR_TYPE_HEADER = "x-txass-error-type"
ERROR_MESSAGE_HEADER = "x-txass-error-message"
ERROR_TRACEBACK_HEADER = "x-txass-error-traceback"
DEAD_LETTERED_AT_HEADER = "x-txass-dead-lettered-at"

# The milliseconds an RPC caller still waits for the reply, carried by a
# copy that waits in a retry queue, since the broker drops its expiration.
REMAINING_HEADER = "x-txass-remaining"

# The headers that describe earlier attempts, which a new copy replaces.
ATTEMPT_HEADERS = frozenset(
    {
        ATTEMPTS_HEADER,
        REMAINING_HEADER,
        REASON_HEADER,
        ERROR_TYPE_HEADER,
        ERROR_MESSAGE_HEADER,
        ERROR_TRACEBACK_HEADER,
        DEAD_LETTERED_AT_HEADER,
    }
)

# Why a request was dead-lettered: the handler failed on its last attempt,
# it called resend() on its last attempt, or no delivery finished.
FAILED = "failed"
RESENT = "resent"
UNFINISHED = "unfinished"

# The number of attempts a request gets in all, unless the service sets another.
DEFAULT_MAX_ATTEMPTS = 5
MAX_ATTEMPTS_LIMIT = 1000

# The content header of a message has to fit in one frame, of at most the
# connection's frame_max bytes (128 KiB by default on RabbitMQ, 4096 at
# least), so error texts in headers are cut, counted in UTF-8 bytes.
MAX_ERROR_MESSAGE = 4096
MAX_ERROR_TRACEBACK = 16384
MIN_FRAME_MAX = 4096

# A quorum queue's message TTL is at most 2**32 - 1 ms; stay well inside.
MAX_DELAY = 30 * 24 * 3600.0


def _check_seconds(value: object, option: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{option} must be a number of seconds, not {value!r}")
    if not 0 <= value <= MAX_DELAY:
        raise ValueError(f"{option} must be from 0 to {MAX_DELAY:g} seconds, not {value!r}")
    return float(value)


def delay_milliseconds(seconds: float) -> int:
    """
    Round a delay to the milliseconds of the retry queue that serves it.

    Delays are rounded to two significant digits (1.234 s waits 1.2 s), so
    that delays computed by a handler share a few queues rather than make
    one each.
    """
    milliseconds = _check_seconds(seconds, "delay") * 1000
    if milliseconds < 1:
        return 0
    digits = math.floor(math.log10(milliseconds))
    step = 10 ** max(digits - 1, 0)
    return min(int(round(milliseconds / step) * step), int(MAX_DELAY * 1000))


@dataclass(frozen=True, slots=True)
class Retry:
    """
    Serve a request again, after a delay, when its handler fails.

    Attempt C{n + 1} waits C{delay * backoff ** (n - 1)} seconds, at most
    C{max_delay}.  Once the service's maximum number of attempts is
    reached, the request goes to the service's dead-letter queue and the
    caller gets the last error.

    @ivar delay: Seconds before the second attempt.
    @ivar backoff: The factor by which each later delay grows.
    @ivar max_delay: The longest delay, in seconds.
    @ivar errors: The exception types that are retried; others are
        replied to at once.  L{txass.MethodNotFound} is never retried.
    """

    delay: float = 1.0
    backoff: float = 2.0
    max_delay: float = 300.0
    errors: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        _check_seconds(self.delay, "Retry delay")
        _check_seconds(self.max_delay, "Retry max_delay")
        if self.delay > self.max_delay:
            raise ValueError(f"Retry delay ({self.delay!r} s) must not be longer than max_delay ({self.max_delay!r} s)")
        backoff = self.backoff
        if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not 1 <= backoff <= 100:
            raise ValueError(f"Retry backoff must be a number from 1 to 100, not {backoff!r}")
        errors = self.errors
        if not isinstance(errors, tuple) or not all(isinstance(e, type) and issubclass(e, BaseException) for e in errors):
            raise TypeError(f"Retry errors must be a tuple of exception types, not {errors!r}")

    def delay_before(self, attempt: int) -> float:
        """
        Return the seconds to wait before attempt C{attempt} (2 or more).
        """
        exponent = max(attempt - 2, 0)
        # Stop growing once past max_delay, so a large exponent cannot
        # overflow.
        delay = self.delay
        for _ in range(exponent):
            delay *= self.backoff
            if delay >= self.max_delay:
                break
        return min(delay, self.max_delay)

    def retries(self, error: BaseException) -> bool:
        """
        Return whether a handler that raised C{error} is tried again.
        """
        return isinstance(error, self.errors) and not isinstance(error, MethodNotFound)


def check_max_attempts(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ATTEMPTS_LIMIT:
        raise ValueError(f"max_attempts must be an integer from 1 to {MAX_ATTEMPTS_LIMIT}, not {value!r}")
    return value


def previous_attempts(headers: dict[str, Any] | None) -> int:
    """
    Return the number of attempts made before this copy of a request, read
    from its header.  A missing or invalid header counts as none.
    """
    if not headers:
        return 0
    value = headers.get(ATTEMPTS_HEADER)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return min(value, MAX_ATTEMPTS_LIMIT)


def remaining_time(headers: dict[str, Any] | None, expiration: object) -> int | None:
    """
    Return the milliseconds the caller of a request still waits, from the
    remaining-time header of a copy or from the request's expiration, or
    L{None} when the caller waits for ever.
    """
    value = (headers or {}).get(REMAINING_HEADER)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(expiration, str) and expiration.isdigit():
        return int(expiration)
    return None


_CUT_MARK = " [...truncated]"


def shorten(text: str, limit: int) -> str:
    """
    Cut the end of C{text} so that it takes at most C{limit} bytes of
    UTF-8, marking the cut.
    """
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return text
    start = encoded[: max(limit - len(_CUT_MARK), 0)].decode("utf-8", "ignore")
    return start + _CUT_MARK if limit >= len(_CUT_MARK) else start


def shorten_start(text: str, limit: int) -> str:
    """
    Cut the start of C{text} so that it takes at most C{limit} bytes of
    UTF-8, marking the cut.
    """
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return text
    end = encoded[len(encoded) - max(limit - len(_CUT_MARK), 0) :].decode("utf-8", "ignore")
    return _CUT_MARK.strip() + " " + end if limit >= len(_CUT_MARK) else end


def encoded_size(headers: dict[str, Any] | None) -> int:
    """
    Return an upper estimate of the bytes C{headers} take in a message.
    """
    if not headers:
        return 0
    return len(repr(headers).encode("utf-8", "replace")) * 2
