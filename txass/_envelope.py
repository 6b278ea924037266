"""
The wire format of txass messages: JSON envelopes for requests and replies.

A request body is a JSON object C{{"method": str, "data": any, "meta":
object}}.  A reply body is C{{"method": str, "result": any, "meta": object}}
or, when the request failed, C{{"method": str, "error": {"type": str,
"message": str, "traceback": str | null}, "meta": object}}.  Bodies are UTF-8
JSON (RFC 8259) sent with the content type C{application/json}.
docs/protocol.rst describes the whole format for implementers.

A service may also accept MessagePack (C{application/msgpack}), which
carries bytes, when it names that codec; the envelope is the same map.  No
codec that can run code when it decodes, such as pickle, is offered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from txass.errors import EncodingError, InvalidRequest, RemoteError

CONTENT_TYPE = "application/json"
MSGPACK_CONTENT_TYPE = "application/msgpack"

# Requests carry the method in the AMQP "type" property, a short string.
MAX_METHOD_BYTES = 255

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_ascii_encoder = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))
_decoder = json.JSONDecoder()


class Codec:
    """
    A body format: how values become bytes of one content type and back.

    @ivar name: The name services and clients choose it by.
    @ivar content_type: The AMQP content type of the bodies it makes.
    @ivar media_types: The content types it decodes.
    """

    name: str
    content_type: str
    media_types: frozenset[str]

    def encode(self, value: Any) -> bytes:
        """
        Encode C{value}.

        @raise EncodingError: if the format cannot represent it.
        """
        raise NotImplementedError

    def decode(self, body: bytes, what: str) -> Any:
        """
        Decode a non-empty body.

        @raise InvalidRequest: if it is not valid in this format; the
            message begins with C{what}.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<codec {self.name}>"


class _JSONCodec(Codec):
    name = "json"
    content_type = CONTENT_TYPE
    media_types = frozenset({CONTENT_TYPE})

    def encode(self, value: Any) -> bytes:
        return encode_json(value)

    def decode(self, body: bytes, what: str) -> Any:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidRequest(f"{what} body is not valid UTF-8: {e}") from e
        try:
            return _decoder.decode(text)
        except (ValueError, RecursionError) as e:
            raise InvalidRequest(f"{what} body is not valid JSON: {e}") from e


class _MessagePackCodec(Codec):
    name = "msgpack"
    content_type = MSGPACK_CONTENT_TYPE
    media_types = frozenset({MSGPACK_CONTENT_TYPE, "application/x-msgpack", "application/vnd.msgpack"})

    def __init__(self) -> None:
        import msgpack

        self._msgpack = msgpack

    def encode(self, value: Any) -> bytes:
        try:
            body: bytes = self._msgpack.packb(value, use_bin_type=True)
        except (TypeError, ValueError, OverflowError, RecursionError) as e:
            raise EncodingError(f"value cannot be encoded as MessagePack: {e}") from e
        return body

    def decode(self, body: bytes, what: str) -> Any:
        try:
            # Timestamps (extension type -1, which never reaches ext_hook)
            # become integers of nanoseconds, so only plain data is built.
            return self._msgpack.unpackb(
                body, raw=False, strict_map_key=False, ext_hook=_reject_extension, timestamp=2
            )
        except Exception as e:
            raise InvalidRequest(f"{what} body is not valid MessagePack: {type(e).__name__}: {e}") from e


def _reject_extension(code: int, data: bytes) -> Any:
    raise ValueError(f"extension type {code} is not accepted")


JSON: Codec = _JSONCodec()

_CODECS: dict[str, Codec] = {"json": JSON}


def get_codec(name: object) -> Codec:
    """
    Return the codec called C{name}: C{"json"}, or C{"msgpack"} when the
    C{msgpack} package is installed.

    @raise ValueError: for another name, or C{"msgpack"} without the
        package.
    """
    if not isinstance(name, str) or name not in ("json", "msgpack"):
        raise ValueError(f"unknown codec {name!r}: expected 'json' or 'msgpack'")
    codec = _CODECS.get(name)
    if codec is None:
        try:
            codec = _CODECS[name] = _MessagePackCodec()
        except ImportError:
            raise ValueError(
                "the 'msgpack' codec needs the msgpack package: pip install 'txass[msgpack]'"
            ) from None
    return codec


def get_codecs(names: object) -> tuple[Codec, ...]:
    """
    Return the codecs named in C{names}, an iterable of codec names.

    @raise ValueError: if it is empty or names an unknown codec.
    """
    if isinstance(names, str) or not hasattr(names, "__iter__"):
        raise ValueError(f"codecs must be a list of codec names such as ['json', 'msgpack'], not {names!r}")
    codecs = tuple(dict.fromkeys(get_codec(name) for name in names))
    if not codecs:
        raise ValueError("codecs must name at least one codec")
    return codecs


@dataclass(frozen=True, slots=True)
class Request:
    """
    A decoded request envelope.

    @ivar codec: The codec it was encoded with, which its reply uses too.
    """

    method: str
    data: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
    codec: Codec = JSON


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


def encode_request(method: str, data: Any = None, meta: dict[str, Any] | None = None, codec: Codec = JSON) -> bytes:
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
    return codec.encode({"method": method, "data": data, "meta": meta})


def encode_result(method: str, result: Any, meta: dict[str, Any], codec: Codec = JSON) -> bytes:
    """
    Encode a reply carrying a result.

    @raise EncodingError: if C{result} cannot be encoded.
    """
    return codec.encode({"method": method, "result": result, "meta": meta})


def encode_error(
    method: str,
    error_type: str,
    message: str,
    meta: dict[str, Any],
    traceback: str | None = None,
    codec: Codec = JSON,
) -> bytes:
    """
    Encode a reply reporting that a request failed.

    If C{meta} cannot be encoded it is replaced by an empty object, so an
    error reply can always be sent.
    """
    error = {"type": error_type, "message": message, "traceback": traceback}
    try:
        return codec.encode({"method": method, "error": error, "meta": meta})
    except EncodingError:
        return codec.encode({"method": method, "error": error, "meta": {}})


def _media_type(content_type: object) -> str:
    if not content_type:
        return CONTENT_TYPE
    if not isinstance(content_type, str):
        # pika passes a property that is not valid UTF-8 on as bytes.
        return repr(content_type)
    return content_type.split(";", 1)[0].strip().lower()


def find_codec(content_type: str | None, accepted: tuple[Codec, ...], what: str) -> Codec:
    """
    Return the codec among C{accepted} for a message of C{content_type}; a
    missing content type means JSON.

    @raise InvalidRequest: if none of them decodes that content type.
    """
    media_type = _media_type(content_type)
    for codec in accepted:
        if media_type in codec.media_types:
            return codec
    names = " or ".join(repr(codec.content_type) for codec in accepted)
    raise InvalidRequest(f"{what} has content type {content_type!r}; only {names} is accepted")


def _decode_object(body: bytes, codec: Codec, what: str) -> dict[str, Any]:
    if not body:
        raise InvalidRequest(f"{what} body is empty; expected a {codec.name.upper()} object")
    value = codec.decode(body, what)
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what} body is {codec.name.upper()} {type(value).__name__}; expected an object")
    return value


def _decode_meta(envelope: dict[str, Any], what: str) -> dict[str, Any]:
    meta = envelope.get("meta")
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise InvalidRequest(f"{what} field 'meta' must be an object, not {type(meta).__name__}")
    return meta


def decode_request(body: bytes, content_type: str | None, accepted: tuple[Codec, ...] = (JSON,)) -> Request:
    """
    Decode a request envelope in one of the C{accepted} codecs.

    A missing content type is taken as JSON.

    @raise InvalidRequest: if the body is not a request envelope.  The
        message describes what is wrong with it.
    """
    codec = find_codec(content_type, accepted, "request")
    envelope = _decode_object(body, codec, "request")
    if "result" in envelope or "error" in envelope:
        # A reply published into a service queue, for example by a caller
        # that named the queue as its reply_to, must not run a method.
        raise InvalidRequest("request is a reply envelope (it has a 'result' or 'error' field), not a request")
    method = envelope.get("method")
    if not isinstance(method, str) or not method:
        found = repr(method) if len(repr(method)) <= 80 else f"a {type(method).__name__}"
        raise InvalidRequest(f"request field 'method' must be a non-empty string, found {found}")
    size = len(method.encode("utf-8", "surrogatepass"))
    if size > MAX_METHOD_BYTES:
        raise InvalidRequest(f"request method name is {size} bytes long; at most {MAX_METHOD_BYTES} bytes are accepted")
    return Request(method=method, data=envelope.get("data"), meta=_decode_meta(envelope, "request"), codec=codec)


def decode_reply(body: bytes, content_type: str | None, accepted: tuple[Codec, ...] = (JSON,)) -> Reply:
    """
    Decode a reply envelope in one of the C{accepted} codecs.

    @raise InvalidRequest: if the body is not a reply envelope.
    """
    codec = find_codec(content_type, accepted, "reply")
    envelope = _decode_object(body, codec, "reply")
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
