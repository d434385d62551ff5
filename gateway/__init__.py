"""Ferry gateway: the read-only GraphQL API over the bridge's database.

Strawberry on Starlette, served by uvicorn (``gateway.server.run``): queries for
transfers, chains, routes, tokens and stats; subscriptions fed by one LISTEN
connection per process (``gateway.changes``); admin mutations that write only
operator requests and the route pause flag (docs/graphql.md). Module map:

- ``server``: the process: GraphQL, health and metrics servers in one event loop.
- ``app``: the Starlette apps (``create_app`` for tests) and the health checks.
- ``context``: the shared resources (pool, change feed) and per-request loaders.
- ``schema`` / ``types`` / ``scalars``: the GraphQL contract (``schema.graphql``).
- ``resolvers``, ``inputs``, ``paging``, ``reads``, ``records``: transfer answers.
- ``catalog``, ``catalog_reads``: chains, routes, tokens, stats.
- ``changes``: live status changes, fanned out in memory to subscribers.
- ``subscriptions``: WebSocket protocol handlers: live changes encoded once per group of
  identical subscriptions and written to every socket, keep-alives, slow consumers closed.
- ``execution``: one GraphQL execution per replayed change shared by identical subscriptions.
- ``admin``, ``auth``, ``keys``: admin mutations, the audit log, credentials.
- ``limits``, ``protection``: depth/cost/alias limits, rate and size limits.
- ``errors``: which errors users see and which are masked.

The gateway never writes chain data; its read pool runs read-only transactions,
and admin writes go through a separate two-connection pool.
"""
