"""Development tools: ``make run``'s process supervisor and the embedded Valkey.

Tests and benchmarks start their services with these too. Nothing here ships in the
production image: it runs from a checkout, with the ``embedded`` extra installed.
"""
