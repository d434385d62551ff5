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

The walk depends on the document alone unless a page size comes from a variable,
so ``shape_of`` keeps each document's shape (an LRU keyed by the query text and
operation name): the same few documents arriving thousands of times a second are
walked once. Shapes, not verdicts, are kept: each request is still checked against
its server's settings.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from graphql import (
    DocumentNode,
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
#: Distinct (document, operation) shapes kept.
SHAPE_CACHE_SIZE = 1_024
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
    #: True when a page size came from a variable (the cost then differs per request).
    uses_variables: bool = False
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
            size = _list_size(node, variables, shape)
            _walk(node.selection_set, fragments, variables, shape, depth + 1, multiplier * size)


def _list_size(node: FieldNode, variables: dict[str, Any], shape: OperationShape) -> int:
    name = node.name.value
    if name in DEFAULT_PAGE:
        for argument in node.arguments or ():
            if argument.name.value in ("first", "last"):
                value = argument.value
                if isinstance(value, IntValueNode):
                    return max(1, int(value.value))
                if isinstance(value, VariableNode):
                    shape.uses_variables = True
                    if isinstance(variables.get(value.name.value), int):
                        return max(1, int(variables[value.name.value]))
        return DEFAULT_PAGE[name]
    return LIST_SIZES.get(name, 1)


_shapes: OrderedDict[tuple[str, str | None], OperationShape] = OrderedDict()


def shape_of(
    query: str | None, document: DocumentNode, operation_name: str | None, variables: dict[str, Any]
) -> OperationShape | None:
    """The shape of the operation ``operation_name`` chooses in ``document`` (None if none is chosen).

    Kept per (query text, operation name) unless its cost depends on ``variables``.
    """
    key = (query, operation_name) if query is not None else None
    if key is not None:
        shape = _shapes.get(key)
        if shape is not None:
            _shapes.move_to_end(key)
            return shape
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    chosen = [
        d
        for d in document.definitions
        if isinstance(d, OperationDefinitionNode)
        and (operation_name is None or (d.name is not None and d.name.value == operation_name))
    ]
    if not chosen:
        return None
    shape = measure(chosen[0], fragments, variables)
    if key is not None and not shape.uses_variables:
        _shapes[key] = shape
        if len(_shapes) > SHAPE_CACHE_SIZE:
            _shapes.popitem(last=False)
    return shape


class QueryLimits(SchemaExtension):
    """Refuses an operation over the depth, cost or alias limit, or introspection when it is off."""

    def on_execute(self) -> Iterator[None]:
        context = self.execution_context
        document = context.graphql_document
        settings = getattr(getattr(context.context, "gateway", None), "settings", None)
        if document is not None and settings is not None:
            shape = shape_of(context.query, document, context.operation_name, context.variables or {})
            if shape is not None:
                _check(shape, settings)
        yield


def refusal(shape: OperationShape, settings: Any) -> tuple[str, str] | None:
    """The first limit ``shape`` is over and the message that says so; None when it is within all."""
    if shape.introspection and not settings.gateway_introspection:
        return "introspection", (
            "introspection is turned off on this server; the schema is published as schema.graphql"
        )
    if shape.depth > settings.gateway_max_depth:
        return (
            "depth",
            f"the query is nested {shape.depth} levels deep; the limit is {settings.gateway_max_depth}",
        )
    if shape.cost > settings.gateway_max_cost:
        return "cost", (
            f"the query may cost {shape.cost} (fields × page sizes); the limit is "
            f"{settings.gateway_max_cost}: ask for smaller pages or fewer fields"
        )
    if shape.aliases > settings.gateway_max_aliases:
        return (
            "aliases",
            f"the query uses {shape.aliases} aliases; the limit is {settings.gateway_max_aliases}",
        )
    return None


def _check(shape: OperationShape, settings: Any) -> None:
    refused = refusal(shape, settings)
    if refused is not None:
        limit, message = refused
        metrics.QUERIES_REFUSED.labels(limit).inc()
        raise LimitExceeded(message)
