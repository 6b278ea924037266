"""
Tests for the mapping of service names to AMQP names.
"""

from twisted.trial.unittest import SynchronousTestCase

from txass._topology import Topology, check_client_key, check_service_name
from txass.errors import InvalidName


class TopologyTests(SynchronousTestCase):
    def test_service_names(self) -> None:
        """
        When a service is named S, then its exchange, queue and routing key
        are all S.
        """
        topology = Topology.for_service("billing.invoices")
        self.assertEqual(topology.exchange, "billing.invoices")
        self.assertEqual(topology.queue, "billing.invoices")
        self.assertEqual(topology.routing_key, "billing.invoices")

    def test_client_queue(self) -> None:
        """
        When a client has key K, then its results go to S.client.K.
        """
        self.assertEqual(Topology.for_service("echo").client_queue("web-1"), "echo.client.web-1")

    def test_temporary_client_queues_differ(self) -> None:
        """
        When two clients have no key, then their result queues differ and
        start with S.client.tmp-.
        """
        topology = Topology.for_service("echo")
        first = topology.temporary_client_queue()
        second = topology.temporary_client_queue()
        self.assertNotEqual(first, second)
        self.assertTrue(first.startswith("echo.client.tmp-"))

    def test_invalid_service_names(self) -> None:
        """
        When a service name is empty, too long, reserved or contains other
        characters, then InvalidName is raised.
        """
        for name in ["", "a" * 201, "amq.echo", "has space", "-lead", "é", None, 3, "echo.client.web"]:
            with self.subTest(name=name):
                self.assertRaises(InvalidName, check_service_name, name)

    def test_longest_names_fit_amqp(self) -> None:
        """
        When service name and client key have their maximum lengths, then
        the result queue name fits AMQP's 255-byte limit.
        """
        name = Topology.for_service("s" * 200).client_queue("k" * 45)
        self.assertLessEqual(len(name.encode()), 255)

    def test_invalid_client_keys(self) -> None:
        """
        When a client key is reserved for temporary queues or invalid, then
        InvalidName is raised.
        """
        for key in ["tmp-abc", "", "k" * 46, "a/b"]:
            with self.subTest(key=key):
                self.assertRaises(InvalidName, check_client_key, key)
