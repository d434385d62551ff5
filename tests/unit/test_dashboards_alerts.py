"""Each alert rule fires on the trouble it names, and stays quiet on a healthy bridge.

Runs ``promtool test rules`` on ``compose/prometheus/alerts.yml`` with synthetic
series: for every alert, one history that must fire it (with its labels and its
rendered summary and runbook link) and one that must not.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from grafana.queries import ALERTS_FILE

ROUTE = 'route="FTT:31337-31338"'
LOCK_TO_RELEASE = "ferry_lock_to_release_seconds_bucket"


@dataclass
class Case:
    alert: str
    series: dict[str, str]  # series selector -> promtool value notation (one value a minute)
    at: str
    labels: dict[str, str] = field(default_factory=dict)
    summary: str | None = None  # None: the alert must not fire


def _latency(slow: bool) -> dict[str, str]:
    """A lock→release histogram with 10 releases a minute, all slow (over 300 s) or all fast."""
    within = "0+0x40" if slow else "0+10x40"
    series = {f'{LOCK_TO_RELEASE}{{{ROUTE}, le="{le}"}}': within for le in ("60", "300")}
    series[f'{LOCK_TO_RELEASE}{{{ROUTE}, le="+Inf"}}'] = "0+10x40"
    series[f"ferry_lock_to_release_seconds_count{{{ROUTE}}}"] = "0+10x40"
    return series


CASES = [
    Case(
        "FerryProcessDown",
        {'up{job="ferry-relayer", instance="relayer:9090"}': "0x5"},
        "3m",
        {"job": "ferry-relayer", "instance": "relayer:9090", "severity": "critical"},
        "ferry-relayer at relayer:9090 has not answered a scrape for 1 minute",
    ),
    Case("FerryProcessDown", {'up{job="ferry-relayer", instance="relayer:9090"}': "1x5"}, "3m"),
    Case(
        "FerryIndexerLagging",
        {'ferry_indexer_lag_blocks{chain="local-a"}': "60x10"},
        "8m",
        {"chain": "local-a", "severity": "warning"},
        "the indexer is 60 blocks behind the head of local-a",
    ),
    Case("FerryIndexerLagging", {'ferry_indexer_lag_blocks{chain="local-a"}': "3x10"}, "8m"),
    Case(
        "FerryIndexerStalled",
        {'ferry_indexer_stalled{chain="local-a"}': "0 1 1 1 1 1"},
        "5m",
        {"chain": "local-a", "severity": "critical"},
        "the indexer of local-a makes no progress while the chain moves on",
    ),
    Case("FerryIndexerStalled", {'ferry_indexer_stalled{chain="local-a"}': "0 1 0 1 0 0"}, "5m"),
    Case(
        "FerryDeepReorg",
        {'ferry_indexer_deep_reorgs_total{chain="local-a"}': "0 0 1 1 1"},
        "4m",
        {"chain": "local-a", "severity": "critical"},
        "a reorg deeper than the confirmations hit local-a; its routes were paused",
    ),
    Case("FerryDeepReorg", {'ferry_indexer_deep_reorgs_total{chain="local-a"}': "0x5"}, "4m"),
    Case(
        "FerryRelayerQueueGrowing",
        {'ferry_relayer_queue_depth{chain="local-b"}': "11+1x40"},
        "35m",
        {"chain": "local-b", "severity": "warning"},
        "46 transfers wait for the submitter of chain local-b, and more keep coming",
    ),
    Case("FerryRelayerQueueGrowing", {'ferry_relayer_queue_depth{chain="local-b"}': "50-1x40"}, "35m"),
    Case(
        "FerryRelayerBacklogGrowing",
        {
            f'ferry_transfer_transitions_total{{{ROUTE}, status="CONFIRMED"}}': "0+1x40",
            f'ferry_transfer_transitions_total{{{ROUTE}, status="SUBMITTED"}}': "0x40",
        },
        "35m",
        {"route": "FTT:31337-31338", "severity": "warning"},
        "15 more transfers on FTT:31337-31338 became ready to relay than the relayer took in 15 minutes",
    ),
    Case(
        "FerryRelayerBacklogGrowing",
        {
            f'ferry_transfer_transitions_total{{{ROUTE}, status="CONFIRMED"}}': "0+1x40",
            f'ferry_transfer_transitions_total{{{ROUTE}, status="SUBMITTED"}}': "0+1x40",
        },
        "35m",
    ),
    Case(
        "FerrySubmitterBalanceLow",
        {'ferry_relayer_submitter_balance_low{chain="local-b"}': "1x10"},
        "7m",
        {"chain": "local-b", "severity": "critical"},
        "the relayer's submitting account on chain local-b is below min_submitter_balance",
    ),
    Case("FerrySubmitterBalanceLow", {'ferry_relayer_submitter_balance_low{chain="local-b"}': "0x10"}, "7m"),
    Case(
        "FerryRoutePaused",
        {f"ferry_route_paused{{{ROUTE}}}": "0 1 1 1 1 1 1 1 1"},
        "8m",
        {"route": "FTT:31337-31338", "severity": "warning"},
        "route FTT:31337-31338 is paused: its transfers wait until an operator resumes it",
    ),
    Case("FerryRoutePaused", {f"ferry_route_paused{{{ROUTE}}}": "0 1 0 1 0 1 0 0 0"}, "8m"),
    Case(
        "FerryDeadLetters",
        {f'ferry_transfer_transitions_total{{{ROUTE}, status="FAILED"}}': "0 0 0 1 1 1"},
        "5m",
        {"route": "FTT:31337-31338", "severity": "critical"},
        "1 transfers on FTT:31337-31338 became FAILED (dead letters) in 10 minutes",
    ),
    Case("FerryDeadLetters", {f'ferry_transfer_transitions_total{{{ROUTE}, status="FAILED"}}': "0x6"}, "5m"),
    Case(
        "FerryReleaseLatencyObjective",
        _latency(slow=True),
        "30m",
        {"route": "FTT:31337-31338", "severity": "warning"},
        "100% of releases on FTT:31337-31338 took over 5 minutes (objective: 99% within 5 minutes)",
    ),
    Case("FerryReleaseLatencyObjective", _latency(slow=False), "30m"),
]


def _test_file(case: Case, runbook: dict[str, str], summary: str | None) -> dict[str, Any]:
    expected = []
    if case.labels:
        annotations = {"runbook_url": runbook[case.alert], "summary": summary or ""}
        expected = [{"exp_labels": case.labels, "exp_annotations": annotations}]
    return {
        "rule_files": [str(ALERTS_FILE)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
                "alert_rule_test": [{"eval_time": case.at, "alertname": case.alert, "exp_alerts": expected}],
            }
        ],
    }


def _runbooks() -> dict[str, str]:
    groups = yaml.safe_load(ALERTS_FILE.read_text())["groups"]
    return {r["alert"]: r["annotations"]["runbook_url"] for g in groups for r in g["rules"]}


def _promtool_test(document: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed: run scripts/ensure-tools.sh (Debian package prometheus)"
    path = tmp_path / "alerts.test.yml"
    path.write_text(yaml.safe_dump(document))
    return subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True)


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    assert {c.alert for c in CASES if c.labels} == set(_runbooks())
    assert {c.alert for c in CASES if not c.labels} == set(_runbooks())


@pytest.mark.parametrize(
    "case",
    CASES,
    ids=[f"{c.alert}-{'fires' if c.labels else 'quiet'}" for c in CASES],
)
def test_alert(case: Case, tmp_path: Path) -> None:
    result = _promtool_test(_test_file(case, _runbooks(), case.summary), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
