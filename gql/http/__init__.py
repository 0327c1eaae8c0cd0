"""The HTTP layer: one way into ``/graphql`` (:mod:`.pipeline`: request id, drain, size, CSRF,
over the headers read once in :mod:`.head`), then Strawberry's view (:mod:`.view`: the caller,
batches, persisted queries, admission, and the answer's status and media type by
:mod:`.responses`), checked WebSocket messages (:mod:`.ws_handlers`), GraphiQL (:mod:`.graphiql`),
socket tuning (:mod:`.sockets`) and graceful shutdown (:mod:`.drain`). It may import every layer
below it (schema, services, ops, live, compat), and none of them imports it.
"""
