"""What the API does, as plain async code the resolvers call: jobs, workflows, schedules,
webhooks, health and workers, who is asking (:mod:`.auth`), the limits, and the one error
vocabulary (:mod:`.errors`). Services know Redis, Celery's producer and the records of
:mod:`tasks.core`, and nothing of HTTP; of Strawberry they use only the types they return and a
few hooks (the errors' schema extension, ``DataLoader``), so every transport gets the same rules.
"""
