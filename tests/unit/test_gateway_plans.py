"""Planned selections answer exactly what graphql-core answers, errors and null propagation included."""

from __future__ import annotations

import enum
from typing import Any

import pytest
import strawberry
from graphql import ExecutionResult, execute, parse

from gateway.plans import PlannedExecution


@strawberry.enum
class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@strawberry.type
class Child:
    label: str


@strawberry.type
class Item:
    name: str
    note: str | None
    colour: Colour
    tags: list[str]
    child: Child | None

    @strawberry.field
    def shout(self) -> str:
        return self.name.upper()


ROWS: list[Any] = []


@strawberry.type
class Query:
    @strawberry.field
    def items(self) -> list[Item]:
        return ROWS


schema = strawberry.Schema(query=Query)


class CountingExecution(PlannedExecution):
    planned = 0

    def execute_fields(self, parent_type: Any, source_value: Any, *args: Any) -> Any:
        plan = self._plan_for(parent_type, args[1])
        if plan is not None and parent_type.name == "Item":
            CountingExecution.planned += 1
        return super().execute_fields(parent_type, source_value, *args)


def run(query: str, executor: type | None) -> ExecutionResult:
    kwargs = {} if executor is None else {"executor_class": executor}
    result = execute(schema._schema, parse(query), **kwargs)
    assert isinstance(result, ExecutionResult)
    return result


def same(query: str) -> ExecutionResult:
    planned, plain = run(query, CountingExecution), run(query, None)
    assert planned.data == plain.data
    assert [e.formatted for e in planned.errors or []] == [e.formatted for e in plain.errors or []]
    return planned


def good_rows() -> list[Any]:
    return [
        Item(name="a", note=None, colour=Colour.RED, tags=["x", "y"], child=Child(label="c")),
        Item(name="b", note="n", colour=Colour.BLUE, tags=[], child=None),
    ]


def test_plain_fields_are_planned_and_answer_as_graphql_core() -> None:
    ROWS[:] = good_rows()
    CountingExecution.planned = 0
    result = same("{ items { name note colour tags child { label } renamed: name } }")
    assert result.data == {
        "items": [
            {
                "name": "a",
                "note": None,
                "colour": "RED",
                "tags": ["x", "y"],
                "child": {"label": "c"},
                "renamed": "a",
            },
            {"name": "b", "note": "n", "colour": "BLUE", "tags": [], "child": None, "renamed": "b"},
        ]
    }
    assert CountingExecution.planned == 2


def test_selections_with_resolvers_or_typename_run_on_graphql_core() -> None:
    ROWS[:] = good_rows()
    CountingExecution.planned = 0
    result = same("{ items { name shout __typename } }")
    assert result.data == {
        "items": [
            {"name": "a", "shout": "A", "__typename": "Item"},
            {"name": "b", "shout": "B", "__typename": "Item"},
        ]
    }
    assert CountingExecution.planned == 0


@pytest.mark.parametrize(
    "broken",
    [
        {"name": None},  # null in a non-null field
        {"colour": "purple"},  # a value the enum refuses
        {"tags": "not a list"},
        {"child": Child(label=None)},  # type: ignore[arg-type]
    ],
)
def test_unexpected_values_give_graphql_cores_errors_and_nulls(broken: dict[str, Any]) -> None:
    rows = good_rows()
    for name, value in broken.items():
        setattr(rows[1], name, value)
    ROWS[:] = rows
    result = same("{ items { name colour tags child { label } } }")
    assert result.errors
