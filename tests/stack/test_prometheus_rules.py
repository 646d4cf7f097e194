"""Prometheus configuration, recording rules and alert rules (infra/prometheus).

promtool checks the configuration and the rule files and runs the rules' unit tests
(infra/prometheus/tests/*.yml). The rest checks what promtool cannot: the names agreed with
the dashboards and the runbook (every contract alert and recording rule exists), that every
alert carries what on-call needs (for, severity, summary, description, runbook_url), and that
every alert has a promtool case where it fires and one where it stays quiet.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.replies import FAULT_CODES
from tests.contract import ALERTS, RECORDING_RULES, SCRAPE_JOBS
from tests.stack.tools import INFRA, ROOT, require_tool

PROMETHEUS = INFRA / "prometheus"
CONFIG = PROMETHEUS / "prometheus.yml"
RULES = PROMETHEUS / "rules"
ALERT_RULES = RULES / "alerts.yml"
RECORDING_FILE = RULES / "recording.yml"
RULE_FILES = sorted(RULES.glob("*.yml"))
UNIT_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))

SEVERITIES = frozenset({"critical", "warning"})
ANNOTATIONS = ("summary", "description", "runbook_url")

_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS = {
    "ms": 0.001,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 7 * 86400,
    "y": 365 * 86400,
}


def seconds(duration: str) -> float:
    """A Prometheus duration (``90s``, ``1h30m``) in seconds."""
    parts = _DURATION_PART.findall(duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a Prometheus duration: {duration!r}")
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)


def load(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in load(path)["groups"] for rule in group["rules"]]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for rule in rules(ALERT_RULES) if "alert" in rule]


def promtool(*args: str, cwd: Path) -> None:
    """Run promtool; fail with its whole output unless it exits 0."""
    executable = require_tool("promtool")
    done = subprocess.run(
        [executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, (
        f"promtool {' '.join(args)} (in {cwd}) exited {done.returncode}\n"
        f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    )


def test_the_files_are_there() -> None:
    # The parametrized tests below would pass vacuously over an empty glob.
    assert CONFIG.is_file()
    assert [p.name for p in RULE_FILES] == ["alerts.yml", "recording.yml"]
    assert UNIT_TESTS, "no promtool unit tests in infra/prometheus/tests"


# --- promtool ----------------------------------------------------------------------------


def test_promtool_check_config() -> None:
    # Also checks the rule files the configuration names (resolved next to it).
    promtool("check", "config", CONFIG.name, cwd=PROMETHEUS)


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(path: Path) -> None:
    promtool("check", "rules", str(path.relative_to(PROMETHEUS)), cwd=PROMETHEUS)


@pytest.mark.parametrize("path", UNIT_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests(path: Path) -> None:
    promtool("test", "rules", path.name, cwd=path.parent)


# --- the configuration -------------------------------------------------------------------


def test_config_scrapes_the_contract_jobs_and_loads_both_rule_files() -> None:
    config = load(CONFIG)
    assert config["global"]["scrape_interval"] == "15s"
    assert config["global"]["evaluation_interval"] == "15s"
    assert config["rule_files"] == ["rules/recording.yml", "rules/alerts.yml"]
    jobs = {
        job["job_name"]: {t for group in job["static_configs"] for t in group["targets"]}
        for job in config["scrape_configs"]
    }
    assert jobs == SCRAPE_JOBS


def test_every_ordermesh_target_carries_its_service_name() -> None:
    (job,) = [j for j in load(CONFIG)["scrape_configs"] if j["job_name"] == "ordermesh"]
    for group in job["static_configs"]:
        assert len(group["targets"]) == 1, group
        host = group["targets"][0].split(":")[0]
        assert group.get("labels", {}).get("service") == host, group


# --- names of the contract ---------------------------------------------------------------


def test_every_contract_recording_rule_is_defined() -> None:
    recorded = [rule["record"] for rule in rules(RECORDING_FILE)]
    assert len(recorded) == len(set(recorded)), "a recording rule is defined twice"
    missing = RECORDING_RULES - set(recorded)
    assert not missing, f"contract recording rules missing: {sorted(missing)}"


def test_alert_names_are_the_contract() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert names - ALERTS == set(), "alerts outside the contract (no runbook entry)"
    assert ALERTS - names == set(), "contract alerts not defined"


# --- what every alert carries -------------------------------------------------------------


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_has_for_severity_and_annotations(rule: dict[str, Any]) -> None:
    assert seconds(rule.get("for", "")) > 0, "an alert needs a `for:` longer than 0"
    assert rule.get("labels", {}).get("severity") in SEVERITIES
    annotations = rule.get("annotations", {})
    for key in ANNOTATIONS:
        value = annotations.get(key)
        assert isinstance(value, str) and value.strip(), f"annotation {key} missing or empty"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_runbook_url_points_at_the_alert_section(rule: dict[str, Any]) -> None:
    url = rule["annotations"]["runbook_url"]
    assert url == f"docs/operations.md#{rule['alert'].lower()}"


def test_every_runbook_url_has_its_section_in_the_operations_guide() -> None:
    """The anchor a runbook_url names exists: a heading that renders to it."""
    operations = (ROOT / "docs" / "operations.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 _-]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in operations.splitlines()
        if line.startswith("#")
    }
    for rule in alert_rules():
        path, anchor = rule["annotations"]["runbook_url"].split("#")
        assert (ROOT / path).exists(), path
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in {path}"


# --- promtool cases per alert -------------------------------------------------------------


def alert_cases() -> list[dict[str, Any]]:
    """Every ``alert_rule_test`` entry of every unit-test file."""
    return [
        case
        for path in UNIT_TESTS
        for test in load(path)["tests"]
        for case in test.get("alert_rule_test", [])
    ]


def longest_for(alert: str) -> float:
    return max(seconds(rule["for"]) for rule in alert_rules() if rule["alert"] == alert)


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_alert_has_a_firing_and_a_quiet_unit_test(alert: str) -> None:
    cases = [case for case in alert_cases() if case["alertname"] == alert]
    firing = [case for case in cases if case.get("exp_alerts")]
    # Quiet only counts once `for` has elapsed: before that nothing could fire anyway.
    quiet = [
        case
        for case in cases
        if not case.get("exp_alerts") and seconds(case["eval_time"]) >= longest_for(alert)
    ]
    assert firing, f"no promtool case where {alert} fires"
    assert quiet, f"no promtool case where {alert} stays quiet past its `for`"


def test_the_rules_fault_codes_are_the_services() -> None:
    """The codes the ratios count as faults are the ones the services start at 0
    (``broker.replies.FAULT_CODES``): a code added on one side only is caught here."""
    text = RECORDING_FILE.read_text() + ALERT_RULES.read_text()
    regexes = set(re.findall(r'code=~"([^"]+)"', text))
    assert regexes, "the fault ratios select codes with code=~"
    for regex in regexes:
        assert set(regex.split("|")) == set(FAULT_CODES), regex
