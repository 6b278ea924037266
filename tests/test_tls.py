"""
Tests for TLS connections (amqps URLs): verification of the broker's
certificate, client certificates, the TLS options of broker URLs, and the
TLS options of C{twistd ass} and C{txass call}.

The broker tests share one private RabbitMQ node with a TLS listener.  The
node picks the certificate it presents by the server name the client sends
(Erlang's C{sni_hosts} TLS option), so one node serves a good certificate,
one for another host name, one from an unknown CA, an expired one, and one
under which it requires a client certificate.  The tests choose among them
with the URL option C{server_name}.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import io
import ipaddress
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import defer, protocol, reactor
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.trial import unittest
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

import txass
from tests.broker_node import BrokerNode, free_port, shared_node
from tests.support import EVENT_TIMEOUT, unique_name, wait_until, within
from txass import _cli
from txass._connection import InvalidURL, open_connection, parse_url
from txass._tap import Options
from txass.errors import ConnectionFailed, TLSFailed

PASSWORD = "s3cret-amqp-pw"
KEY_PASSWORD = b"s3cret-key-pw"

# The server names under which the test node presents each certificate.
MISMATCH_NAME = "mismatch.localhost"
UNTRUSTED_NAME = "untrusted.localhost"
EXPIRED_NAME = "expired.localhost"
CLIENT_CERT_NAME = "mtls.localhost"

# The host name in the certificate the node presents for MISMATCH_NAME.
OTHER_HOST = "other.example"

CLIENT_SUBJECT = "txass test client"

# A loopback port where nothing listens.  The tests of certificate files
# fail before connecting, so a refused connection means a missed check.
CLOSED_PORT = 1


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass(frozen=True)
class Authority:
    """
    A CA of the tests: its certificate and key.
    """

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def make_authority(common_name: str) -> Authority:
    """
    Create a self-signed CA valid from yesterday for 30 days.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(certificate, key)


def make_certificate(
    authority: Authority,
    common_name: str,
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = (),
    *,
    client: bool = False,
    expired: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """
    Create a server or client certificate signed by C{authority}, valid
    for 30 days from yesterday, or expired yesterday.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    if expired:
        not_before, not_after = now - datetime.timedelta(days=10), now - datetime.timedelta(days=1)
    else:
        not_before, not_after = now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)
    usage_oid = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage_oid]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()), critical=False)
    )
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(authority.key, hashes.SHA256()), key


def _pem_certificate(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    if password is not None:
        encryption = serialization.BestAvailableEncryption(password)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def _erlang_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class TLSFiles:
    """
    The certificate and key files of the tests, and the node configuration
    that uses them.

    @ivar ca: The CA file of the CA that signed the node's certificates
        (except the one for L{UNTRUSTED_NAME}) and the client certificate.
    @ivar untrusted_ca: The CA file of the CA that signed the certificate
        for L{UNTRUSTED_NAME} and L{untrusted_client_cert}.
    @ivar tls_port: The node's TLS port, on 127.0.0.1.
    @ivar advanced_config: The node's C{advanced.config}, holding its TLS
        settings.
    """

    directory: str
    ca: str
    untrusted_ca: str
    client_cert: str
    client_key: str
    untrusted_client_cert: str
    untrusted_client_key: str
    encrypted_client_key: str
    tls_port: int
    advanced_config: str

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)


_files: TLSFiles | None = None


def tls_files() -> TLSFiles:
    """
    Create the certificates, keys and node configuration on first use,
    in a folder removed when the process exits.
    """
    global _files
    if _files is not None:
        return _files
    directory = tempfile.mkdtemp(prefix="txass-tls-test-")
    atexit.register(shutil.rmtree, directory, True)

    def write(name: str, *parts: bytes) -> str:
        path = os.path.join(directory, name)
        with open(path, "wb") as pem:
            pem.write(b"".join(parts))
        return path

    trusted = make_authority("txass test CA")
    untrusted = make_authority("txass untrusted CA")
    certificates = {
        "good": make_certificate(trusted, "localhost", ("localhost",), ("127.0.0.1",)),
        "mismatch": make_certificate(trusted, OTHER_HOST, (OTHER_HOST,)),
        "untrusted": make_certificate(untrusted, UNTRUSTED_NAME, (UNTRUSTED_NAME,)),
        "expired": make_certificate(trusted, EXPIRED_NAME, (EXPIRED_NAME,), expired=True),
        "client-cert-required": make_certificate(trusted, CLIENT_CERT_NAME, (CLIENT_CERT_NAME,)),
    }
    server_files = {
        name: (write(f"{name}.crt", _pem_certificate(certificate)), write(f"{name}.key", _pem_key(key)))
        for name, (certificate, key) in certificates.items()
    }
    client, client_key = make_certificate(trusted, CLIENT_SUBJECT, client=True)
    stranger, stranger_key = make_certificate(untrusted, "txass untrusted client", client=True)
    ca = write("ca.crt", _pem_certificate(trusted.certificate))

    def certificate_options(name: str, *extra: str) -> str:
        certfile, keyfile = server_files[name]
        return ", ".join([f"{{certfile, {_erlang_string(certfile)}}}", f"{{keyfile, {_erlang_string(keyfile)}}}", *extra])

    sni_hosts = ", ".join(
        [
            f"{{{_erlang_string(MISMATCH_NAME)}, [{certificate_options('mismatch')}]}}",
            f"{{{_erlang_string(UNTRUSTED_NAME)}, [{certificate_options('untrusted')}]}}",
            f"{{{_erlang_string(EXPIRED_NAME)}, [{certificate_options('expired')}]}}",
            f"{{{_erlang_string(CLIENT_CERT_NAME)}, "
            f"[{certificate_options('client-cert-required', '{fail_if_no_peer_cert, true}')}]}}",
        ]
    )
    # rabbitmq.conf has no setting for sni_hosts, so the TLS settings are
    # given in advanced.config, in Erlang terms.  The node verifies a client
    # certificate when one is sent, and requires one under CLIENT_CERT_NAME.
    advanced = (
        f"[{{rabbit, [{{ssl_options, [{{cacertfile, {_erlang_string(ca)}}}, {certificate_options('good')}, "
        f"{{verify, verify_peer}}, {{fail_if_no_peer_cert, false}}, {{sni_hosts, [{sni_hosts}]}}]}}]}}].\n"
    )
    _files = TLSFiles(
        directory=directory,
        ca=ca,
        untrusted_ca=write("untrusted-ca.crt", _pem_certificate(untrusted.certificate)),
        client_cert=write("client.crt", _pem_certificate(client)),
        client_key=write("client.key", _pem_key(client_key)),
        untrusted_client_cert=write("untrusted-client.crt", _pem_certificate(stranger)),
        untrusted_client_key=write("untrusted-client.key", _pem_key(stranger_key)),
        encrypted_client_key=write("encrypted-client.key", _pem_key(client_key, KEY_PASSWORD)),
        tls_port=free_port(),
        advanced_config=write("advanced.config", advanced.encode()),
    )
    return _files


async def tls_node(testcase: unittest.TestCase) -> BrokerNode:
    """
    Return the TLS node shared by the tests of C{testcase}'s class.
    """
    files = tls_files()
    return await shared_node(
        testcase,
        [f"listeners.ssl.default = 127.0.0.1:{files.tls_port}"],
        {"RABBITMQ_ADVANCED_CONFIG_FILE": files.advanced_config},
    )


def tls_url(host: str = "localhost", port: int | None = None, **options: str) -> str:
    """
    Return an amqps URL of the TLS node with the given query options.
    """
    files = tls_files()
    query = "&".join(f"{name}={value}" for name, value in options.items())
    url = f"amqps://guest:guest@{host}:{port or files.tls_port}/%2F"
    return f"{url}?{query}" if query else url


@implementer(ILogObserver)
class LogRecorder:
    """
    Record the text of the log events of namespace C{txass.connection}.
    """

    def __init__(self, testcase: unittest.TestCase) -> None:
        self.warnings: list[str] = []
        globalLogPublisher.addObserver(self)
        testcase.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") == "txass.connection" and event.get("log_level") is not None:
            if event["log_level"].name == "warn":
                self.warnings.append(formatEvent(event))


class Greeter:
    def greet(self, name: str) -> str:
        return f"hello, {name}"


class TLSBrokerTests(unittest.TestCase):
    """
    Connections to the TLS listener of a private node.
    """

    async def connect_fails(self, url: str) -> TLSFailed:
        """
        Check that connecting to C{url} fails with L{TLSFailed}, and return
        the error.
        """
        await tls_node(self)
        with self.assertRaises(TLSFailed) as caught:
            await within(defer.Deferred.fromCoroutine(open_connection(parse_url(url), reactor)))
        self.assertIsInstance(caught.exception, ConnectionFailed)
        return caught.exception

    async def test_verified_round_trip(self) -> None:
        """
        When the broker's certificate is signed by the CA of cacertfile and
        is for the host, then the connection opens and an RPC call through
        a txass service returns its result.
        """
        broker, service = await self.serve_greeter()
        result = await broker.rpc(service).call("greet", "tls", timeout=EVENT_TIMEOUT)
        self.assertEqual(result, "hello, tls")
        self.assertEqual(broker.address.safe_url(), tls_url(cacertfile=tls_files().ca).replace(":guest@", ":***@"))

    async def test_send_buffer_watched(self) -> None:
        """
        When more is written over TLS than the send buffer holds, then RPC
        calls wait unsent until it drains, as over plain TCP, and every
        call gets its result.
        """
        broker, service = await self.serve_greeter()
        rpc = broker.rpc(service)
        self.assertEqual(await within(rpc.call("greet", "tls")), "hello, tls")
        names = [f"{n}{'x' * 100_000}" for n in range(40)]
        calls = [rpc.call("greet", name) for name in names]
        self.assertTrue(broker._connection.send_buffer_full)
        self.assertEqual(await within(defer.gatherResults(calls)), [f"hello, {name}" for name in names])

    async def serve_greeter(self) -> tuple[txass.Broker, str]:
        """
        Serve a new greeter service on the TLS node, over a verified TLS
        connection, and return the connection and the service's name.
        """
        await tls_node(self)
        broker = await txass.connect(tls_url(cacertfile=tls_files().ca))
        self.addCleanup(broker.close)
        service = unique_name("tls")
        self.addCleanup(self.remove_service, service)
        await broker.service(service).react(Greeter)
        return broker, service

    async def remove_service(self, service: str) -> None:
        connection = await open_connection(parse_url(tls_url(cacertfile=tls_files().ca)), reactor)
        try:
            channel = await connection.channel()
            await channel.delete_queue(service)
            await channel.delete_exchange(service)
        finally:
            await connection.close()

    async def test_ip_address_verified(self) -> None:
        """
        When the URL's host is an IP address, then the certificate must
        list that address, and server_name replaces it in the check.
        """
        await tls_node(self)
        ca = tls_files().ca
        for url in [tls_url("127.0.0.1", cacertfile=ca), tls_url("127.0.0.1", cacertfile=ca, server_name="localhost")]:
            connection = await open_connection(parse_url(url), reactor)
            await connection.close()
        error = await self.connect_fails(tls_url("127.0.0.1", cacertfile=ca, server_name="::1"))
        self.assertIn("hostname mismatch: certificate is for localhost, 127.0.0.1, not ::1", error.reason)

    async def test_wrong_hostname(self) -> None:
        """
        When the broker's certificate is for another host name, then the
        error names both.
        """
        error = await self.connect_fails(tls_url(cacertfile=tls_files().ca, server_name=MISMATCH_NAME))
        self.assertIn(f"hostname mismatch: certificate is for {OTHER_HOST}, not {MISMATCH_NAME}", error.reason)

    async def test_untrusted_ca(self) -> None:
        """
        When the broker's certificate is signed by a CA that cacertfile
        does not hold, then the error names the issuer and the CA file.
        """
        ca = tls_files().ca
        error = await self.connect_fails(tls_url(cacertfile=ca, server_name=UNTRUSTED_NAME))
        self.assertIn("certificate is not trusted (unknown CA)", error.reason)
        self.assertIn("txass untrusted CA", error.reason)
        self.assertIn(ca, error.reason)

    async def test_system_trust_store(self) -> None:
        """
        When no cacertfile is given, then the system trust store is used,
        which does not hold the tests' CA.
        """
        error = await self.connect_fails(tls_url())
        self.assertIn("certificate is not trusted (unknown CA)", error.reason)
        self.assertIn("system trust store", error.reason)

    async def test_expired_certificate(self) -> None:
        """
        When the broker's certificate has expired, then the error reports
        it.
        """
        error = await self.connect_fails(tls_url(cacertfile=tls_files().ca, server_name=EXPIRED_NAME))
        self.assertIn("certificate has expired", error.reason)
        self.assertIn(EXPIRED_NAME, error.reason)

    async def test_insecure_skip_verify(self) -> None:
        """
        When insecure_skip_verify is true, then an untrusted certificate is
        accepted, and a warning is logged at the first connection and at
        every reconnection.
        """
        node = await tls_node(self)
        recorder = LogRecorder(self)
        broker = await txass.connect(tls_url(insecure_skip_verify="true", server_name=UNTRUSTED_NAME))
        self.addCleanup(broker.close)
        self.assertTrue(broker.is_open)
        self.assertEqual(len(recorder.warnings), 1, recorder.warnings)
        self.assertIn("INSECURE", recorder.warnings[0])
        self.assertIn("insecure_skip_verify=true", recorder.warnings[0])

        await node.ctl("close_all_connections", "txass TLS test")
        await wait_until(lambda: broker.is_open and len(recorder.warnings) >= 2, EVENT_TIMEOUT)
        self.assertIn("INSECURE", recorder.warnings[1])

    async def test_client_certificate(self) -> None:
        """
        When the broker requires a client certificate and one signed by its
        CA is given, then the connection opens and the broker lists the
        certificate's subject.
        """
        node = await tls_node(self)
        files = tls_files()
        url = tls_url(cacertfile=files.ca, server_name=CLIENT_CERT_NAME, certfile=files.client_cert, keyfile=files.client_key)
        connection = await open_connection(parse_url(url), reactor)
        self.addCleanup(connection.close)
        subjects = await node.ctl("list_connections", "peer_cert_subject")
        self.assertIn(f"CN={CLIENT_SUBJECT}", subjects)

    async def test_client_certificate_required(self) -> None:
        """
        When the broker requires a client certificate and none is given,
        then the error reports that the broker requires one.
        """
        error = await self.connect_fails(tls_url(cacertfile=tls_files().ca, server_name=CLIENT_CERT_NAME))
        self.assertIn("client certificate", error.reason)
        self.assertIn("certfile and keyfile", error.reason)

    async def test_client_certificate_rejected(self) -> None:
        """
        When the client certificate is signed by a CA the broker does not
        trust, then the error reports that the broker rejected it.
        """
        files = tls_files()
        url = tls_url(cacertfile=files.ca, certfile=files.untrusted_client_cert, keyfile=files.untrusted_client_key)
        error = await self.connect_fails(url)
        self.assertIn(f"the broker rejected the client certificate {files.untrusted_client_cert}", error.reason)

    async def test_port_without_tls(self) -> None:
        """
        When an amqps URL names a port that speaks AMQP without TLS, then
        the error reports that the broker did not reply with TLS.
        """
        node = await tls_node(self)
        error = await self.connect_fails(tls_url(port=node.port, cacertfile=tls_files().ca))
        self.assertIn("the broker did not answer with TLS", error.reason)


class CertificateFileTests(unittest.TestCase):
    """
    Certificate and key files that cannot be used, which fail before any
    connection is attempted.
    """

    async def connect_fails(self, **options: str) -> str:
        """
        Check that connecting with the TLS URL C{options} fails with
        L{TLSFailed}, and return its message, which must not contain the
        password.
        """
        query = "&".join(f"{name}={value}" for name, value in options.items())
        url = f"amqps://guest:{PASSWORD}@127.0.0.1:{CLOSED_PORT}/%2F?{query}"
        with self.assertRaises(TLSFailed) as caught:
            await open_connection(parse_url(url), reactor)
        message = str(caught.exception)
        self.assertNotIn(PASSWORD, message)
        return message

    async def test_missing_ca_file(self) -> None:
        """
        When cacertfile names no file, then the error names it and the
        cause.
        """
        path = os.path.join(tls_files().directory, "no-such-ca.crt")
        message = await self.connect_fails(cacertfile=path)
        self.assertIn(f"cannot read the CA file {path} (broker URL option cacertfile): No such file or directory", message)

    async def test_ca_file_without_certificate(self) -> None:
        """
        When cacertfile contains no PEM certificate, then the error
        reports it.
        """
        path = self.mktemp()
        with open(path, "w") as text:
            text.write("not a certificate\n")
        message = await self.connect_fails(cacertfile=path)
        self.assertIn(f"the CA file {path} (broker URL option cacertfile) contains no certificate", message)

    async def test_missing_client_certificate(self) -> None:
        """
        When certfile names no file, then the error names it.
        """
        files = tls_files()
        path = os.path.join(files.directory, "no-such-client.crt")
        message = await self.connect_fails(certfile=path, keyfile=files.client_key)
        self.assertIn(f"cannot read the client certificate file {path} (broker URL option certfile)", message)

    async def test_key_file_is_folder(self) -> None:
        """
        When keyfile names a folder, then the error names it and the cause.
        """
        files = tls_files()
        message = await self.connect_fails(certfile=files.client_cert, keyfile=files.directory)
        self.assertIn(f"cannot read the client private key file {files.directory}", message)
        self.assertIn("not a regular file", message)

    async def test_key_does_not_match(self) -> None:
        """
        When the private key is not the client certificate's, then the
        error names both files.
        """
        files = tls_files()
        message = await self.connect_fails(certfile=files.client_cert, keyfile=files.untrusted_client_key)
        self.assertIn(
            f"the client certificate {files.client_cert} (broker URL option certfile) does not match the "
            f"private key {files.untrusted_client_key}",
            message,
        )

    async def test_encrypted_key(self) -> None:
        """
        When the private key is encrypted, then the error reports it and
        contains no password.
        """
        files = tls_files()
        message = await self.connect_fails(certfile=files.client_cert, keyfile=files.encrypted_client_key)
        self.assertIn(f"cannot use the client private key file {files.encrypted_client_key}", message)
        self.assertIn("it is encrypted", message)
        self.assertNotIn(KEY_PASSWORD.decode(), message)

    async def test_combined_certificate_and_key_file(self) -> None:
        """
        When certfile and keyfile name one file holding both, then it is
        read without error up to the connection attempt.
        """
        files = tls_files()
        path = self.mktemp()
        with open(path, "wb") as combined:
            for part in (files.client_cert, files.client_key):
                with open(part, "rb") as pem:
                    combined.write(pem.read())
        url = f"amqps://guest:{PASSWORD}@127.0.0.1:{CLOSED_PORT}/%2F?certfile={path}&keyfile={path}&cacertfile={files.ca}"
        with self.assertRaises(ConnectionFailed) as caught:
            await open_connection(parse_url(url), reactor)
        self.assertNotIsInstance(caught.exception, TLSFailed)
        self.assertIn("connection refused", str(caught.exception))


class SilentProtocol(protocol.Protocol):
    """
    A server connection that never sends a byte.
    """

    def connectionMade(self) -> None:
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class HandshakeTimeoutTests(unittest.TestCase):
    async def test_tls_handshake_timeout(self) -> None:
        """
        When the peer accepts the connection but never sends a byte, then
        the error reports that the TLS handshake timed out.
        """
        connections: list[SilentProtocol] = []

        def build() -> SilentProtocol:
            connection = SilentProtocol()
            connections.append(connection)
            return connection

        port = reactor.listenTCP(0, protocol.Factory.forProtocol(build), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        url = f"amqps://guest:guest@127.0.0.1:{port.getHost().port}/%2F?connection_timeout=0.5&cacertfile={tls_files().ca}"
        with self.assertRaises(TLSFailed) as caught:
            await within(defer.Deferred.fromCoroutine(open_connection(parse_url(url), reactor)))
        self.assertEqual(caught.exception.reason, "the TLS handshake did not complete within 0.5 s")
        # The client aborted the connection, so the server side ends too.
        self.assertEqual(len(connections), 1)
        await within(connections[0].lost)


class TLSURLTests(SynchronousTestCase):
    """
    The TLS options of broker URLs.
    """

    def test_options_parsed(self) -> None:
        """
        When every TLS option is given, then each is parsed, the paths
        percent-decoded.
        """
        address = parse_url(
            "amqps://u:p@h/%2F?cacertfile=%2Fetc%2Fmy%20ca.pem&certfile=/c.pem&keyfile=/k.pem&server_name=rabbit.internal"
        )
        self.assertEqual(address.cacertfile, "/etc/my ca.pem")
        self.assertEqual(address.certfile, "/c.pem")
        self.assertEqual(address.keyfile, "/k.pem")
        self.assertEqual(address.server_name, "rabbit.internal")
        self.assertFalse(address.insecure_skip_verify)

    def test_insecure_values(self) -> None:
        """
        When insecure_skip_verify is true or false in any case, then it is
        parsed; any other value raises InvalidURL.
        """
        self.assertTrue(parse_url("amqps://h?insecure_skip_verify=true").insecure_skip_verify)
        self.assertTrue(parse_url("amqps://h?insecure_skip_verify=TRUE").insecure_skip_verify)
        self.assertFalse(parse_url("amqps://h?insecure_skip_verify=false").insecure_skip_verify)
        for value in ["1", "yes", ""]:
            with self.subTest(value=value):
                with self.assertRaises(InvalidURL) as caught:
                    parse_url(f"amqps://h?insecure_skip_verify={value}")
                self.assertIn("expected true or false", str(caught.exception))

    def test_options_need_amqps(self) -> None:
        """
        When a TLS option is given on an amqp URL, then InvalidURL is
        raised that names the option and requests an amqps URL.
        """
        for option in ["cacertfile=/ca.pem", "server_name=h", "insecure_skip_verify=true", "certfile=/c&keyfile=/k"]:
            with self.subTest(option=option):
                with self.assertRaises(InvalidURL) as caught:
                    parse_url(f"amqp://h?{option}")
                self.assertIn("use an amqps:// URL", str(caught.exception))
                self.assertIn(repr(option.split("=")[0]), str(caught.exception))

    def test_certfile_needs_keyfile(self) -> None:
        """
        When only one of certfile and keyfile is given, then InvalidURL is
        raised that names both.
        """
        for option in ["certfile=/c.pem", "keyfile=/k.pem"]:
            with self.subTest(option=option):
                with self.assertRaises(InvalidURL) as caught:
                    parse_url(f"amqps://h?{option}")
                self.assertIn("'certfile' and 'keyfile' go together", str(caught.exception))

    def test_insecure_with_ca_file(self) -> None:
        """
        When insecure_skip_verify=true comes with cacertfile, which it
        would ignore, then InvalidURL is raised.
        """
        with self.assertRaises(InvalidURL) as caught:
            parse_url("amqps://h?cacertfile=/ca.pem&insecure_skip_verify=true")
        self.assertIn("contradict", str(caught.exception))

    def test_invalid_values(self) -> None:
        """
        When a file option is empty or server_name is not a host name or
        address, then InvalidURL is raised.
        """
        for query in ["cacertfile=", "server_name=", "server_name=two%20words", "server_name=-lead", "server_name=a..b"]:
            with self.subTest(query=query):
                self.assertRaises(InvalidURL, parse_url, f"amqps://h?{query}")

    def test_server_name_forms(self) -> None:
        """
        When server_name is a DNS name, an international name or an IP
        address, then it is accepted.
        """
        for name in ["rabbit.internal", "b\u00fccher.example", "127.0.0.1", "::1"]:
            with self.subTest(name=name):
                self.assertEqual(parse_url(f"amqps://h?server_name={name}").server_name, name)

    def test_safe_url_shows_tls_options(self) -> None:
        """
        When TLS options are set, then safe_url shows them, percent-encoded,
        without the password, and parses back to the same options.
        """
        url = f"amqps://u:{PASSWORD}@h:5671/v?cacertfile=/my%20ca%2B1.pem&server_name=rabbit&insecure_skip_verify=false"
        safe = parse_url(url).safe_url()
        self.assertEqual(safe, "amqps://u:***@h:5671/v?cacertfile=/my%20ca%2B1.pem&server_name=rabbit")
        again = parse_url(safe)
        self.assertEqual((again.cacertfile, again.server_name), ("/my ca+1.pem", "rabbit"))
        insecure = parse_url("amqps://u:p@h/?insecure_skip_verify=true&certfile=/c&keyfile=/k").safe_url()
        self.assertEqual(insecure, "amqps://u:***@h:5671/%2F?certfile=/c&keyfile=/k&insecure_skip_verify=true")


@contextlib.contextmanager
def environment_url(value: str | None) -> Iterator[None]:
    """
    Set or unset C{$TXASS_BROKER_URL} for the block.
    """
    old = os.environ.pop("TXASS_BROKER_URL", None)
    if value is not None:
        os.environ["TXASS_BROKER_URL"] = value
    try:
        yield
    finally:
        os.environ.pop("TXASS_BROKER_URL", None)
        if old is not None:
            os.environ["TXASS_BROKER_URL"] = old


TLS_ARGUMENTS = ["--tls-cacert", "/etc/ca dir/ca.pem", "--tls-cert", "/c.pem", "--tls-key", "/k.pem", "--tls-server-name", "rabbit"]


class StageTLSOptionTests(SynchronousTestCase):
    """
    The TLS options of C{twistd ass}.
    """

    def parse(self, *arguments: str) -> Options:
        options = Options()
        options.parseOptions(["--service", "echo", "--reactor", "examples.echo.Echo", *arguments])
        return options

    def test_options_set_url_options(self) -> None:
        """
        When the TLS options are given, then the broker URL gets the URL
        option of each.
        """
        options = self.parse("--broker", f"amqps://u:{PASSWORD}@h/%2F?heartbeat=5", *TLS_ARGUMENTS)
        address = parse_url(options["broker"])
        self.assertEqual(address.cacertfile, "/etc/ca dir/ca.pem")
        self.assertEqual((address.certfile, address.keyfile, address.server_name), ("/c.pem", "/k.pem", "rabbit"))
        self.assertEqual((address.heartbeat, address.password), (5, PASSWORD))

    def test_insecure_flag(self) -> None:
        """
        When --tls-insecure-skip-verify is given, then the URL option
        insecure_skip_verify is true.
        """
        options = self.parse("--broker", "amqps://h", "--tls-insecure-skip-verify")
        self.assertTrue(parse_url(options["broker"]).insecure_skip_verify)

    def test_environment_url(self) -> None:
        """
        When no --broker is given, then the TLS options go to the URL of
        $TXASS_BROKER_URL, and without it to the default, which is not
        amqps.
        """
        with environment_url("amqps://h:5999"):
            options = self.parse("--tls-cacert", "/ca.pem")
        self.assertEqual(parse_url(options["broker"]).cacertfile, "/ca.pem")
        with environment_url(None):
            with self.assertRaises(usage.UsageError) as caught:
                self.parse("--tls-cacert", "/ca.pem")
        self.assertIn("--tls-cacert: TLS options need an amqps:// broker URL", str(caught.exception))

    def test_options_need_amqps(self) -> None:
        """
        When a TLS option is given with an amqp URL, then parsing raises a
        UsageError naming it, without the password.
        """
        for flag in [["--tls-cacert", "/ca.pem"], ["--tls-server-name", "h"], ["--tls-insecure-skip-verify"]]:
            with self.subTest(flag=flag):
                with self.assertRaises(usage.UsageError) as caught:
                    self.parse("--broker", f"amqp://u:{PASSWORD}@h/", *flag)
                self.assertIn(f"{flag[0]}: TLS options need an amqps:// broker URL", str(caught.exception))
                self.assertNotIn(PASSWORD, str(caught.exception))

    def test_invalid_combinations(self) -> None:
        """
        When the TLS options do not go together, or repeat a URL option,
        then parsing raises a UsageError with the cause.
        """
        cases = [
            (["--broker", "amqps://h", "--tls-cert", "/c.pem"], "'certfile' and 'keyfile' go together"),
            (["--broker", "amqps://h", "--tls-cacert", "/ca.pem", "--tls-insecure-skip-verify"], "contradict"),
            (["--broker", "amqps://h?cacertfile=/a.pem", "--tls-cacert", "/b.pem"], "sets the option 'cacertfile' already"),
            (["--broker", "amqps://h", "--tls-server-name", "two words"], "option 'server_name'"),
        ]
        for arguments, message in cases:
            with self.subTest(arguments=arguments):
                with self.assertRaises(usage.UsageError) as caught:
                    self.parse(*arguments)
                self.assertIn(message, str(caught.exception))

    def test_help(self) -> None:
        """
        When the help is shown, then it lists every TLS option.
        """
        text = str(Options())
        for flag in ["--tls-cacert", "--tls-cert", "--tls-key", "--tls-server-name", "--tls-insecure-skip-verify"]:
            self.assertIn(flag, text)
        self.assertIn("INSECURE", text)


class CallTLSOptionTests(SynchronousTestCase):
    """
    The TLS options of C{txass call}.
    """

    def parse_fails(self, *arguments: str) -> str:
        """
        Check that parsing C{arguments} exits with status 2, and return the
        error text.
        """
        errors = io.StringIO()
        with contextlib.redirect_stderr(errors):
            with self.assertRaises(SystemExit) as caught:
                _cli.parse_arguments(list(arguments))
        self.assertEqual(caught.exception.code, 2)
        return errors.getvalue()

    def test_options_set_url_options(self) -> None:
        """
        When the TLS options are given, then the call's URL gets the URL
        option of each.
        """
        arguments = _cli.parse_arguments(["call", "--broker", "amqps://h", *TLS_ARGUMENTS, "echo", "greet"])
        address = parse_url(arguments.url)
        self.assertEqual(address.cacertfile, "/etc/ca dir/ca.pem")
        self.assertEqual((address.certfile, address.keyfile, address.server_name), ("/c.pem", "/k.pem", "rabbit"))
        insecure = _cli.parse_arguments(["call", "-b", "amqps://h", "--tls-insecure-skip-verify", "echo", "greet"])
        self.assertTrue(parse_url(insecure.url).insecure_skip_verify)

    def test_environment_url(self) -> None:
        """
        When no --broker is given, then the TLS options go to the URL of
        $TXASS_BROKER_URL.
        """
        with environment_url("amqps://h:5999"):
            arguments = _cli.parse_arguments(["call", "--tls-server-name", "rabbit", "echo", "greet"])
        self.assertEqual(parse_url(arguments.url).server_name, "rabbit")

    def test_options_need_amqps(self) -> None:
        """
        When a TLS option is given with an amqp URL, then the command exits
        with status 2 and an error naming the option, without the password.
        """
        for flag in [["--tls-cacert", "/ca.pem"], ["--tls-insecure-skip-verify"]]:
            with self.subTest(flag=flag):
                text = self.parse_fails("call", "--broker", f"amqp://u:{PASSWORD}@h/", *flag, "echo", "greet")
                self.assertIn(f"{flag[0]}: TLS options need an amqps:// broker URL", text)
                self.assertNotIn(PASSWORD, text)

    def test_invalid_combinations(self) -> None:
        """
        When the TLS options do not go together, then the command exits
        with status 2 and an error with the cause.
        """
        text = self.parse_fails("call", "-b", "amqps://h", "--tls-key", "/k.pem", "echo", "greet")
        self.assertIn("--tls-key: broker URL options 'certfile' and 'keyfile' go together", text)
        text = self.parse_fails("call", "-b", "amqps://h?server_name=a", "--tls-server-name", "b", "echo", "greet")
        self.assertIn("sets the option 'server_name' already", text)

    def test_help(self) -> None:
        """
        When the help of call is shown, then it lists every TLS option.
        """
        _parser, call = _cli.build_parser()
        text = call.format_help()
        for flag in ["--tls-cacert", "--tls-cert", "--tls-key", "--tls-server-name", "--tls-insecure-skip-verify"]:
            self.assertIn(flag, text)
        self.assertIn("INSECURE", text)
