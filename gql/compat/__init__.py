"""Where the API leans on libraries' internals, gathered so an upgrade has one package to review:
:mod:`.register` imports the private names and decides each use at start-up, and the modules
beside it are the uses themselves (graphql-core's executor, Strawberry's parser cache, redis-py's
command packing). The HTTP ones (uvicorn's protocols) stay in :mod:`gql.http.sockets` and take
their internals from :mod:`.register`.
"""
