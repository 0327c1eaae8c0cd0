"""A workflow as Celery's own canvas (``chain``, ``group``, ``chord``), so stock workers run it:
the API validates a workflow into a tree of :class:`Step`, :class:`Chain`, :class:`Group` and
:class:`Chord`, records every step, and turns the tree into signatures here. Celery passes a
step's result to the next one positionally while a typed task takes keyword input only, so each
step carries in ``WORKFLOW_KWARG`` its workflow's id and the field that receives that result (see
:func:`receive`). The send-only result backends a chord's sender needs are here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Celery, chain, chord, group
from celery.backends.redis import RedisBackend, SentinelBackend
from celery.canvas import Signature

from tasks.core.rabbitmq import priority

WORKFLOW_KWARG = "_jobql_workflow"


@dataclass(frozen=True, slots=True)
class Step:
    """One task of a workflow: a job with its own record."""

    job_id: str
    task: str
    kwargs: dict[str, Any]
    queue: str
    priority: int | None
    workflow_id: str
    receive: str | None = None  # the input field that gets the previous result
    path: tuple[str, ...] = ()  # the part of the previous result it gets


@dataclass(frozen=True, slots=True)
class Chain:
    items: list[Node]


@dataclass(frozen=True, slots=True)
class Group:
    items: list[Node]


@dataclass(frozen=True, slots=True)
class Chord:
    header: list[Node]
    body: Step


Node = Step | Chain | Group | Chord


def steps_of(node: Node) -> list[Step]:
    """Every step of the tree, in the order the client wrote them."""
    if isinstance(node, Step):
        return [node]
    if isinstance(node, Chord):
        return [*(s for item in node.header for s in steps_of(item)), node.body]
    return [s for item in node.items for s in steps_of(item)]


def shape_of(node: Node) -> dict[str, Any]:
    """The tree's shape with each step as its job id, for the workflow's record:
    ``{"step": id}``, ``{"chain": [...]}``, ``{"group": [...]}`` or
    ``{"chord": {"header": [...], "body": {"step": id}}}`` (a chord's header is a group's
    members; its body one step)."""
    if isinstance(node, Step):
        return {"step": node.job_id}
    if isinstance(node, Chord):
        header = [shape_of(item) for item in node.header]
        return {"chord": {"header": header, "body": shape_of(node.body)}}
    kind = "chain" if isinstance(node, Chain) else "group"
    return {kind: [shape_of(item) for item in node.items]}


def signature(app: Celery, node: Node) -> Signature:
    """The canvas of ``node``; a step that receives nothing ignores the previous result."""
    if isinstance(node, Chain):
        return chain(*(signature(app, item) for item in node.items), app=app)
    if isinstance(node, Group):
        return group(*(signature(app, item) for item in node.items), app=app)
    if isinstance(node, Chord):
        header = group(*(signature(app, item) for item in node.header), app=app)
        return chord(header, signature(app, node.body), app=app)
    meta = {"workflow": node.workflow_id, "receive": node.receive, "path": list(node.path)}
    options: dict[str, Any] = {"task_id": node.job_id, "queue": node.queue}
    mapped = priority(app.conf.broker_url, node.priority)
    if mapped is not None:
        options["priority"] = mapped
    return app.signature(
        node.task,
        kwargs={**node.kwargs, WORKFLOW_KWARG: meta},
        immutable=node.receive is None,
        **options,
    )


def workflow_of(kwargs: dict[str, Any]) -> str:
    """The workflow a run belongs to ('' for a job of its own)."""
    meta = kwargs.get(WORKFLOW_KWARG)
    return str(meta.get("workflow") or "") if isinstance(meta, dict) else ""


def receive(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """A run's input: ``kwargs`` without the workflow's metadata, plus the previous step's
    result (``args[0]``, as Celery passes it) under the field the step declared."""
    kwargs = dict(kwargs)
    meta = kwargs.pop(WORKFLOW_KWARG, None)
    if isinstance(meta, dict) and meta.get("receive") and args:
        value = args[0]
        for name in meta.get("path") or ():
            value = value.get(name) if isinstance(value, dict) else None
        kwargs[str(meta["receive"])] = value
    return kwargs


class _SendOnly:
    """Celery's Redis result backend for an app that only sends: a chord needs the result
    backend when it is applied, but a sender never waits for results, so it does not
    subscribe to each task's result channel (celery#3808: nothing would ever read them),
    nor track the results it returns: an ``AsyncResult`` freed on the API's event loop would
    otherwise unsubscribe over the network from its ``__del__``."""

    def on_task_call(self, producer: Any, task_id: str) -> dict[str, Any]:
        return {}

    def add_pending_result(
        self, result: Any, weak: bool = False, start_drainer: bool = True
    ) -> Any:
        return result

    def remove_pending_result(self, result: Any) -> Any:
        return result


class ProducerRedisBackend(_SendOnly, RedisBackend):  # type: ignore[misc]
    """The send-only backend on a plain or TLS Redis."""


class ProducerSentinelBackend(_SendOnly, SentinelBackend):  # type: ignore[misc]
    """The send-only backend on a Redis behind Sentinel."""
