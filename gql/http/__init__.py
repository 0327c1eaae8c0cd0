"""The HTTP layer, what a request to ``/graphql`` passes through before and after Strawberry:
request ids and transports (:mod:`.endpoint`), size, CSRF and authentication (:mod:`.web`), the
GraphQL-over-HTTP conventions (:mod:`.conventions`), Strawberry's view with keep-alives and
checked WebSocket messages (:mod:`.transports`, :mod:`.ws_handlers`), GraphiQL
(:mod:`.graphiql`), socket tuning (:mod:`.sockets`) and graceful shutdown (:mod:`.drain`). It may
import every layer below it (schema, services, ops, live, compat), and none of them imports it.
"""
