"""Errors a GraphQL client may see, and the rule that hides every other one.

A ``UserError`` is something the caller did and can fix (a malformed id, a page
too large, a subscription that fell behind): its message is shown as is.
GraphQL's own validation errors (unknown field, wrong argument type) carry no
original exception and are shown too. Anything else (a database error, a bug)
is replaced by a generic message so SQL, hostnames or secrets never reach a
client; the full error is logged on the server.
"""

from __future__ import annotations

import logging

from graphql import GraphQLError
from strawberry.extensions import MaskErrors

log = logging.getLogger(__name__)

MASKED_MESSAGE = "Internal error: the gateway could not answer. The details are in the gateway's log."


class UserError(Exception):
    """A problem with the request that the caller can fix; shown to them verbatim."""


class SubscriberTooSlow(UserError):
    """A subscriber fell too far behind the live changes and was cut off."""


def is_user_facing(error: GraphQLError) -> bool:
    """True when ``error`` is safe and useful to show to the client unchanged."""
    original = error.original_error
    if original is None:
        return True
    if isinstance(original, GraphQLError):
        return is_user_facing(original)
    return isinstance(original, UserError)


class MaskUnexpectedErrors(MaskErrors):
    """Strawberry's MaskErrors, keeping user-facing errors and hiding the rest."""

    def __init__(self) -> None:
        super().__init__(
            should_mask_error=lambda error: not is_user_facing(error), error_message=MASKED_MESSAGE
        )


def checked_text(value: str, argument: str, max_length: int = 200) -> str:
    """``value`` when it is text PostgreSQL can hold and not too long; UserError otherwise."""
    if "\x00" in value:
        raise UserError(f"{argument} must not contain NUL characters")
    if len(value) > max_length:
        raise UserError(f"{argument} is too long: at most {max_length} characters")
    return value
