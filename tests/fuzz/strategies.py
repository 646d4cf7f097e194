"""Hypothesis strategies for what a hostile or broken client may send: bodies and headers.

Valid bodies are built from each message model's own JSON schema (the one the AsyncAPI
contract publishes), so a command or query registered tomorrow is fuzzed without anyone
writing an example for it; a schema construct this module does not know fails loudly
(``test_strategies``) instead of being skipped. Hostile bodies start from a valid one
with one field changed, or from nothing (random bytes, any JSON, deep nesting, numbers
no parser should take, oversized payloads). Header values stay within what nats-py can
send (it strips values and turns CR/LF into spaces); ``raw_header_blocks`` goes further,
for a client that writes the protocol itself.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from hypothesis import strategies as st
from pydantic import BaseModel

from broker.asyncapi import CE_HEADERS
from broker.cloudevents import H_ID, H_TIME, H_TRACEPARENT, H_TRACESTATE, H_TYPE
from handlers import COMMAND_MODELS
from partners.rules import SLOW_CARD
from projections.queries import QUERY_HANDLERS

#: Ids that generated bodies prefer, so commands meet aggregates made earlier in the run
#: (a product restocked, an order cancelled) instead of always answering "not found".
KNOWN_IDS = ("p-1", "p-2", "o-1", "o-2", "c-1", "s-1")
#: Command ids used more than once, across subjects: resends and ids reused for another body.
REUSED_IDS = ("fuzz-1", "fuzz-2", "00000000-0000-4000-8000-000000000000")
#: Stands for a raw JSON fragment until the body is encoded; then replaced by its bytes.
_RAW = "__fuzz_raw_fragment__"
_RAW_JSON = json.dumps(_RAW).encode()


def dumps(value: Any) -> bytes:
    """JSON as a client would write it (NaN and Infinity included: Python's default)."""
    return json.dumps(value).encode()


# --- valid bodies, from the schema -------------------------------------------------


def from_schema(
    schema: Mapping[str, Any], defs: Mapping[str, Any], name: str = ""
) -> st.SearchStrategy[Any]:
    """JSON values matching ``schema`` (the subset pydantic writes for our models).

    ``name`` is the property the value is for: ids mix in :data:`KNOWN_IDS`.
    """
    if "$ref" in schema:
        return from_schema(defs[schema["$ref"].rsplit("/", 1)[-1]], defs, name)
    if "anyOf" in schema:
        return st.one_of([from_schema(s, defs, name) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        low = schema.get("minimum")
        if "exclusiveMinimum" in schema:
            low = schema["exclusiveMinimum"] + 1
        high = schema.get("maximum")
        if "exclusiveMaximum" in schema:
            high = schema["exclusiveMaximum"] - 1
        return st.integers(low, high)
    if kind == "string":
        return _string(schema, name)
    if kind == "array":
        low = schema.get("minItems", 0)
        high = min(schema.get("maxItems", low + 4), low + 4)
        return st.lists(from_schema(schema["items"], defs, name), min_size=low, max_size=high)
    if kind == "object":
        properties = schema.get("properties", {})
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {k: from_schema(v, defs, k) for k, v in properties.items() if k in required},
            optional={
                k: from_schema(v, defs, k) for k, v in properties.items() if k not in required
            },
        )
    raise NotImplementedError(f"no strategy for the schema {dict(schema)!r}")


def _string(schema: Mapping[str, Any], name: str) -> st.SearchStrategy[str]:
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    if "pattern" in schema:
        text = st.from_regex(schema["pattern"], fullmatch=True)
        if name.endswith("_id"):
            text = st.sampled_from(KNOWN_IDS) | text
        return text.filter(lambda s: low <= len(s) <= (high or len(s)))
    # Models strip surrounding whitespace before checking lengths: none is generated.
    letters = st.characters(exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp"))
    return st.text(letters, min_size=low, max_size=min(high or 40, 40))


@functools.cache
def valid_bodies(model: type[BaseModel]) -> st.SearchStrategy[dict[str, Any]]:
    """Bodies the schema allows; nearly all of them the model accepts too (the schema
    cannot say everything: money is at most 1e9), ``test_strategies`` measures how many.
    Not filtered through the model here: validating runs default factories, which draw
    from ``random`` (``domain.ids``), and a draw must not touch the global ``random``.
    ``slow-card`` is left out: the payment simulator never answers it, by design."""
    schema = model.model_json_schema(mode="validation")
    return from_schema(schema, schema.get("$defs", {})).filter(
        lambda body: SLOW_CARD not in json.dumps(body)
    )


# --- hostile JSON values and raw fragments -----------------------------------------

# fmt: off
_ODD_TEXT = (
    "", " ", "\x00", "\u202e", "\ufeff", "NaN", "Infinity", "-0", "1e400", "null", "true",
    "0x10", "1_000", "١٢٣", "12.345", "-1.00", " 12.50 ", "../../etc/passwd", "o 1/../x",
    "' OR 1=1 --", "%s%s%n", "\ud800", "a" * 129, "a" * 10_000,
)
_ODD_TOKENS = (
    b"1e400", b"-1e400", b"1e-400", b"-0", b"-0.0", b"NaN", b"-NaN", b"Infinity", b"-Infinity",
    b"1E+999999999", b"0x10", b"1_000", b"01", b"+1", b".5", b"1.", b"tru", b"nul",
    b'"\\ud800"', b'"\\udc00\\ud800"', b'"\\u0000"', b'"\xff\xfe"', b'"\xc0\xaf"',
    b'"\xed\xa0\x80"', b'"\xf4\x90\x80\x80"', b"", b"]", b"}", b",", b'"', b"'single'",
    b"/* comment */ 1", b"1 2", b'"a" "b"',
)
# fmt: on
_ODD_STRINGS = st.sampled_from(_ODD_TEXT)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=50),
    _ODD_STRINGS,
)
#: Any JSON value, mostly of the wrong type for whatever field it lands in.
json_values: st.SearchStrategy[Any] = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)


def _no_crlf(data: bytes) -> bytes:
    return data.replace(b"\r", b"").replace(b"\n", b"")


_depths = st.one_of(st.integers(1, 300), st.integers(300, 20_000), st.just(10_000))
#: Text that stands where one JSON value should: numbers past every limit, tokens JSON
#: does not have, deep nesting, invalid UTF-8 inside a string, long strings.
raw_fragments: st.SearchStrategy[bytes] = st.one_of(
    st.integers(1, 12_000).map(lambda n: b"9" * n),
    st.integers(1, 12_000).map(lambda n: b"-1" + b"0" * n),
    st.sampled_from(_ODD_TOKENS),
    _depths.map(lambda d: b"[" * d + b"]" * d),
    _depths.map(lambda d: b'{"a":' * d + b"1" + b"}" * d),
    _depths.map(lambda d: b"[" * d),
    st.integers(0, 100_000).map(lambda n: b'"' + b"a" * n + b'"'),
    st.binary(max_size=64).map(_no_crlf),
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path to a value inside ``value`` (not the root itself)."""
    children: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        children = list(value.items())
    elif isinstance(value, list):
        children = list(enumerate(value))
    paths = []
    for key, child in children:
        paths.append((*prefix, key))
        paths.extend(_paths(child, (*prefix, key)))
    return paths


def _parent(body: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        body = body[key]
    return body


@st.composite
def near_valid_bodies(draw: st.DrawFn, model: type[BaseModel]) -> bytes:
    """A valid body with one thing changed: a field given a wrong value or a raw
    fragment, a field removed, or a field added."""
    body = json.loads(dumps(draw(valid_bodies(model))))  # a copy to change
    paths = _paths(body)
    change = draw(st.sampled_from(("value", "raw", "remove", "add") if paths else ("add",)))
    if change == "add":
        target = _parent(body, draw(st.sampled_from(paths))) if paths else body
        if not isinstance(target, dict):
            target = body
        target[draw(st.text(max_size=20) | st.sampled_from(["stock", "TYPE", "__class__"]))] = draw(
            json_values
        )
        return dumps(body)
    path = draw(st.sampled_from(paths))
    parent = _parent(body, path)
    if change == "remove":
        del parent[path[-1]]
        return dumps(body)
    if change == "value":
        parent[path[-1]] = draw(json_values)
        return dumps(body)
    parent[path[-1]] = _RAW
    return dumps(body).replace(_RAW_JSON, draw(raw_fragments), 1)


@st.composite
def odd_encodings(draw: st.DrawFn, model: type[BaseModel]) -> bytes:
    """A valid body damaged as bytes: a BOM, trailing data, an invalid UTF-8 sequence,
    a cut, another encoding, a duplicate key, padding."""
    body = dumps(draw(valid_bodies(model)))
    at = draw(st.integers(0, len(body)))
    damage = draw(
        st.sampled_from(
            ("bom", "trailing", "invalid_utf8", "cut", "utf16", "duplicate", "pad", "comment")
        )
    )
    if damage == "bom":
        return b"\xef\xbb\xbf" + body
    if damage == "trailing":
        return body + draw(st.binary(min_size=1, max_size=32))
    if damage == "invalid_utf8":
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80"]))
        return body[:at] + bad + body[at:]
    if damage == "cut":
        return body[:at]
    if damage == "utf16":
        return body.decode().encode(draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32"])))
    if damage == "duplicate" and body.startswith(b"{") and len(body) > 2:
        key = draw(st.sampled_from(sorted(json.loads(body)) or ["x"]))
        return b"{" + dumps(key) + b": " + dumps(draw(json_values)) + b", " + body[1:]
    if damage == "comment":
        return body[:at] + b"/*x*/" + body[at:]
    whitespace = draw(st.text(" \t\r\n", max_size=8)).encode()
    return whitespace + body + whitespace


@st.composite
def oversized_bodies(draw: st.DrawFn, model: type[BaseModel], limit: int, room: int) -> bytes:
    """Bodies around and past the service's limit: right at it (still valid), just over
    it, and far over it, up to ``room`` (what the NATS server still carries)."""
    size = draw(
        st.one_of(
            st.integers(limit - 2, limit + 2),
            st.integers(limit + 1, limit + 4096),
            st.integers(2 * limit, room),
        )
    )
    body = dumps(draw(valid_bodies(model)))
    if draw(st.booleans()):  # still valid JSON, only too big
        return body + b" " * max(0, size - len(body))
    head = b"{" if body == b"{}" else body[:-1] + b", "
    padding = max(0, size - len(head) - len(b'"pad": ""}'))
    return head + b'"pad": "' + b"x" * padding + b'"}'


@functools.cache
def hostile_bodies(model: type[BaseModel], limit: int, room: int) -> st.SearchStrategy[bytes]:
    """Every kind of body, valid ones among them, for a subject whose model is ``model``."""
    return st.one_of(
        st.binary(max_size=256),
        json_values.map(dumps),
        raw_fragments,
        near_valid_bodies(model),
        near_valid_bodies(model),
        odd_encodings(model),
        valid_bodies(model).map(dumps),
        oversized_bodies(model, limit, room),
        st.sampled_from([b"", b" ", b"\t\r\n", b"{}", b"[]", b"null", b"0", b'""', b"\x00"]),
    )


# --- headers ------------------------------------------------------------------------

#: Header names as nats-py accepts them (an RFC 7230 token).
header_names = st.from_regex(
    r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,40}", fullmatch=True
) | st.sampled_from(
    ["CE-ID", "Ce-Id", "TRACEPARENT", "Nats-Msg-Id", "Status", "Description", "content-type"]
)
#: Any text nats-py can encode (no lone surrogates), short, or long.
header_text = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=64),
    st.integers(0, 16_384).map(lambda n: "x" * n),
    st.sampled_from(["", " ", "\t", "\x00", "\x7f", "\u2028", "\ufffd", "a\r\nce-id: b"]),
)
_hex = "0123456789abcdef"


def _hex_text(size: int) -> st.SearchStrategy[str]:
    return st.text(_hex, min_size=size, max_size=size)


_trace_part = st.one_of(
    _hex_text(2),
    _hex_text(16),
    _hex_text(32),
    st.sampled_from(
        [
            "",
            "00",
            "ff",
            "0" * 16,
            "0" * 32,
            "F" * 32,
            "0x" + "1" * 30,
            "+" + "1" * 31,
            "1_" + "1" * 30,
            " " + "1" * 31,
            "g" * 32,
            "-",
            "0" * 200,
        ]
    ),
    st.text(max_size=40),
)
traceparents = st.one_of(
    st.builds(lambda t, s, f: f"00-{t}-{s}-{f}", _hex_text(32), _hex_text(16), _hex_text(2)),
    st.lists(_trace_part, min_size=1, max_size=6).map("-".join),
    header_text,
)
tracestates = st.one_of(
    st.lists(
        st.builds(lambda k, v: f"{k}={v}", st.text(max_size=20), st.text(max_size=20)), max_size=40
    ).map(",".join),
    st.integers(0, 2000).map(lambda n: ",".join(f"k{i}=v{i}" for i in range(n))),
    header_text,
)
ce_ids = st.one_of(
    st.uuids().map(str),
    st.sampled_from(REUSED_IDS),
    st.sampled_from(["", " ", "not-a-uuid", str(uuid.UUID(int=0)), "\x00"]),
    header_text,
)
ce_times = st.one_of(
    st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
    st.sampled_from(
        ["", "now", "9999-99-99T99:99:99Z", "1970-01-01", "-1", "2024-02-30T00:00:00Z"]
    ),
    header_text,
)
ce_types = st.one_of(
    st.sampled_from(sorted({*COMMAND_MODELS, *QUERY_HANDLERS})),
    st.sampled_from(["", "order.placed", "commands.order.place", "*", ">"]),
    header_text,
)
_HEADER_VALUES = {
    H_ID: ce_ids,
    H_TIME: ce_times,
    H_TYPE: ce_types,
    H_TRACEPARENT: traceparents,
    H_TRACESTATE: tracestates,
}


def hostile_headers() -> st.SearchStrategy[dict[str, str]]:
    """Any CloudEvents and trace-context header (the contract's list), each maybe
    missing, with values from valid to absurd, plus headers nobody asked for."""
    known = st.fixed_dictionaries(
        {}, optional={name: _HEADER_VALUES.get(name, header_text) for name in CE_HEADERS}
    )
    extra = st.dictionaries(header_names, header_text, max_size=4)
    return st.builds(lambda k, e: {**e, **k}, known, extra)


def as_received(value: str) -> str:
    """A header value as the service reads it: nats-py strips it and turns CR and LF into
    spaces when it sends, and strips the bytes again when it reads."""
    sent = value.strip().replace("\r", " ").replace("\n", " ")
    return sent.encode().strip().decode()


@st.composite
def raw_header_blocks(draw: st.DrawFn) -> bytes:
    """Header blocks only a client writing the protocol itself sends: invalid UTF-8, lines
    without a colon, a name that is not a token, the same header twice, huge lines.

    Always a plain ``NATS/1.0`` version line: nats-py (2.16) drops the connection's read
    loop on a block of at most 8 bytes or on a status line with invalid UTF-8, whatever
    the application does (``test_raw_protocol.test_nats_py_survives_...``).
    """
    names = st.one_of(st.sampled_from([*CE_HEADERS]).map(str.encode), header_names.map(str.encode))
    line = st.one_of(
        st.builds(lambda n, v: n + b": " + v, names, st.binary(max_size=64).map(_no_crlf)),
        st.builds(lambda n, v: n + b":" + v, names, st.binary(max_size=64).map(_no_crlf)),
        st.binary(max_size=64).map(_no_crlf),
        st.binary(max_size=64).map(lambda v: b":" + _no_crlf(v)),
        st.integers(0, 16_384).map(lambda n: b"ce-id: " + b"\xff" * n),
    )
    lines = draw(st.lists(line, max_size=8))
    return b"NATS/1.0\r\n" + b"".join(item + b"\r\n" for item in lines) + b"\r\n"
