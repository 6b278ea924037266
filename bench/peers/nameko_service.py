"""
A nameko service named C{--service} whose RPC method C{echo} returns its
data, run by nameko's C{ServiceRunner} until the process is terminated.

It uses the RPC exchange C{--exchange} rather than nameko's shared default
C{nameko-rpc}, and C{max_workers} 100, which is also its prefetch count.
It prints C{{"event": "ready"}} once the service consumes its queue.
"""

from __future__ import annotations

import eventlet

eventlet.monkey_patch()

import argparse  # noqa: E402  (eventlet must patch the standard library first)
import threading  # noqa: E402
from typing import Any  # noqa: E402

from nameko.rpc import rpc  # noqa: E402
from nameko.runners import ServiceRunner  # noqa: E402

from benchkit.rounds import DEFAULT_URL, emit_event  # noqa: E402

MAX_WORKERS = 100


def echo(self: Any, data: Any) -> Any:
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="AMQP URI of the broker")
    parser.add_argument("--service", required=True, help="nameko service name")
    parser.add_argument("--exchange", required=True, help="RPC exchange name")
    options = parser.parse_args()
    service = type("BenchService", (), {"name": options.service, "echo": rpc(echo)})
    config = {"AMQP_URI": options.url, "rpc_exchange": options.exchange, "max_workers": MAX_WORKERS}
    runner = ServiceRunner(config)
    runner.add_service(service)
    runner.start()
    emit_event("ready")
    threading.Event().wait()


if __name__ == "__main__":
    main()
