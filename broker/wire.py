"""Publishing a message whose header block is encoded once, by us.

nats-py encodes a header dict key by key on every publish: a regular expression for
each key, a ``strip`` and a ``translate`` for each value, four buffer extends. An event
carries 13 or 14 headers, so that was the largest single cost of the relay (about a
third of its time per event, measured). Our keys are constants and our values are ids,
numbers and timestamps, so :func:`encode_headers` writes the block with one join, and
:func:`publish_encoded` hands it to the connection as one ``HPUB``.

That hand-off uses nats-py's internal command queue (``_send_command`` and
``_flush_pending``, the two calls its own ``publish`` ends with). If a nats-py release
renames them, :data:`FAST_PATH` turns false and every publish goes through the public
``publish`` with the same headers: slower, never wrong. A test pins which path runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from nats import errors
from nats.aio.client import Client as NATS
from nats.protocol.command import hpub_cmd

_HEADER_LINE = "NATS/1.0\r\n"
# The key characters NATS (and HTTP) allow; anything else would corrupt the block.
_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Values must not end a line early: nats-py's rule, CR and LF become spaces.
_NO_NEWLINES = str.maketrans({"\r": " ", "\n": " "})
_checked_keys: set[str] = set()

#: Whether this nats-py still has the internal calls :func:`publish_encoded` uses.
FAST_PATH = all(hasattr(NATS, name) for name in ("_send_command", "_flush_pending"))


def _check_key(key: str) -> None:
    if key not in _checked_keys:
        if not _KEY.fullmatch(key):
            raise errors.BadHeaderError(key)
        _checked_keys.add(key)


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """The ``NATS/1.0`` header block of ``headers``, as nats-py would write it.

    Keys are checked once per distinct key. A CR or LF in a value becomes a space, as
    nats-py does it, so a stored value written by a foreign tool cannot inject a line.
    """
    lines = [_HEADER_LINE]
    for key, value in headers.items():
        _check_key(key)
        if "\r" in value or "\n" in value:
            value = value.translate(_NO_NEWLINES)
        lines.append(f"{key}: {value.strip()}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode()


async def publish_encoded(
    nc: NATS, subject: str, payload: bytes, headers: Mapping[str, str], *, reply: str = ""
) -> None:
    """``nc.publish(subject, payload, reply=reply, headers=headers)``, with the header block
    written by :func:`encode_headers`. The same checks come first: a closed, draining or
    reconnecting connection, or a payload over the server's limit, raise nats-py's errors.
    """
    if not FAST_PATH:
        await nc.publish(subject, payload, reply=reply, headers=dict(headers))
        return
    if nc.is_closed:
        raise errors.ConnectionClosedError
    if nc.is_draining_pubs:
        raise errors.ConnectionDrainingError
    if not nc.is_connected:
        # nats-py would buffer while reconnecting; a publisher of ours restarts instead.
        raise errors.ConnectionReconnectingError
    if len(payload) > nc.max_payload:
        raise errors.MaxPayloadError
    await nc._send_command(hpub_cmd(subject, reply, encode_headers(headers), payload))
    flush_queue = nc._flush_queue
    if flush_queue is not None and flush_queue.empty():
        await nc._flush_pending()
