"""Development tools: ``make run``'s process supervisor (``jobql dev``) and the embedded Valkey,
which the tests and the bench start their services with too. They ship in the package, but the
embedded Valkey needs the ``embedded`` extra, which the production image leaves out: production
points at a real Redis.
"""
