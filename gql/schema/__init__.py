"""The GraphQL schema: the root types (:mod:`.root`), the contract's types and inputs, and the
resolvers of jobs, workflows, schedules and subscriptions.

Resolvers are thin: they turn arguments into calls on the services (``gql.services``) and
their answers into types. Below it: services, ops, live, compat; above it only HTTP.
"""
