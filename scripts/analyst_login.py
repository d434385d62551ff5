"""Let the read-only analyst role log in (for Grafana's PostgreSQL datasource).

The migrations create ``ferry_analyst`` as a NOLOGIN role that can read the
``analytics`` views and nothing else. This script gives it a password and the
right to log in, from ``FERRY_ANALYST_PASSWORD`` (or the file named by
``FERRY_ANALYST_PASSWORD_FILE``), against ``FERRY_DATABASE_URL``. Run it after
``ferry migrate`` (the compose ``migrate`` job does). Idempotent.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psycopg
from psycopg import sql

ANALYST = "ferry_analyst"


def _password() -> str:
    path = os.environ.get("FERRY_ANALYST_PASSWORD_FILE")
    password = Path(path).read_text().strip() if path else os.environ.get("FERRY_ANALYST_PASSWORD", "")
    if len(password) < 12:
        sys.exit("set FERRY_ANALYST_PASSWORD (or _FILE) to a password of at least 12 characters")
    return password


def main() -> None:
    url = os.environ.get("FERRY_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if not url:
        sys.exit("set FERRY_DATABASE_URL to the database the migrations ran on")
    with psycopg.connect(url, autocommit=True) as conn:
        # NOTE: ALTER ROLE takes no bind parameters; the password goes in as a quoted literal.
        conn.execute(
            sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(
                sql.Identifier(ANALYST), sql.Literal(_password())
            )
        )
    print(f"{ANALYST} can log in")


if __name__ == "__main__":
    main()
