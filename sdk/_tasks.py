"""Tasks: typed functions that are submitted as jobs of their kind and run by workers.

    tasks = Tasks()

    @tasks.task("email.send", queue="emails")
    async def send_email(to: str, subject: str, body: str = "") -> dict[str, str]: ...

    await send_email.submit(producer, to="ada@example.com", subject="hi")  # a job of kind "email.send"
    WorkerRunner(worker, handlers=tasks.handlers)                          # runs it

The function's signature is the job's payload schema: a msgspec Struct is built from it once,
the arguments of a submit are checked against it before anything is sent, and the worker
decodes the payload into it, so a payload that does not fit fails its job for good (`Cancel`)
instead of being retried.
"""

from __future__ import annotations

import copy
import functools
import inspect
import typing
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, Generic, ParamSpec, TypeVar, overload

import msgspec

from core.wire import Job, JobSubmit

from ._errors import Cancel
from ._outcome import Handler
from ._producer import ProducerClient
from ._sync import SyncProducerClient

P = ParamSpec("P")
R = TypeVar("R")

_MUTABLE = (list, dict, set, bytearray)


class _Schema:
    """A function's parameters as a msgspec Struct, and the way back to a call."""

    def __init__(self, kind: str, fn: Callable[..., Any]) -> None:
        self.kind = kind
        self.signature = inspect.signature(fn)
        try:
            hints = typing.get_type_hints(fn, include_extras=True)
        except NameError as exc:
            raise TypeError(f"task {kind!r}: cannot resolve the annotations of {fn.__qualname__}: {exc}") from None
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        self.positional_only: list[str] = []
        self.keywords: list[str] = []
        for p in self.signature.parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"task {kind!r}: *args and **kwargs cannot be a job's payload; name every parameter")
            (self.positional_only if p.kind is p.POSITIONAL_ONLY else self.keywords).append(p.name)
            annotation = hints.get(p.name, Any)
            if p.default is p.empty:
                fields.append((p.name, annotation))
            elif isinstance(p.default, _MUTABLE) and p.default:
                fields.append(
                    (p.name, annotation, msgspec.field(default_factory=functools.partial(copy.deepcopy, p.default)))
                )
            else:
                fields.append((p.name, annotation, p.default))
        try:
            self.struct: type[msgspec.Struct] = msgspec.defstruct(
                f"{fn.__name__}_arguments",
                fields,
                kw_only=True,
                frozen=True,
                forbid_unknown_fields=True,
                module=fn.__module__,
            )
            # A type msgspec cannot decode from JSON (one that would need a dec_hook) has no
            # schema either: refused here rather than at the first job.
            msgspec.json.schema(self.struct)
        except TypeError as exc:
            raise TypeError(f"task {kind!r}: its parameters cannot be a JSON payload: {exc}") from None

    def payload(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The arguments of a call, checked and as the JSON object the worker will decode."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"task {self.kind!r}: {exc}") from None
        try:
            value = msgspec.convert(bound.arguments, self.struct)
        except msgspec.ValidationError as exc:
            raise TypeError(f"task {self.kind!r}: {exc}") from None
        try:
            payload: dict[str, Any] = msgspec.to_builtins(value)
        except TypeError as exc:  # a value under an `Any` that JSON cannot carry
            raise TypeError(f"task {self.kind!r}: {exc}") from None
        return payload

    def call_args(self, payload: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """A job's payload as the function's arguments; Cancel when it does not fit them."""
        try:
            value = msgspec.convert(payload, self.struct)
        except msgspec.ValidationError as exc:
            raise Cancel(f"task {self.kind!r}: the payload does not match the function's parameters: {exc}") from None
        return [getattr(value, n) for n in self.positional_only], {n: getattr(value, n) for n in self.keywords}


class Task(Generic[P, R]):
    """A function registered as the task of one job kind. Calling it runs the function here;
    `submit` sends it as a job; `handler` is what a worker runs for jobs of its kind."""

    __name__: str  # the function's, as functools.update_wrapper copies them
    __qualname__: str

    def __init__(self, kind: str, fn: Callable[P, R], schema: _Schema, template: JobSubmit) -> None:
        self.kind = kind
        self.fn = fn
        self._schema = schema
        self._template = template
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.kind!r} {self.fn.__qualname__}>"

    def payload(self, *args: P.args, **kwargs: P.kwargs) -> dict[str, Any]:
        """The job payload of these arguments; TypeError when they do not fit the signature."""
        return self._schema.payload(args, kwargs)

    def job(self, *args: P.args, **kwargs: P.kwargs) -> JobSubmit:
        """The submission of these arguments, for `submit_many`; TypeError when they do not fit."""
        return msgspec.structs.replace(self._template, payload=self._schema.payload(args, kwargs))

    @overload
    def submit(self, client: SyncProducerClient, /, *args: P.args, **kwargs: P.kwargs) -> Job: ...

    @overload
    def submit(self, client: ProducerClient, /, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, Job]: ...

    def submit(
        self, client: ProducerClient | SyncProducerClient, /, *args: P.args, **kwargs: P.kwargs
    ) -> Job | Coroutine[Any, Any, Job]:
        """Submit a job of this kind with these arguments: awaitable with a `ProducerClient`,
        blocking with a `SyncProducerClient`. The arguments are checked first (TypeError)."""
        return client.submit_job(self.job(*args, **kwargs))

    def with_options(
        self,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
        run_at: datetime | None = None,
        delay_ms: int | None = None,
        timeout_seconds: int | None = None,
        retry_base_ms: int | None = None,
        retry_cap_ms: int | None = None,
    ) -> Task[P, R]:
        """This task with other job options (None keeps the current one), e.g.
        `send_email.with_options(idempotency_key=f"welcome-{user}").submit(producer, ...)`."""
        given = {
            "queue": queue,
            "priority": priority,
            "max_attempts": max_attempts,
            "idempotency_key": idempotency_key,
            "run_at": run_at,
            "delay_ms": delay_ms,
            "timeout_seconds": timeout_seconds,
            "retry_base_ms": retry_base_ms,
            "retry_cap_ms": retry_cap_ms,
        }
        template = msgspec.structs.replace(self._template, **{k: v for k, v in given.items() if v is not None})
        return Task(self.kind, self.fn, self._schema, template)

    @functools.cached_property
    def handler(self) -> Handler:
        """The worker's handler for this kind: decodes the payload into the arguments and calls
        the function (a coroutine function on the loop, a plain one in the runner's threads)."""
        schema, fn = self._schema, self.fn
        if inspect.iscoroutinefunction(fn):

            async def run_async(payload: dict[str, Any]) -> Any:
                args, kwargs = schema.call_args(payload)
                return await fn(*args, **kwargs)

            return run_async

        def run(payload: dict[str, Any]) -> Any:
            args, kwargs = schema.call_args(payload)
            return fn(*args, **kwargs)

        return run


class Tasks:
    """A registry of tasks by job kind, shared by the producers that submit them and the
    workers that run them (`WorkerRunner(client, handlers=tasks.handlers)`)."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task[Any, Any]] = {}

    def task(
        self,
        kind: str,
        *,
        queue: str = "default",
        priority: int = 0,
        max_attempts: int | None = None,
        timeout_seconds: int | None = None,
        retry_base_ms: int | None = None,
        retry_cap_ms: int | None = None,
    ) -> Callable[[Callable[P, R]], Task[P, R]]:
        """Decorator: register the function as the task of job kind `kind`, with the job
        options its submits use unless `with_options` says otherwise."""
        if kind in self._tasks:
            raise ValueError(f"a task of kind {kind!r} is already registered")
        template = JobSubmit(
            kind=kind,
            queue=queue,
            priority=priority,
            max_attempts=max_attempts,
            timeout_seconds=timeout_seconds,
            retry_base_ms=retry_base_ms,
            retry_cap_ms=retry_cap_ms,
        )

        def register(fn: Callable[P, R]) -> Task[P, R]:
            if kind in self._tasks:
                raise ValueError(f"a task of kind {kind!r} is already registered")
            task = Task(kind, fn, _Schema(kind, fn), template)
            self._tasks[kind] = task
            return task

        return register

    def __getitem__(self, kind: str) -> Task[Any, Any]:
        return self._tasks[kind]

    def __contains__(self, kind: object) -> bool:
        return kind in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def handlers(self) -> dict[str, Handler]:
        """`{kind: handler}` for `WorkerRunner(handlers=...)`, `orchestrator worker` and `sdk.testing`."""
        return {kind: task.handler for kind, task in self._tasks.items()}
