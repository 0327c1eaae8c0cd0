"""Live events: one self-healing pub/sub connection per process (:mod:`.pubsub`, or one per
primary on a Redis Cluster, :mod:`.shards`), fanned out to this process's subscribers
(:mod:`.broadcast`). It imports nothing else of the API.
"""
