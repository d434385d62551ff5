"""The shipped dashboards and alert rules: current with their code, well-formed, honest.

- The committed JSON is exactly what ``grafana/generate.py`` makes.
- PostgreSQL panels read the ``analytics`` views only (all the analyst role may read).
- Every metric a PromQL expression names is defined in ferry/metrics.py (or is one
  of Prometheus' own: ``up``, the process collector's ``process_*``).
- Every expression of the dashboards and of the alert rules passes ``promtool check
  rules`` (the dashboards' expressions go into a generated recording-rules file,
  with Grafana's macros expanded).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import Counter, Histogram
from prometheus_client.metrics import MetricWrapperBase

from ferry import metrics
from grafana import generate
from grafana.queries import ALERTS_FILE, expand_promql, metric_names, promql_expressions, sql_panels

PROMETHEUS_OWN = {
    "up",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_start_time_seconds",
}


def defined_series() -> set[str]:
    """Names of every series ferry/metrics.py can expose (with the suffixes their types add)."""
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            name = value._name
            if isinstance(value, Counter):
                names.add(f"{name}_total")
            elif isinstance(value, Histogram):
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            else:
                names.add(name)
    return names


def test_committed_dashboards_are_what_the_code_generates() -> None:
    rendered = generate.rendered()
    committed = set(generate.DASHBOARDS_DIR.glob("*.json"))
    assert committed == set(rendered), "a dashboard file without code, or code without its file"
    for path, text in rendered.items():
        assert path.read_text() == text, f"{path.name} is stale: run python -m grafana.generate"
    assert generate.main(["--check"]) == 0


def test_check_mode_notices_a_hand_edit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generate, "DASHBOARDS_DIR", tmp_path)
    assert generate.main([]) == 0
    edited = tmp_path / "operations.json"
    edited.write_text(edited.read_text().replace("Ferry / Operations", "Edited by hand"))
    assert generate.main(["--check"]) == 1


def test_every_dashboard_has_the_variables_operators_filter_by() -> None:
    variables = {
        path.stem: {v["name"] for v in json.loads(path.read_text())["templating"]["list"]}
        for path in generate.DASHBOARDS_DIR.glob("*.json")
    }
    assert variables["operations"] >= {"chain"}
    assert variables["chains"] >= {"chain"}
    assert variables["transfers"] >= {"route"}
    assert variables["analytics"] >= {"route", "chain"}


def test_postgres_panels_read_only_the_analytics_views() -> None:
    queries = sql_panels()
    assert len(queries) >= 8
    for query in queries:
        relations = re.findall(r"\b(?:FROM|JOIN)\s+([\w.]+)", query.text, flags=re.IGNORECASE)
        assert relations, query.where
        assert all(r.startswith("analytics.") for r in relations), f"{query.where}: {relations}"


def test_every_promql_metric_is_in_the_catalogue() -> None:
    known = defined_series() | PROMETHEUS_OWN
    for query in promql_expressions():
        names = metric_names(expand_promql(query.text))
        assert names, f"{query.where}: no metric found in {query.text}"
        assert names <= known, f"{query.where} names undefined metrics {names - known}"


def test_metric_names_are_read_from_expressions() -> None:
    expr = 'sum by (route, status) (rate(ferry_x_total{route=~".*", status="a b"}[5m])) / on (route) up'
    assert metric_names(expr) == {"ferry_x_total", "up"}
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(h_bucket[1m]))) > 600") == {"h_bucket"}


def _promtool() -> str:
    binary = shutil.which("promtool")
    assert binary, "promtool is not installed: run scripts/ensure-tools.sh (Debian package prometheus)"
    return binary


def test_alert_rules_pass_promtool() -> None:
    result = subprocess.run([_promtool(), "check", "rules", str(ALERTS_FILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_expressions_pass_promtool(tmp_path: Path) -> None:
    rules = [
        {"record": f"ferry:dashboard_expression:{index}", "expr": expand_promql(query.text)}
        for index, query in enumerate(promql_expressions())
        if not query.where.startswith("alerts:")
    ]
    assert len(rules) > 20
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([_promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_refuses_a_broken_expression(tmp_path: Path) -> None:
    path = tmp_path / "broken.yml"
    rule = {"record": "ferry:broken", "expr": "sum by (route (rate(ferry_x_total[1m]))"}
    path.write_text(yaml.safe_dump({"groups": [{"name": "broken", "rules": [rule]}]}))
    result = subprocess.run([_promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode != 0
