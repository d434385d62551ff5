"""Every query Ferry ships, read back from the committed files, for the tests and for promtool.

- ``sql_panels``: each PostgreSQL target of the dashboards (and SQL variables).
- ``promql_expressions``: each PromQL expression of the dashboards and of the
  alert rules (``compose/prometheus/alerts.yml``).
- ``expand_sql`` / ``expand_promql``: replace Grafana's macros and variables the
  way Grafana does before a query reaches its datasource, so a test can run the
  query as shipped. Only the macros Ferry's dashboards use are known; an unknown
  one raises, so a new macro cannot slip through untested.
- ``metric_names``: the metrics an expression reads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS_DIR = ROOT / "grafana" / "dashboards"
ALERTS_FILE = ROOT / "compose" / "prometheus" / "alerts.yml"


@dataclass(frozen=True)
class Query:
    where: str  # "<dashboard>: <panel or variable>"
    text: str
    fmt: str = "table"


def _dashboards() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(DASHBOARDS_DIR.glob("*.json")):
        yield path.stem, json.loads(path.read_text())


def _panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def _datasource_type(item: dict[str, Any]) -> str:
    return str((item.get("datasource") or {}).get("type", ""))


def sql_panels() -> list[Query]:
    queries = []
    for name, board in _dashboards():
        for panel in _panels(board):
            for target in panel.get("targets", []):
                if "rawSql" in target:
                    queries.append(Query(f"{name}: {panel['title']}", target["rawSql"], target["format"]))
        for variable in board.get("templating", {}).get("list", []):
            if "postgres" in _datasource_type(variable):
                queries.append(Query(f"{name}: variable {variable['name']}", variable["query"]))
    return queries


def promql_expressions() -> list[Query]:
    queries = []
    for name, board in _dashboards():
        for panel in _panels(board):
            for target in panel.get("targets", []):
                if "expr" in target:
                    queries.append(Query(f"{name}: {panel['title']}", target["expr"]))
        for variable in board.get("templating", {}).get("list", []):
            if _datasource_type(variable) == "prometheus":
                match = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["query"])
                assert match, f"unexpected variable query {variable['query']!r}"
                queries.append(Query(f"{name}: variable {variable['name']}", match.group(1)))
    for group in yaml.safe_load(ALERTS_FILE.read_text())["groups"]:
        for rule in group["rules"]:
            queries.append(Query(f"alerts: {rule['alert']}", rule["expr"]))
    return queries


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def expand_sql(sql: str, start: datetime, end: datetime, variables: Mapping[str, str | Sequence[str]]) -> str:
    """``sql`` with ``$__timeFilter(col)`` and ``$name`` replaced as Grafana does.

    A multi-value variable (a sequence) becomes its values quoted and comma-separated;
    a single-value one (a string, e.g. a text box) is inserted as it is.
    """

    def time_filter(match: re.Match[str]) -> str:
        return (
            f"{match.group(1)} BETWEEN {_sql_literal(start.isoformat())}::timestamptz"
            f" AND {_sql_literal(end.isoformat())}::timestamptz"
        )

    sql = re.sub(r"\$__timeFilter\(([^)]+)\)", time_filter, sql)
    if "$__" in sql:
        raise ValueError(f"a Grafana macro the tests cannot expand: {sql}")

    def variable(match: re.Match[str]) -> str:
        values = variables[match.group(1)]
        if isinstance(values, str):
            return values
        return ", ".join(_sql_literal(v) for v in values) if values else "NULL"

    return re.sub(r"\$(\w+)", variable, sql)


def expand_promql(expr: str, variables: Mapping[str, str] | None = None) -> str:
    """``expr`` with Grafana's interval macros and ``$name`` variables (default ``.*``) replaced."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__range", "1h")
    if "$__" in expr:
        raise ValueError(f"a Grafana macro the tests cannot expand: {expr}")
    given = variables or {}
    return re.sub(r"\$(\w+)", lambda m: given.get(m.group(1), ".*"), expr)


_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names an (expanded) PromQL expression selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names
