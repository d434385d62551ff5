"""Planned operations: a prepared query whose root fields all have a direct read runs without graphql-core.

After ``gateway.plans`` took the per-field work out of plain selections, what was
left of a ``transfer(id)`` request was graphql-core's per-operation set-up (an
executor, the root field collection, a resolve info, the incremental-delivery
machinery), Strawberry's argument wrapper, and the DataLoader hop: more CPU than
the SQL itself. ``OperationPlan`` is compiled once per (document, operation name)
when every root field of a query

- is in ``ROOT_READS`` (``transfer``, ``transfers``): the same function the
  resolver runs, called with the arguments coerced by graphql-core
  (``get_variable_values``, ``get_argument_values``) and converted as Strawberry's
  ``convert_arguments`` does, by a converter compiled with the plan
  (``gateway.conversion``);
- carries no field extension, and its whole selection is plannable
  (``PlannedExecution.value_reader``: plain fields, no resolvers below the root);
- and the operation has no directives (so the plan depends on the document alone).

Running it reads the data and builds the ``data`` object with the selection's
plan. Only a complete success is answered this way: any variable or argument
error, a ``UserError``, a database error, a value the plan does not expect (null
in a non-null field, …) makes ``run`` answer None, and the caller executes the
operation on graphql-core from the start, so every error, its path and its
masking are graphql-core's and Strawberry's. Reads have no effects, so reading
twice on those paths changes nothing but the cost of the error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    GraphQLField,
    OperationType,
    get_argument_values,
    get_variable_values,
)
from graphql.execution.collect_fields import collect_fields
from graphql.execution.values import VariableValues

from gateway import resolvers
from gateway.context import Gateway
from gateway.conversion import ArgumentsConverter, compile_arguments
from gateway.plans import PlannedExecution, Reader
from gateway.schema import schema

log = logging.getLogger(__name__)

#: A root field's read: the gateway and the converted arguments (Python names) to its value.
RootRead = Callable[[Gateway, dict[str, Any]], Awaitable[Any]]
_DEFINITION = "strawberry-definition"


def _read_transfer(gateway: Gateway, arguments: dict[str, Any]) -> Awaitable[Any]:
    return resolvers.transfer_now(gateway, **arguments)


def _read_transfers(gateway: Gateway, arguments: dict[str, Any]) -> Awaitable[Any]:
    return resolvers.transfer_page(gateway, **arguments)


#: Root fields with a direct read, by GraphQL name.
ROOT_READS: dict[str, RootRead] = {"transfer": _read_transfer, "transfers": _read_transfers}


class PlanCounts:
    """How many queries ran as plans, and how many plans handed back to graphql-core."""

    def __init__(self) -> None:
        self.planned = 0
        self.handed_back = 0


#: Process-wide counts (tests use them to see which path answered).
COUNTS = PlanCounts()


@dataclass(frozen=True)
class PlannedRoot:
    """One root field: where its answer goes, how to get its arguments, its read and its plan."""

    response_name: str
    field: GraphQLField
    node: FieldNode
    convert: ArgumentsConverter
    read: RootRead
    complete: Reader

    def converted_arguments(self, variables: VariableValues) -> dict[str, Any]:
        """The arguments as the resolver receives them (graphql-core coercion, Strawberry conversion)."""
        return self.convert(get_argument_values(self.field, self.node, variables))


@dataclass(frozen=True)
class OperationPlan:
    """A query operation whose root fields are all ``PlannedRoot``s."""

    variable_definitions: Any
    roots: tuple[PlannedRoot, ...]

    async def run(self, gateway: Gateway, variables: dict[str, Any] | None) -> dict[str, Any] | None:
        """The ``data`` of the operation, or None when graphql-core must answer it."""
        try:
            coerced = get_variable_values(schema._schema, self.variable_definitions, variables or {})
            if isinstance(coerced, list):
                return None
            arguments = [root.converted_arguments(coerced) for root in self.roots]
            if len(self.roots) == 1:
                values = [await self.roots[0].read(gateway, arguments[0])]
            else:
                reads = (root.read(gateway, args) for root, args in zip(self.roots, arguments, strict=True))
                values = await asyncio.gather(*reads, return_exceptions=True)
                if any(isinstance(value, BaseException) for value in values):
                    return None
            return {
                root.response_name: root.complete(value)
                for root, value in zip(self.roots, values, strict=True)
            }
        except Exception:  # NOTE: graphql-core runs it again and reports the error properly
            return None


class NotCompiledYet(Exception):
    """The request's variables do not let the operation be built; try with the next request's."""


def compile_plan(
    document: DocumentNode, operation_name: str | None, variables: dict[str, Any] | None
) -> OperationPlan | None:
    """The plan of the operation ``operation_name`` chooses, None when it cannot have one.

    Raises ``NotCompiledYet`` when these variables are invalid (graphql-core answers
    that request; a later one compiles the plan).
    """
    built = PlannedExecution.build(
        schema._schema, document, raw_variable_values=variables or {}, operation_name=operation_name
    )
    if isinstance(built, list):
        raise NotCompiledYet
    if not isinstance(built, PlannedExecution):
        return None
    context = built
    operation = context.operation
    query_type = schema._schema.query_type
    if operation.operation is not OperationType.QUERY or query_type is None or not context.shares_plans():
        return None
    collected = collect_fields(
        schema._schema, context.fragments, context.variable_values, query_type, operation
    )
    roots: list[PlannedRoot] = []
    for response_name, field_details_list in collected.grouped_field_set.items():
        node = field_details_list[0].node
        read = ROOT_READS.get(node.name.value)
        field = query_type.fields.get(node.name.value)
        definition = None if field is None else (field.extensions or {}).get(_DEFINITION)
        if read is None or field is None or definition is None or definition.extensions:
            return None
        complete = context.value_reader(field.type, field_details_list)
        if complete is None:
            return None
        convert = compile_arguments(definition.arguments)
        roots.append(PlannedRoot(response_name, field, node, convert, read, complete))
    if not roots:
        return None
    return OperationPlan(tuple(operation.variable_definitions or ()), tuple(roots))
