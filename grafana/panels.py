"""Typed building blocks for Ferry's Grafana dashboards, on top of grafana-foundation-sdk.

The SDK has builders for dashboards, panels and Prometheus queries but none for
the PostgreSQL datasource, so ``SqlQuery`` fills that gap with the same
``to_json`` protocol. Every panel here is tied to one of the two provisioned
datasources (``grafana/provisioning/datasources/ferry.yaml``) by a fixed uid, so
the generated JSON needs no import-time datasource mapping.

Invariant: PostgreSQL panels read the ``analytics`` schema only (the analyst
role can read nothing else), and PromQL names only metrics from ferry/metrics.py
or Prometheus' own (``up``, ``process_*``); tests check both.
"""

from __future__ import annotations

from typing import Any, Literal

from grafana_foundation_sdk.builders import (
    barchart,
    dashboard,
    histogram,
    prometheus,
    stat,
    table,
    timeseries,
)
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableOption, VariableRefresh

PROMETHEUS = DataSourceRef(type_val="prometheus", uid="ferry-prometheus")
POSTGRES = DataSourceRef(type_val="grafana-postgresql-datasource", uid="ferry-postgres")

Panel = cogbuilder.Builder[Any]


class SqlQuery(cogvariants.Dataquery):
    """A raw-SQL target of the PostgreSQL datasource."""

    def __init__(self, sql: str, fmt: Literal["table", "time_series"], ref_id: str = "A") -> None:
        self.sql = sql
        self.fmt = fmt
        self.ref_id = ref_id

    def to_json(self) -> dict[str, object]:
        return {
            "refId": self.ref_id,
            "datasource": POSTGRES.to_json(),
            "editorMode": "code",
            "format": self.fmt,
            "rawQuery": True,
            "rawSql": self.sql,
        }


class Sql(cogbuilder.Builder[SqlQuery]):
    def __init__(self, sql: str, fmt: Literal["table", "time_series"] = "table") -> None:
        self._internal = SqlQuery(" ".join(sql.split()), fmt)

    def build(self) -> SqlQuery:
        return self._internal


def promql(expr: str, legend: str = "", ref_id: str = "A") -> prometheus.Dataquery:
    query = prometheus.Dataquery().expr(expr).ref_id(ref_id).datasource(PROMETHEUS)
    return query.legend_format(legend) if legend else query


def quantile(q: float, bucket: str, by: str, matchers: str = "", window: str = "$__rate_interval") -> str:
    """PromQL for the ``q`` quantile of a histogram's ``bucket`` series, per ``by`` labels."""
    selector = f"{bucket}{{{matchers}}}" if matchers else bucket
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({selector}[{window}])))"


def series(title: str, *queries: prometheus.Dataquery, unit: str = "short", width: int = 12) -> Panel:
    panel = timeseries.Panel().title(title).datasource(PROMETHEUS).unit(unit).span(width).height(8)
    for query in queries:
        panel = panel.with_target(query)
    return panel


def single(title: str, query: prometheus.Dataquery, unit: str = "short", width: int = 6) -> Panel:
    # NOTE: a stat shows one number: an instant query, not a range of points to reduce.
    panel = stat.Panel().title(title).datasource(PROMETHEUS).with_target(query.instant())
    return panel.unit(unit).span(width).height(4)


def sql_table(title: str, sql: str, width: int = 12, height: int = 8) -> table.Panel:
    return table.Panel().title(title).datasource(POSTGRES).with_target(Sql(sql)).span(width).height(height)


def sql_series(title: str, sql: str, unit: str = "short", width: int = 12) -> Panel:
    panel = timeseries.Panel().title(title).datasource(POSTGRES).unit(unit).span(width).height(8)
    return panel.with_target(Sql(sql, "time_series"))


def sql_bars(title: str, sql: str, unit: str = "short", width: int = 12) -> Panel:
    panel = barchart.Panel().title(title).datasource(POSTGRES).unit(unit).span(width).height(8)
    return panel.with_target(Sql(sql))


def sql_histogram(title: str, sql: str, unit: str = "short", width: int = 12) -> Panel:
    panel = histogram.Panel().title(title).datasource(POSTGRES).unit(unit).span(width).height(8)
    return panel.with_target(Sql(sql))


def prom_variable(name: str, label: str, metric: str) -> dashboard.QueryVariable:
    """A multi-value variable over the values of ``label`` on ``metric`` (All = ``.*``)."""
    return (
        dashboard.QueryVariable(name)
        .label(name)
        .datasource(PROMETHEUS)
        .query(f"label_values({metric}, {label})")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(VariableOption(selected=True, text="All", value="$__all"))
    )


def sql_variable(name: str, sql: str) -> dashboard.QueryVariable:
    """A multi-value variable from an analytics query (All = every value, quoted)."""
    return (
        dashboard.QueryVariable(name)
        .label(name)
        .datasource(POSTGRES)
        .query(sql)
        .refresh(VariableRefresh.ON_DASHBOARD_LOAD)
        .multi(True)
        .include_all(True)
        .current(VariableOption(selected=True, text="All", value="$__all"))
    )


def new_dashboard(
    uid: str, title: str, description: str, default_range: str = "now-6h"
) -> dashboard.Dashboard:
    return (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["ferry"])
        .time(default_range, "now")
        .timezone("utc")
        .refresh("30s")
        .readonly()
    )
