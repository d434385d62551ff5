"""Compiled argument conversion gives what Strawberry's ``convert_arguments`` gives, value for value."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

import pytest
import strawberry
from graphql import GraphQLSchema, OperationDefinitionNode, get_argument_values, get_variable_values, parse
from strawberry.relay import GlobalID
from strawberry.types.arguments import convert_arguments

from gateway.conversion import compile_arguments
from gateway.schema import schema as gateway_schema


@strawberry.enum
class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@strawberry.input
class Inner:
    label: str
    hint: str | None  # NOTE: nullable without a default: conversion supplies None
    colours: list[Colour] | None = None


@strawberry.input
class Outer:
    name: str | None = None
    count: int = 3
    inner: Inner | None = None
    inners: list[Inner] | None = None
    tags: list[str | None] | None = None
    when: datetime | None = None
    maybe: strawberry.Maybe[int | None] = None
    node: GlobalID | None = None


@strawberry.type
class Query:
    @strawberry.field
    def probe(
        self,
        outer: Outer | None = None,
        outers: list[Outer] | None = None,
        colour: Colour | None = None,
        first: int | None = None,
        ids: list[strawberry.ID] | None = None,
    ) -> int:
        return 0


SYNTHETIC = strawberry.Schema(query=Query)
PROBE = """query($outer: Outer, $outers: [Outer!], $colour: Colour, $first: Int, $ids: [ID!]) {
  probe(outer: $outer, outers: $outers, colour: $colour, first: $first, ids: $ids) }"""
TRANSFERS = """query($filter: TransferFilterInput, $orderBy: TransferOrderInput, $first: Int, $after: String,
  $last: Int, $before: String) {
  transfers(filter: $filter, orderBy: $orderBy, first: $first, after: $after, last: $last, before: $before)
  { edges { node { id } } } }"""

PROBE_VARIABLES: list[dict[str, Any]] = [
    {},
    {"outer": None, "outers": None, "colour": None, "first": None, "ids": None},
    {"outer": {}, "colour": "RED", "first": 7, "ids": ["a", "b"]},
    {"outer": {"name": "x", "count": 9, "tags": ["a", None], "when": "2026-01-02T03:04:05+00:00"}},
    {"outer": {"inner": {"label": "l", "colours": ["RED", "BLUE"]}, "inners": [{"label": "m", "hint": "h"}]}},
    {"outer": {"inner": None, "inners": [], "tags": None, "maybe": None}},
    {"outer": {"maybe": 5, "node": str(GlobalID("Thing", "1"))}},
    {"outers": [{"name": "a"}, {"count": 1, "inner": {"label": "z", "colours": None}}]},
]
TRANSFERS_VARIABLES: list[dict[str, Any]] = [
    {},
    {"first": 20, "filter": {"address": "0x" + "ab" * 20}},
    {"filter": {"status": ["PENDING", "RELEASED"], "sourceChainId": "31337", "amountMin": "1"}},
    {"filter": {"lockedAfter": datetime(2026, 1, 1, tzinfo=UTC).isoformat(), "token": "FTT"}},
    {"orderBy": {"field": "AMOUNT", "direction": "ASC"}, "last": 3, "before": "cursor"},
    {"filter": None, "orderBy": None, "after": None},
]


def _both(
    schema: GraphQLSchema, strawberry_schema: strawberry.Schema, document: str, variables: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    operation = parse(document).definitions[0]
    assert isinstance(operation, OperationDefinitionNode)
    coerced = get_variable_values(schema, operation.variable_definitions or (), variables)
    assert not isinstance(coerced, list), coerced
    node = operation.selection_set.selections[0]
    query_type = schema.query_type
    assert query_type is not None
    field = query_type.fields[node.name.value]  # type: ignore[attr-defined]
    values = get_argument_values(field, node, coerced)  # type: ignore[arg-type]
    arguments = field.extensions["strawberry-definition"].arguments
    expected = convert_arguments(
        values,
        arguments,
        scalar_registry=strawberry_schema.schema_converter.scalar_registry,
        config=strawberry_schema.config,
    )
    return compile_arguments(arguments)(values), expected


@pytest.mark.parametrize("variables", PROBE_VARIABLES)
def test_every_kind_of_argument_converts_as_strawberry_does(variables: dict[str, Any]) -> None:
    got, expected = _both(SYNTHETIC._schema, SYNTHETIC, PROBE, variables)
    assert got == expected
    assert repr(got) == repr(expected)  # same classes, same UNSET/None/Some, same order


@pytest.mark.parametrize("variables", TRANSFERS_VARIABLES)
def test_the_transfers_arguments_convert_as_strawberry_does(variables: dict[str, Any]) -> None:
    got, expected = _both(gateway_schema._schema, gateway_schema, TRANSFERS, variables)
    assert got == expected
    assert repr(got) == repr(expected)


def test_lists_are_copied_not_shared() -> None:
    """graphql-core may hand every request the same list (a default): converting must copy it."""
    arguments = SYNTHETIC._schema.query_type.fields["probe"].extensions["strawberry-definition"].arguments  # type: ignore[union-attr]
    convert = compile_arguments(arguments)
    ids = ["a"]
    got = convert({"ids": ids})
    got["ids"].append("mutated")
    assert ids == ["a"]
