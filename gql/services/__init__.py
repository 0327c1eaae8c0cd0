"""What the API does, as plain async code the resolvers call: jobs, workflows, schedules,
webhooks, health and workers; who is asking (:mod:`.auth`), the limits, and the one error
vocabulary (:mod:`.errors`).

Services know Redis, Celery's producer and the records of ``tasks.core``; they know nothing of
HTTP or of Strawberry's types beyond the ones they return.
"""
