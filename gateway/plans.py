"""Precompiled selection plans: plain fields read straight into the response, skipping per-field work.

graphql-core executes every field of every object the same way: a resolve info,
a path, the resolver, then value completion (about 15 µs each in CPython). Most of
what frontends ask for on a transfer is plain data already on the object (``id``,
``status``, ``amount``, ``sender``, …): Strawberry's "basic" fields, whose resolver
only reads an attribute. A page of 20 transfers × 7 such fields was two thirds of
a request's CPU.

``PlannedExecution.execute_fields`` compiles each selection set (per parent type and
collected field set, memoised per operation) into a plan when *every* field in it is

- a basic field (Strawberry's default resolver, no field extensions), without
  arguments;
- of a leaf type (scalar or enum, serialised with the type's own
  ``coerce_output_value``), or of an object type (or a list of one) whose own
  selection is plannable in turn and that has no ``is_type_of`` check.

A plan reads the attributes and serialises them directly. Anything else (a
resolver, an argument, ``__typename``, an abstract type) is executed by
graphql-core as before. Whenever a planned read meets something it does not
expect (null in a non-null field, a value the scalar refuses, any exception), it
gives up on that whole selection and graphql-core executes it again, so errors,
their paths and null propagation are exactly graphql-core's: planned fields only
read attributes, so running them twice has no effect.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from enum import Enum
from typing import Any

from graphql import (
    FragmentSpreadNode,
    GraphQLEnumType,
    GraphQLID,
    GraphQLLeafType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLString,
    OperationDefinitionNode,
    is_leaf_type,
)
from graphql.execution.collect_fields import FragmentDetails
from graphql.pyutils import Path, Undefined

from gateway.execution import SharedEventExecution

#: What a plan reads for one response key: the attribute, and how to complete its value.
Reader = Callable[[Any], Any]
_DEFINITION = "strawberry-definition"


#: Selections whose plans are kept for every request (oldest dropped first).
MAX_SHARED_PLANS = 4_096
_SHARED_PLANS: OrderedDict[tuple[Any, ...], tuple[Any, Reader | None]] = OrderedDict()
_DIRECTIVE_FREE: OrderedDict[int, tuple[OperationDefinitionNode, bool]] = OrderedDict()


def _directive_free(operation: OperationDefinitionNode, fragments: dict[str, FragmentDetails]) -> bool:
    """True when no selection of ``operation`` (fragments included) carries a directive."""
    known = _DIRECTIVE_FREE.get(id(operation))
    if known is not None and known[0] is operation:
        return known[1]
    free = not any(
        getattr(node, "directives", None) for node in _selection_nodes(operation, fragments, set())
    )
    _DIRECTIVE_FREE[id(operation)] = (operation, free)
    if len(_DIRECTIVE_FREE) > MAX_SHARED_PLANS:
        _DIRECTIVE_FREE.popitem(last=False)
    return free


def _selection_nodes(node: Any, fragments: dict[str, FragmentDetails], seen: set[str]) -> Iterator[Any]:
    yield node
    if isinstance(node, FragmentSpreadNode):
        name = node.name.value
        fragment = fragments.get(name)
        if fragment is not None and name not in seen:
            seen.add(name)
            yield from _selection_nodes(fragment.definition, fragments, seen)
        return
    selection_set = getattr(node, "selection_set", None)
    for selection in selection_set.selections if selection_set is not None else ():
        yield from _selection_nodes(selection, fragments, seen)


class _GiveUp(Exception):
    """A planned read met something only graphql-core's full path handles correctly."""


class PlannedExecution(SharedEventExecution):
    """graphql-core's executor (with shared subscription events), running plannable selections as plans."""

    _plans: dict[int, tuple[Any, Reader | None]]

    def execute_fields(
        self,
        parent_type: GraphQLObjectType,
        source_value: Any,
        path: Path | None,
        grouped_field_set: Any,
        position_context: Any,
    ) -> Any:
        plan = self._plan_for(parent_type, grouped_field_set)
        if plan is not None:
            try:
                return plan(source_value)
            except _GiveUp:
                pass
            except Exception:  # noqa: S110 (graphql-core re-runs it and reports the error properly)
                pass
        return super().execute_fields(parent_type, source_value, path, grouped_field_set, position_context)

    def shares_plans(self) -> bool:
        """True when this operation's plans depend on its document alone (no directives, no middleware)."""
        no_middleware = self.middleware_manager is None or not self.middleware_manager.middlewares
        return no_middleware and _directive_free(self.operation, self.fragments)

    def value_reader(self, return_type: GraphQLOutputType, field_details_list: Any) -> Reader | None:
        """The plan that completes a field of ``return_type`` selected by ``field_details_list``
        (None when some part of it is not plannable); used by ``gateway.roots`` for root fields."""
        return self._completer(return_type, field_details_list)

    def _plan_for(self, parent_type: GraphQLObjectType, grouped_field_set: Any) -> Reader | None:
        try:
            plans = self._plans
        except AttributeError:
            plans = self._plans = {}
        # NOTE: keyed by identity, like graphql-core's own memo of collected fields; the
        # field set is kept in the entry so its id cannot be reused while we hold it.
        key = id(grouped_field_set)
        entry = plans.get(key)
        if entry is None or entry[0] is not grouped_field_set:
            entry = (grouped_field_set, self._shared_plan(parent_type, grouped_field_set))
            plans[key] = entry
        return entry[1]

    def _shared_plan(self, parent_type: GraphQLObjectType, grouped_field_set: Any) -> Reader | None:
        """The plan for this selection from the process-wide cache, compiled on first use.

        Shared only for operations without directives: then the collected fields (and so
        the plan) depend on the document alone, never on a request's variables.
        """
        if not _directive_free(self.operation, self.fragments):
            return self._compile(parent_type, grouped_field_set)
        # NOTE: the field nodes' ids identify the selection; the entry keeps the nodes (in
        # the field set) alive, so no other document's nodes can take those ids meanwhile.
        key = (
            parent_type.name,
            tuple(
                (name, *(id(details.node) for details in fields))
                for name, fields in grouped_field_set.items()
            ),
        )
        shared = _SHARED_PLANS.get(key)
        if shared is None:
            shared = (grouped_field_set, self._compile(parent_type, grouped_field_set))
            _SHARED_PLANS[key] = shared
            if len(_SHARED_PLANS) > MAX_SHARED_PLANS:
                _SHARED_PLANS.popitem(last=False)
        return shared[1]

    def _compile(self, parent_type: GraphQLObjectType, grouped_field_set: Any) -> Reader | None:
        if self.middleware_manager is not None and self.middleware_manager.middlewares:
            return None
        readers: list[tuple[str, str, Reader]] = []
        for response_name, field_details_list in grouped_field_set.items():
            reader = self._field_reader(parent_type, field_details_list)
            if reader is None:
                return None
            readers.append((response_name, reader[0], reader[1]))
        return _object_reader(readers)

    def _field_reader(
        self, parent_type: GraphQLObjectType, field_details_list: Any
    ) -> tuple[str, Reader] | None:
        node = field_details_list[0].node
        if any(details.node.arguments for details in field_details_list):
            return None
        field_def = self.schema.get_field(parent_type, node.name.value)
        if field_def is None or field_def.args or not getattr(field_def.resolve, "_is_default", False):
            return None
        definition = (field_def.extensions or {}).get(_DEFINITION)
        if definition is None or getattr(definition, "extensions", None):
            return None
        complete = self._completer(field_def.type, field_details_list)
        return None if complete is None else (definition.python_name, complete)

    def _completer(self, return_type: GraphQLOutputType, field_details_list: Any) -> Reader | None:
        if isinstance(return_type, GraphQLNonNull):
            inner = self._completer(return_type.of_type, field_details_list)
            return None if inner is None else _non_null(inner)
        if isinstance(return_type, GraphQLList):
            item = self._completer(return_type.of_type, field_details_list)
            return None if item is None else _list_of(item)
        if is_leaf_type(return_type):
            return _leaf(return_type)
        if isinstance(return_type, GraphQLObjectType) and return_type.is_type_of is None:
            grouped_field_set = self.collect_subfields(return_type, field_details_list)[0]
            return self._plan_for(return_type, grouped_field_set)
        return None


def _object_reader(readers: Iterable[tuple[str, str, Reader]]) -> Reader:
    steps = tuple(readers)

    def read(source: Any) -> Any:
        if source is None:
            return None
        return {key: complete(getattr(source, attribute)) for key, attribute, complete in steps}

    return read


def _non_null(inner: Reader) -> Reader:
    def read(value: Any) -> Any:
        completed = inner(value)
        if completed is None:
            raise _GiveUp
        return completed

    return read


def _list_of(item: Reader) -> Reader:
    def read(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str | bytes | dict) or not isinstance(value, list | tuple):
            raise _GiveUp
        return [item(element) for element in value]

    return read


def _leaf(leaf_type: GraphQLLeafType) -> Reader:
    coerce = leaf_type.coerce_output_value
    # NOTE: the two leaf types of nearly every planned field, read without a call:
    # String and ID send a str unchanged; a Strawberry enum sends its member's name.
    as_is = str if leaf_type in (GraphQLString, GraphQLID) else None
    names = _enum_names(leaf_type)

    def read(value: Any) -> Any:
        if value is None:
            return None
        if type(value) is as_is:
            return value
        if names is not None:
            name = names.get(value)
            if name is not None:
                return name
        if hasattr(value, "__await__"):
            raise _GiveUp
        coerced = coerce(value)
        if coerced is None or coerced is Undefined:
            raise _GiveUp
        return coerced

    return read


def _enum_names(leaf_type: GraphQLLeafType) -> dict[Any, str] | None:
    """Each member of a Strawberry enum's Python class and its GraphQL name (None for other leaves)."""
    wrapped = getattr(leaf_type, "wrapped_cls", None)
    if (
        not isinstance(leaf_type, GraphQLEnumType)
        or not isinstance(wrapped, type)
        or not issubclass(wrapped, Enum)
    ):
        return None
    by_value = {value.value: name for name, value in leaf_type.values.items()}
    return {member: by_value[member.value] for member in wrapped if member.value in by_value}
