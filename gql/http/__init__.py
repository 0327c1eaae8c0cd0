"""The HTTP layer: what a request to ``/graphql`` passes through before and after Strawberry.

Request ids and transports (:mod:`.endpoint`), the door that checks size, CSRF and who is
asking (:mod:`.web`), the GraphQL-over-HTTP conventions (:mod:`.conventions`), Strawberry's
view with JobQL's keep-alives and WebSocket handlers (:mod:`.transports`, :mod:`.ws_handlers`),
GraphiQL and its assets (:mod:`.graphiql`), socket tuning and graceful shutdown. It may import
every layer below it (schema, services, ops, live, compat), and none imports it.
"""
