"""Every place the API leans on a library's internals, and nowhere else.

:mod:`.register` names each touch and checks it at start-up; the others are the touches
themselves (graphql-core's executor, Strawberry's parser cache, redis-py's command packing).
"""
