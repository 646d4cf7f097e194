"""The subject registry: the only module that spells a NATS subject.

Subjects derive from message *types* (``order.place`` → ``commands.order.place``), so
span names and metric labels can use the type and never a subject carrying an id.
"""

from __future__ import annotations

from collections.abc import Container

COMMANDS_PREFIX = "commands."
EVENTS_PREFIX = "events."
QUERIES_PREFIX = "queries."
SAGAS_PREFIX = "sagas."
DLQ_PREFIX = "dlq."

ALL_COMMANDS = "commands.>"
ALL_EVENTS = "events.>"
ALL_QUERIES = "queries.>"
ALL_SAGAS = "sagas.>"
ALL_DLQ = "dlq.>"

#: Saga types: their stored events are lifecycle messages on ``sagas.<saga>.<transition>``.
SAGA_TYPES = frozenset({"order_fulfillment"})

EVENTS_STREAM = "EVENTS"
#: ``EVENTS`` holds every stored event: domain events and saga lifecycle messages.
EVENTS_STREAM_SUBJECTS = (ALL_EVENTS, ALL_SAGAS)
#: Consumers of everything in ``EVENTS`` filter on this.
ALL_STORED = ">"
DLQ_STREAM = "DLQ"

#: The partner services (:mod:`partners`): request/reply, one queue group per partner.
PARTNERS_PREFIX = "partners."
ALL_PARTNERS = "partners.>"
PAYMENT_CHARGE = "partners.payment.charge"
PAYMENT_REFUND = "partners.payment.refund"
SHIPPING_BOOK = "partners.shipping.book"
SHIPPING_CANCEL = "partners.shipping.cancel"
PAYMENT_GATEWAY = "payment-gateway"
SHIPPING_CARRIER = "shipping-carrier"

COMMAND_QUEUE = "ordermesh-command"
QUERY_QUEUE = "ordermesh-query"

#: Stream categories whose ids may themselves contain ``-``; longest first.
STREAM_CATEGORIES = (
    "saga-order_fulfillment",
    "inventory",
    "shipment",
    "payment",
    "product",
    "order",
)


def command_subject(command_type: str) -> str:
    return COMMANDS_PREFIX + command_type


def event_subject(event_type: str) -> str:
    """``order.placed`` → ``events.order.placed``; a saga's ``order_fulfillment.started``
    → ``sagas.order_fulfillment.started``."""
    if event_type.split(".", 1)[0] in SAGA_TYPES:
        return SAGAS_PREFIX + event_type
    return EVENTS_PREFIX + event_type


def query_subject(query_type: str) -> str:
    return QUERIES_PREFIX + query_type


def type_from_subject(subject: str) -> str:
    """``commands.order.place`` → ``order.place`` (also under ``dlq.``); anything
    unprefixed is returned as is."""
    subject = subject.removeprefix(DLQ_PREFIX)
    for prefix in (COMMANDS_PREFIX, EVENTS_PREFIX, QUERIES_PREFIX, SAGAS_PREFIX):
        if subject.startswith(prefix):
            return subject[len(prefix) :]
    return subject


def stream_id(stream: str) -> str:
    """The aggregate id in a stream name: ``order-o-1`` → ``o-1``."""
    for category in STREAM_CATEGORIES:
        if stream.startswith(category + "-"):
            return stream[len(category) + 1 :]
    return stream.split("-", 1)[-1]


#: NATS service discovery (the "micro" protocol): ``nats micro ping`` asks here.
SERVICE_PING = "$SRV.PING"


def ping_subjects(service: str, instance: str) -> tuple[str, str, str]:
    """Where a service instance answers pings: all services, this service, this instance."""
    return (SERVICE_PING, f"{SERVICE_PING}.{service}", f"{SERVICE_PING}.{service}.{instance}")


#: Every process says it is alive here (``broker.heartbeat``); the monitor listens to all.
HEARTBEAT_PREFIX = "ordermesh.heartbeat."
ALL_HEARTBEATS = HEARTBEAT_PREFIX + ">"


def heartbeat_subject(service: str) -> str:
    """``ordermesh.heartbeat.<service>``: one subject per service name, not per instance
    (the instance id travels in the body)."""
    return HEARTBEAT_PREFIX + service


#: An appender (the command or saga service) says here that it appended to the embedded
#: store, so a relay in another process reads at once instead of at its next poll.
STORE_APPENDED = "ordermesh.store.appended"


#: Where no reply may go: a request's reply subject is the requester's choice, and a
#: service answering on ``events.order.placed`` would publish into ``EVENTS`` for it
#: (``allow_responses`` lets a reply through whatever the service's own permissions say).
_NO_REPLY_PREFIXES = (
    COMMANDS_PREFIX,
    EVENTS_PREFIX,
    QUERIES_PREFIX,
    SAGAS_PREFIX,
    DLQ_PREFIX,
    PARTNERS_PREFIX,
    "ordermesh.",
    "$JS.",
    "$KV.",
    "$SRV.",
    "$SYS.",
)


def reply_allowed(subject: str) -> bool:
    """Whether a service may answer on ``subject``: anything but the system's own
    subjects (an inbox, whatever its prefix, is fine)."""
    return not subject.startswith(_NO_REPLY_PREFIXES)


def dlq_subject(subject: str) -> str:
    return DLQ_PREFIX + subject


#: Where each consumer of ``EVENTS`` takes requests to apply again what it set aside in
#: ``DLQ`` (``ordermesh dlq retry``). Not under ``dlq.``: that prefix is the stream's.
DLQ_RETRY_PREFIX = "ordermesh.dlq.retry."


def dlq_retry_subject(consumer: str) -> str:
    """``ordermesh.dlq.retry.<consumer>``: one subject per consumer name (``saga_inbox``,
    ``products+orders+sagas``), so a retry reaches the consumer that failed and no other."""
    if not consumer or any(c in consumer for c in ".*> \t\r\n"):
        raise ValueError(f"consumer name {consumer!r} cannot be one subject token")
    return DLQ_RETRY_PREFIX + consumer


def subject_label(subject: str, known_types: Container[str] = ()) -> str:
    """A bounded metric label for any subject: ours as they are, anyone else's as their
    first token and ``other`` (a foreign publisher must not mint label values)."""
    if type_from_subject(subject) in known_types:
        return subject
    return subject.split(".", 1)[0] + ".other"
