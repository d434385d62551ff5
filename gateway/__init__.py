"""Ferry gateway: the read-only GraphQL API over the bridge's database.

Strawberry on Starlette, served by uvicorn (``gateway.server.run``): queries for
transfers, and a ``transferUpdated`` subscription fed by one LISTEN connection
per process (``gateway.changes``). Module map:

- ``server``: the process: GraphQL, health and metrics servers in one event loop.
- ``app``: the Starlette apps (``create_app`` for tests) and the health checks.
- ``context``: the shared resources (pool, change feed) and per-request loaders.
- ``schema`` / ``types`` / ``scalars``: the GraphQL contract (``schema.graphql``).
- ``resolvers``, ``paging``, ``reads``, ``records``: how answers are found.
- ``changes``: live status changes, fanned out in memory to subscribers.
- ``errors``: which errors users see and which are masked.

The gateway never writes chain data; its read pool runs read-only transactions.
"""
