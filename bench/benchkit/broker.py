"""
Broker housekeeping for the driver: its version, and deleting the queues
and exchanges a run declared.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from typing import Any

import pika
import pika.exceptions

RABBITMQCTL_TIMEOUT_SECONDS = 60.0


def _rabbitmqctl() -> str | None:
    return shutil.which("rabbitmqctl") or shutil.which("rabbitmqctl", path="/usr/sbin:/usr/local/sbin")


class BrokerAdmin:
    """
    Short AMQP connections for housekeeping, plus C{rabbitmqctl} where it
    is installed and allowed to run.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.parameters = pika.URLParameters(url)

    def _connect(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(self.parameters)

    def server_properties(self) -> dict[str, Any]:
        """
        Return the broker's C{connection.start} properties, such as
        C{version} and C{product}, decoded to text.

        @raise pika.exceptions.AMQPError: The broker cannot be reached.
        """
        connection = self._connect()
        try:
            # pika's BlockingConnection does not expose the properties; its
            # underlying connection object keeps them.
            properties = getattr(getattr(connection, "_impl", None), "server_properties", None) or {}
        finally:
            connection.close()
        return {
            key: value.decode(errors="replace") if isinstance(value, bytes) else value
            for key, value in properties.items()
            if not isinstance(value, dict)
        }

    def delete(self, queues: Iterable[str], exchanges: Iterable[str]) -> list[str]:
        """
        Delete the named queues and exchanges; names that do not exist are
        skipped.  Returns an error message for each deletion that failed.
        """
        errors: list[str] = []
        try:
            connection = self._connect()
        except pika.exceptions.AMQPError as error:
            return [
                f"cannot connect to the broker to delete queues {sorted(set(queues))} "
                f"and exchanges {sorted(set(exchanges))}: {error!r}"
            ]
        try:
            for kind, names in (("queue", set(queues)), ("exchange", set(exchanges))):
                for name in sorted(names):
                    # A failed deletion closes its channel, so each gets its own.
                    channel = connection.channel()
                    try:
                        if kind == "queue":
                            channel.queue_delete(queue=name)
                        else:
                            channel.exchange_delete(exchange=name)
                        channel.close()
                    except pika.exceptions.AMQPError as error:
                        errors.append(f"cannot delete {kind} {name!r}: {error!r}")
        finally:
            if connection.is_open:
                connection.close()
        return errors

    def list_names(self, kind: str, marker: str) -> list[str] | None:
        """
        List the queues or exchanges (C{kind}) of the vhost whose names
        contain C{marker}, with C{rabbitmqctl}, or return L{None} when it
        cannot run.
        """
        command = _rabbitmqctl()
        if command is None:
            return None
        try:
            listed = subprocess.run(
                [command, "-s", "-p", self.parameters.virtual_host, f"list_{kind}s", "name"],
                capture_output=True,
                text=True,
                timeout=RABBITMQCTL_TIMEOUT_SECONDS,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        if listed.returncode != 0:
            return None
        return [name for name in listed.stdout.split() if marker in name]

    def sweep(self, marker: str) -> tuple[list[str], list[str]]:
        """
        Delete every queue and exchange whose name contains C{marker}.

        @return: The deleted names, and error messages, including one when
            C{rabbitmqctl} could not list the names.
        """
        queues = self.list_names("queue", marker)
        exchanges = self.list_names("exchange", marker)
        if queues is None or exchanges is None:
            return [], [f"rabbitmqctl could not list names containing {marker!r}; nothing swept"]
        errors = self.delete(queues, exchanges)
        return sorted(queues + exchanges), errors
