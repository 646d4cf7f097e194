"""Every published AsyncAPI document, checked by the official AsyncAPI parser.

tests/unit/test_asyncapi.py checks the document against what we know about ordermesh;
this checks it against the specification, with a validator we did not write
(``@asyncapi/parser``, run by ``tools/asyncapi/validate.mjs``): a document it rejects
would be rejected or misread by the code generators and documentation tools our users
feed it to. Every ``docs/asyncapi*.json`` and ``examples/**/asyncapi.json`` is found by
glob, so a document published later is covered without editing this file.

Broken documents prove the validator can fail: each is a valid control document with
one defect, and the control itself must pass, so a rejection is the defect's doing.

docs/asyncapi.json merges FastStream's documents of the partner services into ours
(``ordermesh/asyncapi.py``); each of FastStream's is also validated on its own, as
FastStream generates it, so that a defect in the merged document is known to be the
merge's rather than FastStream's.

``make test`` installs node's packages (``make node-tools``) and sets
``ORDERMESH_REQUIRE_TOOLS=1``: there a missing ``node`` or parser fails the test; by
hand it skips with the command to run.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ordermesh.asyncapi import partner_documents
from tests.stack.tools import ROOT, require_tool

VALIDATOR = ROOT / "tools" / "asyncapi" / "validate.mjs"
PARSER_PACKAGE = ROOT / "tools" / "asyncapi" / "node_modules" / "@asyncapi" / "parser"
PUBLISHED = sorted({*ROOT.glob("docs/asyncapi*.json"), *ROOT.glob("examples/**/asyncapi.json")})
#: node starts in well under a second; parsing docs/asyncapi.json takes one or two.
TIMEOUT = 120


@dataclass(frozen=True, slots=True)
class Run:
    """One validate.mjs process: its exit status and its per-file results (``--json``)."""

    returncode: int
    results: dict[str, dict[str, Any]]
    stderr: str


def _control() -> dict[str, Any]:
    """A small document the parser accepts, shaped like ours: a request, a reply channel."""
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "control", "version": "1.0.0"},
        "channels": {
            "order.place": {
                "address": "order.place",
                "messages": {"OrderPlace": {"$ref": "#/components/messages/OrderPlace"}},
            },
            "reply": {
                "address": None,
                "messages": {"Reply": {"$ref": "#/components/messages/Reply"}},
            },
        },
        "operations": {
            "order.place": {
                "action": "receive",
                "channel": {"$ref": "#/channels/order.place"},
                "messages": [{"$ref": "#/channels/order.place/messages/OrderPlace"}],
                "reply": {
                    "channel": {"$ref": "#/channels/reply"},
                    "messages": [{"$ref": "#/channels/reply/messages/Reply"}],
                },
            }
        },
        "components": {
            "messages": {
                "OrderPlace": {"payload": {"type": "object"}},
                "Reply": {"payload": {"type": "object"}},
            }
        },
    }


def _broken() -> dict[str, tuple[dict[str, Any], str, str]]:
    """name -> (document, the rule that must report it, the JSON pointer it must point at)."""
    dangling = copy.deepcopy(_control())
    dangling["operations"]["order.place"]["messages"] = [
        {"$ref": "#/channels/order.place/messages/Missing"}
    ]
    # A message that exists, but on another channel: every "$ref" resolves, so only a
    # validator that knows AsyncAPI's rules (not our unit test's ref check) sees it.
    foreign = copy.deepcopy(_control())
    foreign["operations"]["order.place"]["messages"] = [{"$ref": "#/channels/reply/messages/Reply"}]
    return {
        "dangling-message": (
            dangling,
            "invalid-ref",
            "/operations/order.place/messages/0/$ref",
        ),
        "message-of-another-channel": (
            foreign,
            "asyncapi3-operation-messages-from-referred-channel",
            "/operations/order.place/messages/0",
        ),
    }


def _require_validator() -> str:
    node = require_tool("node")
    if not (PARSER_PACKAGE / "package.json").is_file():
        where = PARSER_PACKAGE.parent.parent.relative_to(ROOT)
        message = f"@asyncapi/parser is not installed in {where}: run `make node-tools`"
        if os.environ.get("ORDERMESH_REQUIRE_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return node


def _start(node: str, files: list[Path]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [node, str(VALIDATOR), "--json", *map(str, files)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen[str]) -> Run:
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    assert process.returncode in (0, 1), f"validate.mjs failed to run:\n{stderr}"
    results = {entry["file"]: entry for entry in json.loads(stdout)}
    return Run(process.returncode, results, stderr)


@dataclass(frozen=True, slots=True)
class Runs:
    published: Run
    broken: Run
    #: FastStream's own document of each partner service, before the merge.
    partners: Run


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    """The published documents, the broken ones and the partners' in three node processes.

    Separate processes so that each exit status is checked: 0 for documents that must
    pass, 1 when one fails. They run side by side: most of the time is node loading the
    parser.
    """
    node = _require_validator()
    folder = tmp_path_factory.mktemp("asyncapi")
    samples = {"control": _control()} | {name: doc for name, (doc, _, _) in _broken().items()}
    for name, doc in samples.items():
        (folder / f"{name}.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    partners = tmp_path_factory.mktemp("faststream")
    for service, doc in partner_documents().items():
        (partners / f"{service}.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    published = _start(node, PUBLISHED)
    broken = _start(node, [folder / f"{name}.json" for name in samples])
    faststream = _start(node, sorted(partners.glob("*.json")))
    yield Runs(_finish(published), _finish(broken), _finish(faststream))


def _show(result: dict[str, Any]) -> str:
    return "\n".join(
        f"  {d['severity']} {d['path']} [{d['code']}] {d['message']}" for d in result["diagnostics"]
    )


def test_the_main_document_is_among_the_published() -> None:
    """The glob must not go quietly empty, e.g. if docs/ moved."""
    assert ROOT / "docs" / "asyncapi.json" in PUBLISHED


@pytest.mark.parametrize("document", PUBLISHED, ids=lambda p: str(p.relative_to(ROOT)))
def test_published_document_is_valid(runs: Runs, document: Path) -> None:
    result = runs.published.results[str(document)]
    errors = [d for d in result["diagnostics"] if d["severity"] == "error"]
    assert not errors, (
        f"the AsyncAPI parser rejects {document.relative_to(ROOT)} (fix broker/asyncapi.py "
        f"or ordermesh/asyncapi.py and regenerate with "
        f"`ordermesh asyncapi --output docs/asyncapi.json`):\n" + _show(result)
    )
    assert result["valid"]


def test_the_validator_passes_the_published_documents(runs: Runs) -> None:
    published = runs.published
    invalid = sorted(f for f, r in published.results.items() if not r["valid"])
    assert published.returncode == 0, f"rejected: {invalid}\n{published.stderr}"
    assert set(published.results) == {str(p) for p in PUBLISHED}


def test_the_control_document_is_valid(runs: Runs) -> None:
    (control,) = (r for f, r in runs.broken.results.items() if Path(f).stem == "control")
    assert control["valid"], _show(control)


@pytest.mark.parametrize("name", sorted(_broken()))
def test_the_validator_rejects_a_broken_document(runs: Runs, name: str) -> None:
    broken = runs.broken
    _, rule, path = _broken()[name]
    (result,) = (r for f, r in broken.results.items() if Path(f).stem == name)
    errors = [(d["code"], d["path"]) for d in result["diagnostics"] if d["severity"] == "error"]
    assert errors == [(rule, path)], _show(result)
    assert not result["valid"]
    assert broken.returncode == 1


def test_faststreams_partner_documents_are_valid_on_their_own(runs: Runs) -> None:
    """What the merge starts from: one document per partner broker, as FastStream wrote it."""
    partners = runs.partners
    assert {Path(f).stem for f in partners.results} == {"payment-gateway", "shipping-carrier"}
    for file, result in sorted(partners.results.items()):
        assert result["valid"], f"FastStream's {Path(file).name}:\n" + _show(result)
    assert partners.returncode == 0, partners.stderr
