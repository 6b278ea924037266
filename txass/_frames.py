"""
Decoding of the AMQP frames of a delivery, and encoding of those of a
publish, without pika.

A delivery is a C{basic.deliver} method frame, a content header frame and,
unless the body is empty, body frames.  pika decodes each frame through
generic frame, method and property objects and several layers of
callbacks.  In a profile of a txass server handling casts, that took as
long as the rest of serving them.  So the connection's protocol splits the
received bytes into frames itself, decodes the deliveries of txass's
consumers here, and hands every other frame to pika unchanged (see
C{_PikaProtocol} in L{txass._connection}).

The values decoded here are those pika would give: short strings that are
not UTF-8 stay bytes, and header tables are decoded by pika's own function.
Publishes on channels without confirms are encoded here too, to the same
bytes pika writes, since pika's encoder builds the same objects on the way
out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Final

from pika import data as pika_data
from pika.exceptions import AMQPError

# Frame types and the byte that ends each frame (AMQP 0-9-1, 4.2.3).
FRAME_METHOD: Final = 1
FRAME_HEADER: Final = 2
FRAME_BODY: Final = 3
FRAME_HEARTBEAT: Final = 8
FRAME_KINDS: Final = frozenset({FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT})
FRAME_END: Final = 0xCE

# Type, channel and payload size, before each frame's payload.
FRAME_PREFIX: Final = struct.Struct(">BHI")

# The class and method ids of basic.deliver (60, 60), which start the
# payload of its method frame.
DELIVER_IDS: Final = b"\x00\x3c\x00\x3c"
BASIC_CLASS: Final = 60

_DELIVERY_TAG: Final = struct.Struct(">QB")
_HEADER_START: Final = struct.Struct(">HHQH")
_OCTET: Final = struct.Struct("B")
_TIMESTAMP: Final = struct.Struct(">Q")

# The property flags of the basic class, in the order of their fields.
_CONTENT_TYPE: Final = 1 << 15
_CONTENT_ENCODING: Final = 1 << 14
_HEADERS: Final = 1 << 13
_DELIVERY_MODE: Final = 1 << 12
_PRIORITY: Final = 1 << 11
_CORRELATION_ID: Final = 1 << 10
_REPLY_TO: Final = 1 << 9
_EXPIRATION: Final = 1 << 8
_MESSAGE_ID: Final = 1 << 7
_TIMESTAMP_FLAG: Final = 1 << 6
_TYPE: Final = 1 << 5
_USER_ID: Final = 1 << 4
_APP_ID: Final = 1 << 3
_CLUSTER_ID: Final = 1 << 2
_MORE_FLAGS: Final = 1

# The marker that parse_delivery returns when the buffer ends before the
# delivery does.
INCOMPLETE: Final = object()


@dataclass(slots=True)
class RawDelivery:
    """
    A delivery decoded from its frames.

    @ivar properties: The message's basic properties, as keyword arguments
        for C{MessageProperties}.
    @ivar end: The offset in the buffer just past the delivery's last frame.
    @ivar frames: How many frames the delivery took.
    """

    consumer_tag: str | bytes
    delivery_tag: int
    redelivered: bool
    exchange: str | bytes
    routing_key: str | bytes
    properties: dict[str, Any]
    body: bytes
    end: int
    frames: int


def short_string(data: bytes, offset: int) -> tuple[str | bytes, int]:
    """
    Decode an AMQP short string at C{offset}, as pika does: text when it
    is UTF-8, and otherwise the bytes themselves.

    @return: The value and the offset after it.
    @raise IndexError: The data ends inside the string.
    """
    length = data[offset]
    start = offset + 1
    end = start + length
    if end > len(data):
        raise IndexError("short string runs past the end of its frame")
    raw = data[start:end]
    try:
        return raw.decode("utf-8"), end
    except UnicodeDecodeError:
        return raw, end


def decode_properties(payload: bytes) -> dict[str, Any] | None:
    """
    Decode the basic properties in the payload of a content header frame.

    @return: The properties that C{MessageProperties} keeps, or L{None} when
        the header is not one this decoder handles (another class, or
        more than one word of property flags); pika decodes those.
    @raise IndexError: The payload ends inside a property.
    @raise struct.error: The payload ends inside a number.
    """
    class_id, _weight, _body_size, flags = _HEADER_START.unpack_from(payload, 0)
    if class_id != BASIC_CLASS or flags & _MORE_FLAGS:
        return None
    offset = _HEADER_START.size
    found: dict[str, Any] = {}
    if flags & _CONTENT_TYPE:
        found["content_type"], offset = short_string(payload, offset)
    if flags & _CONTENT_ENCODING:
        found["content_encoding"], offset = short_string(payload, offset)
    if flags & _HEADERS:
        found["headers"], offset = pika_data.decode_table(payload, offset)
    if flags & _DELIVERY_MODE:
        found["delivery_mode"] = _OCTET.unpack_from(payload, offset)[0]
        offset += 1
    if flags & _PRIORITY:
        _OCTET.unpack_from(payload, offset)
        offset += 1
    if flags & _CORRELATION_ID:
        found["correlation_id"], offset = short_string(payload, offset)
    if flags & _REPLY_TO:
        found["reply_to"], offset = short_string(payload, offset)
    if flags & _EXPIRATION:
        found["expiration"], offset = short_string(payload, offset)
    if flags & _MESSAGE_ID:
        found["message_id"], offset = short_string(payload, offset)
    if flags & _TIMESTAMP_FLAG:
        found["timestamp"] = _TIMESTAMP.unpack_from(payload, offset)[0]
        offset += 8
    if flags & _TYPE:
        found["type"], offset = short_string(payload, offset)
    if flags & _USER_ID:
        _, offset = short_string(payload, offset)
    if flags & _APP_ID:
        found["app_id"], offset = short_string(payload, offset)
    if flags & _CLUSTER_ID:
        short_string(payload, offset)
    return found


def parse_delivery(buffer: bytearray, offset: int, channel: int, size: int) -> RawDelivery | object | None:
    """
    Decode the delivery whose C{basic.deliver} method frame, on C{channel}
    with a payload of C{size} bytes, starts at C{offset} in C{buffer}.

    @return: The delivery; L{INCOMPLETE} when C{buffer} ends before its
        last frame; or L{None} when its frames are not the plain sequence
        this decoder handles (a content header of another class, a frame of
        another kind or channel in between, malformed fields), which pika
        must then decode and report.
    """
    end = len(buffer)
    try:
        method = bytes(buffer[offset + 11 : offset + 7 + size])
        consumer_tag, position = short_string(method, 0)
        delivery_tag, bits = _DELIVERY_TAG.unpack_from(method, position)
        exchange, position = short_string(method, position + _DELIVERY_TAG.size)
        routing_key, position = short_string(method, position)
        if position != len(method):
            return None

        header_at = offset + 7 + size + 1
        if end - header_at < 7:
            return INCOMPLETE
        kind, header_channel, header_size = FRAME_PREFIX.unpack_from(buffer, header_at)
        if kind != FRAME_HEADER or header_channel != channel:
            return None
        header_end = header_at + 7 + header_size
        if header_end >= end:
            return INCOMPLETE
        if buffer[header_end] != FRAME_END:
            return None
        header = bytes(buffer[header_at + 7 : header_end])
        properties = decode_properties(header)
        if properties is None:
            return None
        body_size = _HEADER_START.unpack_from(header, 0)[2]
        if end - (header_end + 1) < body_size:
            # Checked first, so that a large body is not copied in part.
            return INCOMPLETE

        frames = 2
        position = header_end + 1
        parts: list[bytes] = []
        received = 0
        while received < body_size:
            if end - position < 7:
                return INCOMPLETE
            kind, body_channel, part_size = FRAME_PREFIX.unpack_from(buffer, position)
            if kind != FRAME_BODY or body_channel != channel or received + part_size > body_size:
                return None
            part_end = position + 7 + part_size
            if part_end >= end:
                return INCOMPLETE
            if buffer[part_end] != FRAME_END:
                return None
            parts.append(bytes(buffer[position + 7 : part_end]))
            received += part_size
            frames += 1
            position = part_end + 1
    except (IndexError, struct.error):
        return None
    body = parts[0] if len(parts) == 1 else b"".join(parts)
    return RawDelivery(
        consumer_tag=consumer_tag,
        delivery_tag=delivery_tag,
        redelivered=bool(bits & 1),
        exchange=exchange,
        routing_key=routing_key,
        properties=properties,
        body=body,
        end=position,
        frames=frames,
    )


# The start of a basic.publish method frame's payload: class 60, method
# 40, and a ticket of 0.
_PUBLISH_IDS: Final = b"\x00\x3c\x00\x28\x00\x00"
_HEADER_FIELDS: Final = struct.Struct(">HHQH")
_SHORT_STRING_MAX: Final = 255

# The properties encode_publish writes, with their flags, in the order of
# their fields.  Every other basic property is left out.
_STRING: Final = "s"
_ENCODED_FIELDS: Final = (
    ("content_type", _CONTENT_TYPE, _STRING),
    ("content_encoding", _CONTENT_ENCODING, _STRING),
    ("headers", _HEADERS, "table"),
    ("delivery_mode", _DELIVERY_MODE, "octet"),
    ("correlation_id", _CORRELATION_ID, _STRING),
    ("reply_to", _REPLY_TO, _STRING),
    ("expiration", _EXPIRATION, _STRING),
    ("message_id", _MESSAGE_ID, _STRING),
    ("timestamp", _TIMESTAMP_FLAG, "timestamp"),
    ("type", _TYPE, _STRING),
    ("app_id", _APP_ID, _STRING),
)


def _append_short_string(pieces: list[bytes], value: object) -> bool:
    """
    Append C{value} as an AMQP short string.

    @return: Whether it could be: text or bytes of at most 255 bytes.
    """
    if isinstance(value, str):
        try:
            encoded = value.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates: pika raises the error itself.
            return False
    elif isinstance(value, bytes):
        encoded = value
    else:
        return False
    if len(encoded) > _SHORT_STRING_MAX:
        return False
    pieces.append(bytes((len(encoded),)))
    pieces.append(encoded)
    return True


def encode_publish(
    channel: int,
    exchange: str,
    routing_key: str,
    mandatory: bool,
    properties: Any,
    body: bytes,
    body_max: int,
) -> tuple[bytes, int] | None:
    """
    Encode the frames of a C{basic.publish} as pika would: the method
    frame, the content header and the body in frames of at most
    C{body_max} bytes.

    @param properties: An object with the attributes of C{MessageProperties}.
    @return: The frames as one byte string and their number, or L{None}
        when a value is not one pika would encode as is (a short string
        over 255 bytes, a value of another type), so that pika encodes it
        and reports the error.
    """
    pieces = [_PUBLISH_IDS]
    if not (_append_short_string(pieces, exchange) and _append_short_string(pieces, routing_key)):
        return None
    pieces.append(b"\x01" if mandatory else b"\x00")
    method = b"".join(pieces)

    flags = 0
    pieces = []
    for name, flag, kind in _ENCODED_FIELDS:
        value = getattr(properties, name)
        if value is None:
            continue
        flags |= flag
        if kind == _STRING:
            if not _append_short_string(pieces, value):
                return None
        elif kind == "octet":
            if not isinstance(value, int) or not 0 <= value <= 255:
                return None
            pieces.append(bytes((value,)))
        elif kind == "timestamp":
            if not isinstance(value, int) or not 0 <= value < 1 << 64:
                return None
            pieces.append(_TIMESTAMP.pack(value))
        else:
            try:
                pika_data.encode_table(pieces, value)
            except (AMQPError, AttributeError, TypeError, ValueError, OverflowError, struct.error):
                return None
    header = _HEADER_FIELDS.pack(BASIC_CLASS, 0, len(body), flags) + b"".join(pieces)

    frames = [
        FRAME_PREFIX.pack(FRAME_METHOD, channel, len(method)),
        method,
        b"\xce",
        FRAME_PREFIX.pack(FRAME_HEADER, channel, len(header)),
        header,
        b"\xce",
    ]
    count = 2
    for start in range(0, len(body), body_max):
        part = body[start : start + body_max]
        frames += [FRAME_PREFIX.pack(FRAME_BODY, channel, len(part)), part, b"\xce"]
        count += 1
    return b"".join(frames), count
