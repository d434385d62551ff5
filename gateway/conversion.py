"""Argument conversion compiled once per root field, with Strawberry's own as the reference.

Strawberry's ``convert_arguments`` turns graphql-core's coerced argument values into
what a resolver receives (input objects built as their Python classes, Python field
names, lists copied). It works that out from the types on every call: which wrapper a
type is, its definition, each field's GraphQL name and resolved type. For the list
query that was about a tenth of the gateway's CPU per request. ``compile_arguments``
does that walk once, for the argument types the planned roots (``gateway.roots``)
meet, and returns a function doing only the per-value work.

The same rules as ``strawberry.types.arguments.convert_argument`` (Strawberry
0.341): ``Optional`` passes ``None`` through; ``UNSET`` stays ``UNSET``; a list of
leaves is copied, a list of anything else converted item by item; a scalar or enum
value is graphql-core's already; an input object gets ``None`` for each field without
a default, then its converted given fields, by Python name. Anything else (``Maybe``,
``GlobalID``, input types with ``from_input``, lazy or unknown types) is handed to
Strawberry's ``convert_argument`` for that value, so behaviour never differs; a test
compares both on the schema's arguments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from strawberry.relay.types import GlobalID
from strawberry.scalars import is_scalar
from strawberry.types.arguments import StrawberryArgument, convert_argument
from strawberry.types.base import (
    StrawberryList,
    StrawberryMaybe,
    StrawberryOptional,
    StrawberryType,
    has_object_definition,
)
from strawberry.types.enum import StrawberryEnumDefinition, has_enum_definition
from strawberry.types.unset import UNSET

from gateway.schema import schema

Converter = Callable[[Any], Any]
ArgumentsConverter = Callable[[dict[str, Any]], dict[str, Any]]

_REGISTRY = schema.schema_converter.scalar_registry
_CONFIG = schema.config


def compile_arguments(arguments: list[StrawberryArgument]) -> ArgumentsConverter:
    """A function equal to Strawberry's ``convert_arguments`` for ``arguments``."""
    plan = [
        (_CONFIG.name_converter.from_argument(argument), argument.python_name, _converter(argument.type))
        for argument in arguments
    ]

    def convert(values: dict[str, Any]) -> dict[str, Any]:
        return {python: convert_one(values[name]) for name, python, convert_one in plan if name in values}

    return convert


def _converter(type_: StrawberryType | type) -> Converter:
    if isinstance(type_, StrawberryOptional) and not isinstance(type_, StrawberryMaybe):
        return _converter(type_.of_type)
    if isinstance(type_, StrawberryList):
        if _is_leaf(type_.of_type):
            return lambda value: None if value is None or value is UNSET else list(value)
        item = _converter(type_.of_type)
        return lambda value: None if value is None or value is UNSET else [item(x) for x in value]
    if _is_leaf(type_):
        return lambda value: value
    if has_object_definition(type_):
        definition = type_.__strawberry_definition__
        if definition.is_input and definition.from_input is None:
            return _input_converter(type_)
    return _strawberry(type_)


def _input_converter(type_: Any) -> Converter:
    definition = type_.__strawberry_definition__
    defaults = {
        field.python_name: None
        for field in definition.fields
        if field.default_value is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    }
    fields = [
        (
            _CONFIG.name_converter.from_field(field),
            field.python_name,
            _converter(field.resolve_type(type_definition=definition)),
        )
        for field in definition.fields
    ]

    def convert(value: Any) -> Any:
        if value is None or value is UNSET:
            return value
        kwargs = dict(defaults)
        for name, python, convert_field in fields:
            if name in value:
                kwargs[python] = convert_field(value[name])
        return type_(**kwargs)

    return convert


def _is_leaf(type_: Any) -> bool:
    """Scalars and enums: graphql-core's coerced value is already the resolver's value."""
    if type_ is GlobalID:
        return False  # NOTE: Strawberry parses a GlobalID; its converter does that
    return (
        is_scalar(type_, _REGISTRY)
        or isinstance(type_, StrawberryEnumDefinition)
        or has_enum_definition(type_)
    )


def _strawberry(type_: Any) -> Converter:
    return lambda value: convert_argument(value, type_, _REGISTRY, _CONFIG)
