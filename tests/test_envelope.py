"""
Tests for the JSON envelopes of requests and replies.
"""

from twisted.trial.unittest import SynchronousTestCase

from txass import _envelope
from txass.errors import EncodingError, InvalidRequest, RemoteError


class RequestEnvelopeTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """
        When a request is encoded and decoded, then method, data and meta
        come back equal.
        """
        body = _envelope.encode_request("foo", {"x": [1, 2.5, None]}, {"trace": "abc"})
        request = _envelope.decode_request(body, "application/json")
        self.assertEqual(request.method, "foo")
        self.assertEqual(request.data, {"x": [1, 2.5, None]})
        self.assertEqual(request.meta, {"trace": "abc"})

    def test_unicode_round_trip(self) -> None:
        """
        When data, meta and method hold non-ASCII text, then it is encoded
        as UTF-8 and decoded unchanged.
        """
        body = _envelope.encode_request("grüß", "日本語 ☃", {"clé": "valeur"})
        self.assertIn("日本語".encode(), body)
        request = _envelope.decode_request(body, None)
        self.assertEqual(request.method, "grüß")
        self.assertEqual(request.data, "日本語 ☃")
        self.assertEqual(request.meta, {"clé": "valeur"})

    def test_defaults(self) -> None:
        """
        When a request omits data and meta, then data is None and meta is
        an empty dict.
        """
        request = _envelope.decode_request(b'{"method": "ping"}', "application/json")
        self.assertIsNone(request.data)
        self.assertEqual(request.meta, {})

    def test_content_type_parameters(self) -> None:
        """
        When the content type carries parameters, then the media type alone
        decides.
        """
        request = _envelope.decode_request(b'{"method": "a"}', "application/JSON; charset=utf-8")
        self.assertEqual(request.method, "a")

    def test_invalid_bodies(self) -> None:
        """
        When a body is not a request envelope, then decoding raises
        InvalidRequest with a message naming the problem.
        """
        cases = [
            (b"", "application/json", "empty"),
            (b"not json", "application/json", "not valid JSON"),
            (b'{"method": "a"', "application/json", "not valid JSON"),
            (b"[1, 2]", "application/json", "expected an object"),
            (b'{"data": 1}', "application/json", "'method'"),
            (b'{"method": 3}', "application/json", "'method'"),
            (b'{"method": ""}', "application/json", "'method'"),
            (b"\xff\xfe", "application/json", "UTF-8"),
            (b'{"method": "a", "meta": [1]}', "application/json", "'meta'"),
            (b'{"method": "a"}', "application/x-pickle", "content type"),
            (b'{"method": "a"}', b"\xff", "content type"),
        ]
        for body, content_type, expected in cases:
            with self.subTest(body=body):
                error = self.assertRaises(InvalidRequest, _envelope.decode_request, body, content_type)
                self.assertIn(expected, str(error))

    def test_unencodable_data(self) -> None:
        """
        When data contains a set, an object or NaN, then encoding raises
        EncodingError.
        """
        for value in [{1, 2}, object(), float("nan"), float("inf")]:
            with self.subTest(value=value):
                self.assertRaises(EncodingError, _envelope.encode_request, "a", value)

    def test_lone_surrogates_escaped(self) -> None:
        """
        When text contains lone surrogates, which have no UTF-8 form, then they
        are sent as JSON escapes and decode to the same text.
        """
        text = b"caf\xe9".decode("utf-8", "surrogateescape")
        body = _envelope.encode_result("m", text, {})
        body.decode("utf-8")
        self.assertEqual(_envelope.decode_reply(body, None).result, text)

    def test_meta_must_be_dict(self) -> None:
        """
        When meta is not a dict, then encoding raises TypeError.
        """
        self.assertRaises(TypeError, _envelope.encode_request, "a", 1, ["x"])


class ReplyEnvelopeTests(SynchronousTestCase):
    def test_result_round_trip(self) -> None:
        """
        When a result reply is encoded and decoded, then the result and
        meta come back and no error is set.
        """
        reply = _envelope.decode_reply(_envelope.encode_result("foo", [1, "b"], {"k": 1}), None)
        self.assertEqual(reply.method, "foo")
        self.assertEqual(reply.result, [1, "b"])
        self.assertEqual(reply.meta, {"k": 1})
        self.assertIsNone(reply.error)

    def test_null_result(self) -> None:
        """
        When a handler returned None, then the reply contains a null result,
        not an error.
        """
        reply = _envelope.decode_reply(_envelope.encode_result("foo", None, {}), None)
        self.assertIsNone(reply.result)
        self.assertIsNone(reply.error)

    def test_error_round_trip(self) -> None:
        """
        When an error reply is decoded, then it carries a RemoteError with
        type, message, traceback and method.
        """
        body = _envelope.encode_error("foo", "ValueError", "bad ünïcode", {}, "Traceback...")
        reply = _envelope.decode_reply(body, "application/json")
        self.assertEqual(reply.error, RemoteError("ValueError", "bad ünïcode", "Traceback...", "foo"))

    def test_error_with_unencodable_meta(self) -> None:
        """
        When the meta of an error reply cannot be encoded, then the error is
        still sent, with empty meta.
        """
        body = _envelope.encode_error("foo", "E", "m", {"bad": {1}})
        reply = _envelope.decode_reply(body, None)
        self.assertEqual(reply.meta, {})
        self.assertEqual(reply.error, RemoteError("E", "m", None, "foo"))

    def test_error_message_null(self) -> None:
        """
        When an error reply's message is null, then the RemoteError's
        message is empty, not the text "None".
        """
        body = b'{"method": "a", "error": {"type": "E", "message": null}}'
        reply = _envelope.decode_reply(body, None)
        self.assertEqual(reply.error, RemoteError("E", "", None, "a"))

    def test_reply_without_result_or_error(self) -> None:
        """
        When a reply has neither result nor error, then decoding raises
        InvalidRequest.
        """
        self.assertRaises(InvalidRequest, _envelope.decode_reply, b'{"method": "a"}', None)
