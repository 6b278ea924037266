"""
The wire format of txass messages: JSON envelopes for requests and replies.

A request body is a JSON object C{{"method": str, "data": any, "meta":
object}}.  A reply body is C{{"method": str, "result": any, "meta": object}}
or, when the request failed, C{{"method": str, "error": {"type": str,
"message": str, "traceback": str | null}, "meta": object}}.  Bodies are UTF-8
JSON (RFC 8259) sent with the content type C{application/json}.
docs/protocol.rst describes the whole format for implementers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from txass.errors import EncodingError, InvalidRequest, RemoteError

CONTENT_TYPE = "application/json"

# Requests carry the method in the AMQP "type" property, a short string.
MAX_METHOD_BYTES = 255

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_ascii_encoder = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))
_decoder = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class Request:
    """
    A decoded request envelope.
    """

    method: str
    data: Any = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reply:
    """
    A decoded reply envelope: either C{result} or C{error} is meaningful.
    """

    method: str
    result: Any = None
    error: RemoteError | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def encode_json(value: Any) -> bytes:
    """
    Encode C{value} as compact UTF-8 JSON.

    @raise EncodingError: if C{value} contains something JSON cannot
        represent.
    """
    try:
        text = _encoder.encode(value)
    except (TypeError, ValueError, RecursionError) as e:
        raise EncodingError(f"value cannot be encoded as JSON: {e}") from e
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (from os.fsdecode, or decoded from a \ud800
        # escape) have no UTF-8 form; JSON's \u escapes keep them.
        return _ascii_encoder.encode(value).encode("ascii")


def encode_request(method: str, data: Any = None, meta: dict[str, Any] | None = None) -> bytes:
    """
    Encode a request envelope.

    @raise EncodingError: if C{data} or C{meta} cannot be encoded.
    @raise TypeError: if C{method} is not a string or C{meta} not a dict.
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be a str, not {type(method).__name__}")
    try:
        size = len(method.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"method {method!r} is not valid Unicode text") from None
    if not 1 <= size <= MAX_METHOD_BYTES:
        raise ValueError(
            f"method must be 1 to {MAX_METHOD_BYTES} bytes of UTF-8, not {size}: "
            f"it is sent in the AMQP 'type' property, a short string"
        )
    if meta is None:
        meta = {}
    elif not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict, not {type(meta).__name__}")
    return encode_json({"method": method, "data": data, "meta": meta})


def encode_result(method: str, result: Any, meta: dict[str, Any]) -> bytes:
    """
    Encode a reply carrying a result.

    @raise EncodingError: if C{result} cannot be encoded.
    """
    return encode_json({"method": method, "result": result, "meta": meta})


def encode_error(
    method: str,
    error_type: str,
    message: str,
    meta: dict[str, Any],
    traceback: str | None = None,
) -> bytes:
    """
    Encode a reply reporting that a request failed.

    If C{meta} cannot be encoded it is replaced by an empty object, so an
    error reply can always be sent.
    """
    error = {"type": error_type, "message": message, "traceback": traceback}
    try:
        return encode_json({"method": method, "error": error, "meta": meta})
    except EncodingError:
        return encode_json({"method": method, "error": error, "meta": {}})


def _media_type(content_type: object) -> str:
    if not content_type:
        return CONTENT_TYPE
    if not isinstance(content_type, str):
        # pika passes a property that is not valid UTF-8 on as bytes.
        return repr(content_type)
    return content_type.split(";", 1)[0].strip().lower()


def _decode_object(body: bytes, content_type: str | None, what: str) -> dict[str, Any]:
    media_type = _media_type(content_type)
    if media_type != CONTENT_TYPE:
        raise InvalidRequest(
            f"{what} has content type {content_type!r}; only {CONTENT_TYPE!r} is accepted"
        )
    if not body:
        raise InvalidRequest(f"{what} body is empty; expected a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidRequest(f"{what} body is not valid UTF-8: {e}") from e
    try:
        value = _decoder.decode(text)
    except (ValueError, RecursionError) as e:
        raise InvalidRequest(f"{what} body is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what} body is JSON {type(value).__name__}; expected an object")
    return value


def _decode_meta(envelope: dict[str, Any], what: str) -> dict[str, Any]:
    meta = envelope.get("meta")
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise InvalidRequest(f"{what} field 'meta' must be an object, not {type(meta).__name__}")
    return meta


def decode_request(body: bytes, content_type: str | None) -> Request:
    """
    Decode a request envelope.

    A missing content type is taken as JSON.

    @raise InvalidRequest: if the body is not a request envelope.  The
        message describes what is wrong with it.
    """
    envelope = _decode_object(body, content_type, "request")
    method = envelope.get("method")
    if not isinstance(method, str) or not method:
        raise InvalidRequest(
            f"request field 'method' must be a non-empty string, found {method!r}"
        )
    return Request(method=method, data=envelope.get("data"), meta=_decode_meta(envelope, "request"))


def decode_reply(body: bytes, content_type: str | None) -> Reply:
    """
    Decode a reply envelope.

    @raise InvalidRequest: if the body is not a reply envelope.
    """
    envelope = _decode_object(body, content_type, "reply")
    method = envelope.get("method")
    if not isinstance(method, str) or not (method or "error" in envelope):
        # An error reply to a request that could not be decoded may have
        # an empty method.
        raise InvalidRequest(f"reply field 'method' must be a non-empty string, found {method!r}")
    meta = _decode_meta(envelope, "reply")
    if "error" in envelope:
        error = envelope["error"]
        if not isinstance(error, dict):
            raise InvalidRequest(f"reply field 'error' must be an object, found {error!r}")
        traceback = error.get("traceback")
        return Reply(
            method=method,
            error=RemoteError(
                type=str(error.get("type", "Error")),
                message="" if error.get("message") is None else str(error["message"]),
                traceback=traceback if isinstance(traceback, str) else None,
                method=method,
            ),
            meta=meta,
        )
    if "result" not in envelope:
        raise InvalidRequest("reply has neither a 'result' nor an 'error' field")
    return Reply(method=method, result=envelope["result"], meta=meta)
