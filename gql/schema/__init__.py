"""The GraphQL schema: the root types (:mod:`.root`), the contract's types and inputs, and the
resolvers of jobs, workflows, schedules and subscriptions. Resolvers stay thin, turning arguments
into calls on :mod:`gql.services` and answers into types, so the rules live in one place that
every transport and the blocking enqueue share. Below the schema are services, ops, live and
compat; above it, only HTTP.
"""
