"""Who is calling: bearer JWTs (HS256 or RS256) and API keys, and the role each carries.

- ``Authorization: Bearer <token>`` over HTTP; over WebSocket the same value in the
  ``connection_init`` payload (``{"Authorization": "Bearer ..."}``).
- A token with two dots is a JWT. It must be signed with the configured HS256
  secret (``FERRY_GATEWAY_JWT_SECRET``) or RS256 public key
  (``FERRY_GATEWAY_JWT_PUBLIC_KEY``), carry ``sub``, ``role``, ``iat`` and ``exp``,
  and live no longer than ``gateway_jwt_max_lifetime`` (15 minutes by default):
  a long-lived token is refused even if its signature is good.
- Anything else is an API key (``fk_`` + 43 url-safe characters). Only its SHA-256
  is stored (``gateway_api_keys``); ``create_api_key`` makes one and returns the
  plain key once.
- Roles: ``operator`` reads the audit log; ``admin`` also runs admin mutations.

Errors never echo the token, and say what to send instead.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

import asyncpg
import jwt

from ferry.settings import Settings
from gateway.errors import UserError

ROLES = ("operator", "admin")
API_KEY_PREFIX = "fk_"
_LEEWAY_SECONDS = 5


class AuthenticationError(UserError):
    """No credentials, or credentials that are not valid."""


class ForbiddenError(UserError):
    """Valid credentials whose role may not do this."""


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: ``actor`` is the JWT subject or the API key's name."""

    actor: str
    role: str

    def require(self, role: str) -> None:
        if role == "admin" and self.role != "admin":
            raise ForbiddenError(
                f"this needs the admin role; the credentials of {self.actor!r} carry {self.role}"
            )


def bearer(header: str | None) -> str:
    """The token in an Authorization header value; AuthenticationError if there is none."""
    if not header:
        raise AuthenticationError(
            "authentication required: send 'Authorization: Bearer <JWT or API key>' "
            "(over WebSocket, in the connection_init payload)"
        )
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("the Authorization header must be 'Bearer <JWT or API key>'")
    return token.strip()


async def authenticate(settings: Settings, pool: asyncpg.Pool, token: str) -> Principal:
    if token.count(".") == 2:
        return verify_jwt(settings, token)
    return await verify_api_key(pool, token)


def verify_jwt(settings: Settings, token: str) -> Principal:
    keys: list[tuple[str, Any]] = []
    if settings.gateway_jwt_secret is not None:
        keys.append(("HS256", settings.gateway_jwt_secret.get_secret_value()))
    if settings.gateway_jwt_public_key:
        keys.append(("RS256", settings.gateway_jwt_public_key))
    if not keys:
        raise AuthenticationError("this gateway accepts no JWTs (no key is configured): use an API key")
    try:
        algorithm = str(jwt.get_unverified_header(token).get("alg"))
        key = dict(keys).get(algorithm)
        if key is None:
            raise AuthenticationError(f"JWTs must be signed with {' or '.join(dict(keys))}")
        claims = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            leeway=_LEEWAY_SECONDS,
            options={"require": ["exp", "iat", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise AuthenticationError("the JWT has expired: get a new one") from None
    except jwt.InvalidTokenError as exc:
        raise AuthenticationError(f"the JWT is not valid ({type(exc).__name__}): get a new one") from None
    if claims["exp"] - claims["iat"] > settings.gateway_jwt_max_lifetime:
        raise AuthenticationError(
            f"the JWT lives longer than {settings.gateway_jwt_max_lifetime} s: issue shorter-lived tokens"
        )
    role = claims.get("role")
    if role not in ROLES:
        raise ForbiddenError(f"the JWT's role claim must be one of {', '.join(ROLES)}")
    return Principal(actor=str(claims["sub"]), role=str(role))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def verify_api_key(pool: asyncpg.Pool, key: str) -> Principal:
    if not key.startswith(API_KEY_PREFIX) or len(key) > 200:
        raise AuthenticationError("the bearer token is neither a JWT nor a Ferry API key (fk_...)")
    row = await pool.fetchrow(
        "SELECT name, role FROM gateway_api_keys WHERE key_hash = $1 AND revoked_at IS NULL", hash_key(key)
    )
    if row is None:
        raise AuthenticationError("the API key is unknown or revoked")
    return Principal(actor=f"key:{row['name']}", role=row["role"])


async def create_api_key(conn: asyncpg.Connection | asyncpg.Pool, name: str, role: str) -> str:
    """Store a new API key (its hash) for ``name`` with ``role``; returns the plain key, shown once."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    await conn.execute(
        "INSERT INTO gateway_api_keys (name, key_hash, role) VALUES ($1, $2, $3)", name, hash_key(key), role
    )
    return key


async def revoke_api_key(conn: asyncpg.Connection | asyncpg.Pool, name: str) -> bool:
    done: str = await conn.execute(
        "UPDATE gateway_api_keys SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL", name
    )
    return done.endswith(" 1")
