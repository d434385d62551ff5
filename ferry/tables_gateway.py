"""Tables owned by the gateway (its writer): defined here, migrated in migrations/versions/.

Imported by ferry/tables.py so Alembic and the schema check see them.
"""

from __future__ import annotations
