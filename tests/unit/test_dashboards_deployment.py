"""The compose deployment, Grafana provisioning, the alert runbook and the metric catalogue agree.

Docker cannot run here, so this checks what can be checked without it: the compose
file parses, every file it (and the Dockerfile) refers to exists, published ports
and scrape targets match the settings' defaults, Grafana's datasources are the ones
the dashboards name and get every variable they need, each alert has its runbook
section, and docs/metrics.md lists exactly the metrics ferry/metrics.py defines.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from ferry import metrics
from ferry.settings import Settings
from grafana import panels

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
COMPOSE_FILE = COMPOSE / "docker-compose.yml"
PROMETHEUS_CONFIG = COMPOSE / "prometheus" / "prometheus.yml"
ALERTS = COMPOSE / "prometheus" / "alerts.yml"
DATASOURCES = ROOT / "grafana" / "provisioning" / "datasources" / "ferry.yaml"
PROVIDERS = ROOT / "grafana" / "provisioning" / "dashboards" / "ferry.yaml"
PROCESSES = ("indexer", "relayer", "gateway")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


def _default(field: str) -> Any:
    return Settings.model_fields[field].default


def test_compose_has_every_service_of_the_deployment(compose: dict[str, Any]) -> None:
    expected = {"postgres", "redis", "chain-a", "chain-b", "migrate", *PROCESSES, "prometheus", "grafana"}
    assert expected <= set(compose["services"])
    for name in PROCESSES:
        assert compose["services"][name]["command"] == [name]
        depends = compose["services"][name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"


def test_every_file_compose_and_the_dockerfile_refer_to_exists(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            assert (COMPOSE / build["context"] / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (COMPOSE / source).exists(), f"{name}: {source}"
        for word in service.get("entrypoint", []):
            for script in re.findall(r"scripts/[\w.]+", word):
                assert (ROOT / script).is_file(), f"{name}: {script}"
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), line


def test_published_ports_and_scrape_targets_match_the_settings_defaults(compose: dict[str, Any]) -> None:
    gateway = compose["services"]["gateway"]
    published = {int(p.rsplit(":", 1)[1]) for p in gateway["ports"]}
    assert published == {_default("graphql_port"), _default("health_port")}
    assert all(p.startswith("127.0.0.1:") for s in compose["services"].values() for p in s.get("ports", []))
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    for name in PROCESSES:
        assert targets[f"ferry-{name}"] == [f"{name}:{_default('metrics_port')}"]
        environment = {
            **compose["x-ferry"]["environment"],
            **compose["services"][name].get("environment", {}),
        }
        assert environment["FERRY_METRICS_PORT"] == str(_default("metrics_port"))


def test_prometheus_config_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed: run scripts/ensure-tools.sh (Debian package prometheus)"
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_datasources_are_those_the_dashboards_name(compose: dict[str, Any]) -> None:
    datasources = {d["uid"]: d for d in yaml.safe_load(DATASOURCES.read_text())["datasources"]}
    assert datasources[panels.PROMETHEUS.uid or ""]["type"] == panels.PROMETHEUS.type_val
    postgres = datasources[panels.POSTGRES.uid or ""]
    assert postgres["type"] == panels.POSTGRES.type_val
    grafana_env = compose["services"]["grafana"]["environment"]
    needed = set(re.findall(r"\$\{(\w+)\}", DATASOURCES.read_text()))
    assert needed <= set(grafana_env), f"grafana lacks {needed - set(grafana_env)}"
    assert grafana_env[postgres["user"].strip("${}")] == "ferry_analyst"
    assert "ferry_analyst" in (ROOT / "migrations" / "versions" / "0006_analytics.py").read_text()


def test_dashboard_provider_loads_the_mounted_dashboards(compose: dict[str, Any]) -> None:
    provider = yaml.safe_load(PROVIDERS.read_text())["providers"][0]
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["../grafana/dashboards"] == provider["options"]["path"]
    assert list((COMPOSE / "../grafana/dashboards").glob("*.json"))


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_every_alert_has_a_summary_and_a_runbook_section() -> None:
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    sections = re.findall(r"^## (\w+)\n\n(.+?)(?=^## |\Z)", runbook, flags=re.MULTILINE | re.DOTALL)
    paragraphs = dict(sections)
    names = [rule["alert"] for rule in _alerts()]
    assert set(names) == set(paragraphs), "alerts and runbook sections differ"
    for rule in _alerts():
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["runbook_url"] == f"docs/runbook.md#{rule['alert'].lower()}"
        assert len(paragraphs[rule["alert"]].split()) > 40, f"{rule['alert']}: a real paragraph, please"


def _catalogue() -> dict[str, tuple[str, tuple[str, ...]]]:
    rows = re.findall(
        r"^\| `(ferry_\w+)` \| (\w+) \| ([^|]+) \|", (ROOT / "docs" / "metrics.md").read_text(), re.MULTILINE
    )
    catalogue = {}
    for name, kind, labels in rows:
        assert name not in catalogue, f"{name} listed twice"
        label_names = tuple(x.strip() for x in labels.split(",")) if labels.strip() != "—" else ()
        catalogue[name] = (kind, label_names)
    return catalogue


def _defined() -> dict[str, tuple[str, tuple[str, ...]]]:
    kinds = {Counter: "counter", Gauge: "gauge", Histogram: "histogram"}
    defined = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            kind = kinds[type(value)]
            name = value._name + ("_total" if kind == "counter" else "")
            defined[name] = (kind, tuple(value._labelnames))
    return defined


def test_metric_catalogue_is_ferry_metrics() -> None:
    catalogue, defined = _catalogue(), _defined()
    assert set(defined) - set(catalogue) == set(), "defined in ferry/metrics.py but not in docs/metrics.md"
    assert set(catalogue) - set(defined) == set(), "in docs/metrics.md but not defined in ferry/metrics.py"
    for name, (kind, labels) in defined.items():
        assert catalogue[name] == (kind, labels), f"docs/metrics.md disagrees on {name}"


def test_readme_shows_how_to_open_the_dashboards() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme.index("## Dashboards and alerts") < readme.index("## Development")
    section = readme.split("## Dashboards and alerts", 1)[1].split("\n## ", 1)[0]
    assert "http://127.0.0.1:3000" in section
    assert "docker compose" in section
