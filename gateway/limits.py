"""Refusing expensive or unwanted operations before they run: depth, cost, aliases, introspection.

``QueryLimits`` walks the chosen operation (following fragments, reading
variables) once, before execution, and refuses it with a message that names the
limit when it is over one. Limits come from the settings
(``FERRY_GATEWAY_MAX_DEPTH``, ``_MAX_COST``, ``_MAX_ALIASES``, ``_INTROSPECTION``).

Cost model (an upper bound of the rows and objects a query may produce):
every field costs 1, times the size of each list it sits inside. A list's size
is its ``first``/``last`` argument where it has one (``transfers``: 20 when
neither is given; ``auditLog``: 50), else the estimate in ``LIST_SIZES``.
So ``transfers(first: 100) { edges { node { id amount } } }`` costs
1 + 100 × (1 + 1 + 2) = 401.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
)
from strawberry.extensions import SchemaExtension

from ferry import metrics
from gateway.errors import UserError

#: Estimated sizes of lists without a page argument.
LIST_SIZES = {
    "history": 10,
    "chains": 10,
    "routes": 20,
    "tokens": 10,
    "deployments": 10,
    "volume": 10,
    "transferBySourceTx": 10,
}
#: Sizes of paged lists when the query gives no first/last.
DEFAULT_PAGE = {"transfers": 20, "auditLog": 50}
_INTROSPECTION_FIELDS = frozenset({"__schema", "__type"})


class LimitExceeded(UserError):
    """An operation over a configured limit; refused before it runs."""


@dataclass
class OperationShape:
    """What the walk found: the deepest nesting, the cost bound, aliases, introspection."""

    depth: int = 0
    cost: int = 0
    aliases: int = 0
    introspection: bool = False
    _seen_fragments: set[str] = field(default_factory=set)


def measure(
    operation: OperationDefinitionNode,
    fragments: dict[str, FragmentDefinitionNode],
    variables: dict[str, Any],
) -> OperationShape:
    shape = OperationShape()
    _walk(operation.selection_set, fragments, variables, shape, depth=1, multiplier=1)
    return shape


def _fields(
    selections: SelectionSetNode, fragments: dict[str, FragmentDefinitionNode], shape: OperationShape
) -> Iterator[FieldNode]:
    for selection in selections.selections:
        if isinstance(selection, FieldNode):
            yield selection
        elif isinstance(selection, InlineFragmentNode):
            yield from _fields(selection.selection_set, fragments, shape)
        elif isinstance(selection, FragmentSpreadNode):
            fragment = fragments.get(selection.name.value)
            if fragment is not None:
                yield from _fields(fragment.selection_set, fragments, shape)


def _walk(
    selections: SelectionSetNode,
    fragments: dict[str, FragmentDefinitionNode],
    variables: dict[str, Any],
    shape: OperationShape,
    depth: int,
    multiplier: int,
) -> None:
    shape.depth = max(shape.depth, depth)
    for node in _fields(selections, fragments, shape):
        name = node.name.value
        shape.cost += multiplier
        shape.aliases += node.alias is not None
        shape.introspection |= name in _INTROSPECTION_FIELDS
        if node.selection_set is not None and not name.startswith("__"):
            size = _list_size(node, variables)
            _walk(node.selection_set, fragments, variables, shape, depth + 1, multiplier * size)


def _list_size(node: FieldNode, variables: dict[str, Any]) -> int:
    name = node.name.value
    if name in DEFAULT_PAGE:
        for argument in node.arguments or ():
            if argument.name.value in ("first", "last"):
                value = argument.value
                if isinstance(value, IntValueNode):
                    return max(1, int(value.value))
                if isinstance(value, VariableNode) and isinstance(variables.get(value.name.value), int):
                    return max(1, int(variables[value.name.value]))
        return DEFAULT_PAGE[name]
    return LIST_SIZES.get(name, 1)


class QueryLimits(SchemaExtension):
    """Refuses an operation over the depth, cost or alias limit, or introspection when it is off."""

    def on_execute(self) -> Iterator[None]:
        context = self.execution_context
        document = context.graphql_document
        settings = getattr(getattr(context.context, "gateway", None), "settings", None)
        if document is not None and settings is not None:
            fragments = {
                d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
            }
            operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
            chosen = [
                op
                for op in operations
                if context.operation_name is None
                or (op.name is not None and op.name.value == context.operation_name)
            ]
            if chosen:
                _check(measure(chosen[0], fragments, context.variables or {}), settings)
        yield


def _check(shape: OperationShape, settings: Any) -> None:
    refusals = [
        (
            "introspection",
            shape.introspection and not settings.gateway_introspection,
            "introspection is turned off on this server; the schema is published as schema.graphql",
        ),
        (
            "depth",
            shape.depth > settings.gateway_max_depth,
            f"the query is nested {shape.depth} levels deep; the limit is {settings.gateway_max_depth}",
        ),
        (
            "cost",
            shape.cost > settings.gateway_max_cost,
            f"the query may cost {shape.cost} (fields × page sizes); the limit is "
            f"{settings.gateway_max_cost}: ask for smaller pages or fewer fields",
        ),
        (
            "aliases",
            shape.aliases > settings.gateway_max_aliases,
            f"the query uses {shape.aliases} aliases; the limit is {settings.gateway_max_aliases}",
        ),
    ]
    for limit, over, message in refusals:
        if over:
            metrics.QUERIES_REFUSED.labels(limit).inc()
            raise LimitExceeded(message)
