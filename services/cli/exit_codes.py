"""The exit codes every ``crmsync`` command returns, and which failure earns which.

Scripts branch on these, so each failure has one code whatever the command:

0. done;
1. what was asked for is not there, was refused, or failed (a full sync that ended
   FAILED or CANCELLED);
2. bad usage or an invalid config (argparse exits 2 on its own);
3. a service the command needs did not answer: ingest's admin API, the console, or
   Kafka. Trying again later may succeed, which is what sets it apart from 1.
"""

from __future__ import annotations

import sys
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException

DONE: Final = 0
FAILED: Final = 1
USAGE: Final = 2
UNREACHABLE: Final = 3

NOT_ANSWERED: Final = 0
"""The status the CLI's HTTP calls return when no answer came at all."""

# A proxy or the service itself saying it cannot serve now (ingest answers 503 while
# starting up or while Kafka is down): the service is there but not usable.
UNAVAILABLE_STATUSES: Final = frozenset({NOT_ANSWERED, 502, 503, 504})

# librdkafka's own codes for a cluster it could not reach or that did not answer in
# time; any other Kafka error is an answer (say, an authorisation refused).
UNREACHABLE_KAFKA_ERRORS: Final = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._MSG_TIMED_OUT,
        KafkaError._RESOLVE,
        KafkaError._DESTROY_BROKER,
    }
)


def refused(service: str, status: int, body: dict[str, Any]) -> int:
    """Say on stderr what ``service`` answered (or that it did not) and return the
    exit code for it: 3 when it was not reachable, else 1."""
    sys.stderr.write(f"{service} answered {status}: {body.get('error', body)}\n")
    return UNREACHABLE if status in UNAVAILABLE_STATUSES else FAILED


def kafka_unreachable(failure: KafkaException) -> bool:
    error = failure.args[0] if failure.args else None
    return isinstance(error, KafkaError) and error.code() in UNREACHABLE_KAFKA_ERRORS
