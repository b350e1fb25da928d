"""The HTTP API of `guard serve` (a Starlette app; `guard.cli.serve` runs it under uvicorn).

Endpoints:

    GET  /livez       200 while the process answers (liveness)
    GET  /healthz     200 once the model is loaded and warmed up, else 503 (readiness)
    GET  /readyz      the same as /healthz
    POST /v1/check    {"action": str, "tool": str?, "arguments": obj?, "images": [b64, ...],
                       "id": str?, "deadline_ms": number?}  ->  the decision JSON
    POST /v1/judge    {"system": str, "user": str, "images": [b64 PNG], "max_new_tokens": int,
                       "rationale": str, "deadline_ms": number?}  ->  {"text", "verdict_probs",
                       "n_tokens", "timings_ms", "model"}: the model's answer to a prompt a
                       client guard rendered (the `server` backend); the client decides

`/healthz` also names the model, template, action format and image grid the server judges
with, so a client guard on the `server` backend renders and resizes as this one does.

`images` are base64 PNG/JPEG (a ``data:`` URL prefix is accepted), oldest first, each stamped
with its arrival time. `deadline_ms` can only shorten the policy's deadline; the deadline runs
from the request's arrival, so time spent waiting for a batch counts. The proposal is
``{"name": tool or "action", "description": action, "arguments": arguments}``, as `guard check`
builds it, so both print the same decision for the same input.

Status codes of `POST /v1/check` (one rule: a decision in the body means the guard judged or
refused the request, and every such decision is in the audit log):

    200  a decision from the core, whatever its verdict or status (a timeout, a bad image or
         a blank tool name is an audited veto with status timeout / invalid_input)
    503  an audited veto with status error when the server could not take the request: the
         queue is full (``overloaded``, with Retry-After) or the model is not loaded yet
    500  an audited veto with status error: a fault of the server itself
    401  no or wrong bearer token (when one is set); 413 body over the size limit;
    400  body not a JSON object (a name given twice and NaN / Infinity are not JSON: readers
         disagree on them); 422 fields of the wrong type, or more than 16 images (no check
         judges more); each with {"error": one line} and no decision (nothing was proposed)

`POST /v1/judge` answers 200 with the answer, or {"error": one line} with 503 (queue full or
not ready), 504 (its deadline passed), 502 (the model failed), 4xx as above; the client's
guard turns each of those into its own audited veto.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures as cf
import contextlib
import dataclasses
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import anyio
import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from guard.backends import ChatPrompt, JudgeOutput, JudgeRequest
from guard.config import MAX_FRAMES, GuardConfig
from guard.core import BatchItem, Guard, unjudged
from guard.errors import BackendError, BackendTimeout, InvalidInputError
from guard.imaging import backend_grid, decode_image_bytes
from guard.types import Decision, Frame, Status
from guard.wire import loads_json

log = logging.getLogger("guard.serve")

#: A guard factory: builds (loads and warms up) the Guard the server judges with.
GuardFactory = Callable[[], Guard]


@dataclass(frozen=True)
class ServeOptions:
    """How the server takes requests.

    Attributes:
        queue_size: Requests that may wait for the model; one more is a fast `overloaded`
            veto (HTTP 503). The batch being judged is not counted.
        max_batch: The most waiting requests judged in one batch.
        max_body_bytes: A larger request body is refused (HTTP 413).
        token: The bearer token every `POST /v1/check` must carry; None: no token.
    """

    queue_size: int = 64
    max_batch: int = 16
    max_body_bytes: int = 32 * 1024 * 1024
    token: str | None = None

    def __post_init__(self) -> None:
        for name in ("queue_size", "max_batch", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)}: must be at least 1")
        if self.token is not None and not self.token.strip():
            raise ValueError("the bearer token is empty")


class CheckBody(BaseModel):
    """The body of `POST /v1/check`. Strict: JSON's own types only (pydantic's lax mode read
    ``"deadline_ms": true`` as 1 ms and ``"5"`` as 5 ms)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    action: str
    tool: str | None = None
    arguments: dict[str, Any] = Field(default_factory=dict)
    # No more than any check judges: each image is decoded before the deadline is consulted
    # (100 000 one-pixel PNGs, 9 MB, held a worker for 10 s).
    images: list[str] = Field(default_factory=list, max_length=MAX_FRAMES)
    id: str | None = None
    deadline_ms: float | None = Field(default=None, gt=0, allow_inf_nan=False)

    def proposal(self) -> dict[str, Any]:
        """The proposal `guard check` builds from the same input."""
        out: dict[str, Any] = {"name": "action" if self.tool is None else self.tool,
                               "description": self.action, "arguments": self.arguments}
        if self.id is not None:
            out["id"] = self.id
        return out


class JudgeBody(BaseModel):
    """The body of `POST /v1/judge`: a prompt a client guard rendered, frames it resized
    (strict, as `CheckBody`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    system: str = ""
    user: str
    # No more than any check judges: each image is decoded before the deadline is consulted
    # (100 000 one-pixel PNGs, 9 MB, held a worker for 10 s).
    images: list[str] = Field(default_factory=list, max_length=MAX_FRAMES)
    max_new_tokens: int = Field(default=128, ge=1, le=8192)
    rationale: Literal["sync", "async", "off"] = "sync"
    deadline_ms: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class QueueFull(Exception):
    """No room to wait for the model."""


class Expired(Exception):
    """The request's deadline passed while it was still waiting for a batch."""


@dataclass
class _Pending:
    item: BatchItem | JudgeRequest
    future: asyncio.Future[Any]
    taken: bool = False
    abandoned: bool = False


@dataclass
class Batcher:
    """A bounded queue in front of the guard: whatever waits when the model frees up is
    judged as one batch (`Guard.check_batch` for checks, the backend's batch path for a
    client guard's prompts), on worker threads."""

    guard: Guard
    queue_size: int
    max_batch: int
    _queue: asyncio.Queue[_Pending] = field(init=False)
    _pool: cf.ThreadPoolExecutor = field(init=False)
    batches: int = 0

    def __post_init__(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.queue_size)
        self._pool = cf.ThreadPoolExecutor(self.max_batch, thread_name_prefix="guard-serve")

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    async def submit(self, item: BatchItem | JudgeRequest, deadline: float) -> Any:
        """The decision for a check (`BatchItem`), or the answer (a `JudgeOutput`, or the
        exception that stands for it) to a prompt (`JudgeRequest`).

        Raises:
            QueueFull: The queue is full (at once: back-pressure, never a wait).
            Expired: `deadline` (monotonic) passed before a batch took the item; it will
                not be judged.
        """
        pending = _Pending(item, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            raise QueueFull from None
        try:
            return await asyncio.wait_for(asyncio.shield(pending.future),
                                          timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            if pending.taken:  # being judged: answered by this item's deadline
                return await pending.future
            pending.abandoned = True
            raise Expired from None

    async def run(self) -> None:
        """Judge batches until cancelled."""
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch = [p for p in batch if not p.abandoned]
            for p in batch:
                p.taken = True
            checks = [p for p in batch if isinstance(p.item, BatchItem)]
            prompts = [p for p in batch if not isinstance(p.item, BatchItem)]
            if checks:
                self.batches += 1
                await self._settle(checks, self.guard.check_batch, [p.item for p in checks])
            if prompts:
                self.batches += 1
                await self._settle(prompts, self.answer, [p.item for p in prompts])

    async def _settle(self, batch: list[_Pending], fn: Callable[[Any], list[Any]],
                      items: list[Any]) -> None:
        work = asyncio.ensure_future(anyio.to_thread.run_sync(fn, items))
        try:
            results = await asyncio.shield(work)
        except asyncio.CancelledError:
            # Shutting down with a batch in flight: its decisions are made and audited, so
            # its clients still get them before the server stops.
            with contextlib.suppress(BaseException):
                self._deliver(batch, await work)
            self._deliver(batch, [RuntimeError("the server is shutting down")] * len(batch))
            raise
        except Exception as exc:  # neither raises for its input: a bug
            log.exception("batch failed")
            results = [exc] * len(batch)
        self._deliver(batch, results)

    @staticmethod
    def _deliver(batch: list[_Pending], results: list[Any]) -> None:
        for p, result in zip(batch, results, strict=True):
            if p.future.done():
                continue
            if isinstance(result, Exception) and not isinstance(p.item, JudgeRequest):
                p.future.set_exception(result)
            else:
                p.future.set_result(result)

    def answer(self, requests: Sequence[JudgeRequest]) -> list[JudgeOutput | BaseException]:
        """The backend's answers to prompts (one batch when it has a batch path), each
        waited for only until its own deadline."""
        backend = self.guard.backend
        batch_path = getattr(backend, "judge_batch", None)
        deadlines = [r.deadline if r.deadline is not None else time.monotonic() + 60.0
                     for r in requests]
        if batch_path is not None and len(requests) > 1:
            latest = max(deadlines)
            rows = [dataclasses.replace(r, deadline=latest) for r in requests]
            future = self._pool.submit(batch_path, rows)
            try:
                outs = future.result(timeout=max(0.0, latest - time.monotonic()))
                if not isinstance(outs, list) or len(outs) != len(rows):
                    raise BackendError(f"the batch path answered {len(outs)} for {len(rows)}")
            except cf.TimeoutError:
                return [BackendTimeout("no answer within the deadline")] * len(rows)
            except BaseException as exc:
                return [exc] * len(rows)
            now = time.monotonic()
            return [BackendTimeout("the answer came after the deadline") if now > d else o
                    for o, d in zip(outs, deadlines, strict=True)]
        futures = [self._pool.submit(backend.judge, r) for r in requests]
        out: list[JudgeOutput | BaseException] = []
        for f, d in zip(futures, deadlines, strict=True):
            try:
                out.append(f.result(timeout=max(0.0, d - time.monotonic())))
            except cf.TimeoutError:
                out.append(BackendTimeout("no answer within the deadline"))
            except BaseException as exc:
                out.append(exc)
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class ServerState:
    """What the app knows: the guard once loaded, or why it is not."""

    def __init__(self, config: GuardConfig, options: ServeOptions, factory: GuardFactory,
                 on_load_failure: Callable[[str], None] | None) -> None:
        self.config, self.options, self.factory = config, options, factory
        self.on_load_failure = on_load_failure
        self.guard: Guard | None = None
        self.batcher: Batcher | None = None
        self.error: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._load()))

    async def _load(self) -> None:
        try:
            guard = await anyio.to_thread.run_sync(self.factory)
        except Exception as exc:
            text = str(exc).strip().splitlines()
            self.error = f"model did not load: {text[0] if text else type(exc).__name__}"
            log.error("%s", self.error)
            if self.on_load_failure is not None:
                self.on_load_failure(self.error)
            return
        if self._closing:
            await anyio.to_thread.run_sync(guard.close)
            return
        self.batcher = Batcher(guard, self.options.queue_size, self.options.max_batch)
        self._tasks.append(asyncio.create_task(self.batcher.run()))
        self.guard = guard
        log.info("ready: %s", guard.backend.model_id)

    async def stop(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        if self.batcher is not None:
            self.batcher.close()
        if self.guard is not None:
            await anyio.to_thread.run_sync(self.guard.close)


def create_app(
    config: GuardConfig,
    options: ServeOptions | None = None,
    *,
    factory: GuardFactory | None = None,
    on_load_failure: Callable[[str], None] | None = None,
) -> Starlette:
    """The ASGI app. The guard is built (`factory`, default ``Guard(config)``) on a thread
    once the app starts, so probes answer while the model loads.

    Args:
        config: The guard's configuration (its audit log also takes the vetoes of requests
            that arrive before the model is loaded).
        options: Queue, batch, body limit and token.
        factory: Builds the guard; a test can pass one around a ready backend.
        on_load_failure: Called with one line when the guard could not be built.
    """
    opts = options or ServeOptions()
    state = ServerState(config, opts, factory or (lambda: Guard(config)), on_load_failure)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    async def livez(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def healthz(request: Request) -> Response:
        guard, batcher = state.guard, state.batcher
        if guard is None or batcher is None:
            body = ({"status": "failed", "error": state.error} if state.error
                    else {"status": "loading"})
            return JSONResponse(body, status_code=503)
        grid = backend_grid(guard.backend)
        return JSONResponse({
            "status": "ready", "model": guard.backend.model_id, "policy": guard.policy_id,
            "template": guard.template_name, "action_format": guard.action_format,
            "image_grid": dataclasses.asdict(grid) if grid is not None else None,
            "max_pixels": guard.config.image.max_pixels,
            "min_pixels": guard.config.image.min_pixels,
            "deadline_ms": guard.config.policy.deadline_ms, "waiting": batcher.waiting,
            "queue_size": opts.queue_size, "max_batch": opts.max_batch,
            "batches": batcher.batches,
        })

    async def admitted(request: Request, model: type[_Body]) -> _Body | Response:
        """The request's body as `model`, or the refusal (no decision): token, size, shape."""
        if not _authorized(request, opts.token):
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        try:
            body = await _read_body(request, opts.max_body_bytes)
            # On a worker thread: reading 32 MB of JSON takes a second, and the event loop
            # answers the probes and every other client meanwhile.
            return await anyio.to_thread.run_sync(_parse, body, model)
        except _Refused as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)

    async def check(request: Request) -> Response:
        entered = time.monotonic()
        req = await admitted(request, CheckBody)
        if isinstance(req, Response):
            return req
        proposal = req.proposal()
        guard, batcher = state.guard, state.batcher
        if guard is None or batcher is None:
            why = state.error or "the model is still loading"
            decision = await anyio.to_thread.run_sync(
                lambda: unjudged(Status.ERROR, f"not ready: {why}", audit=config.audit,
                                 proposal=proposal))
            return _decision(decision, 503, retry=True)
        frames = await anyio.to_thread.run_sync(_frames, req.images, guard.config)
        if isinstance(frames, str):  # an image that does not decode: the core's veto
            decision = await anyio.to_thread.run_sync(
                guard.reject, proposal, Status.INVALID_INPUT, frames)
            return _decision(decision, 200)
        limit_ms = min(guard.config.policy.deadline_ms, req.deadline_ms or float("inf"))
        item = BatchItem(frames, proposal, entered=entered, deadline_ms=req.deadline_ms)
        try:
            decision = await batcher.submit(item, entered + limit_ms / 1000.0)
        except QueueFull:
            decision = await anyio.to_thread.run_sync(
                guard.reject, proposal, Status.ERROR,
                f"overloaded: {opts.queue_size} requests already wait for the model")
            return _decision(decision, 503, retry=True)
        except Expired:
            decision = await anyio.to_thread.run_sync(
                guard.reject, proposal, Status.TIMEOUT,
                f"no answer within deadline_ms ({limit_ms:g}; still queued)")
            return _decision(decision, 200)
        except Exception as exc:
            decision = await anyio.to_thread.run_sync(
                guard.reject, proposal, Status.ERROR, f"internal error: {exc!r}")
            return _decision(decision, 500)
        return _decision(decision, 200)

    async def judge(request: Request) -> Response:
        entered = time.monotonic()
        body = await admitted(request, JudgeBody)
        if isinstance(body, Response):
            return body
        guard, batcher = state.guard, state.batcher
        if guard is None or batcher is None:
            why = state.error or "the model is still loading"
            return _error(503, f"not ready: {why}", retry=True)
        images = await anyio.to_thread.run_sync(_images, body.images, guard.config)
        if isinstance(images, str):
            return _error(422, images)
        limit_ms = min(guard.config.policy.deadline_ms, body.deadline_ms or float("inf"))
        deadline = entered + limit_ms / 1000.0
        judge_request = JudgeRequest(
            prompt=ChatPrompt(system=body.system, user=body.user, images=tuple(images)),
            max_new_tokens=min(body.max_new_tokens, guard.config.model.max_new_tokens),
            deadline=deadline,
            # A remote answer has no background rationale: async is answered in full.
            rationale="off" if body.rationale == "off" else "sync",
        )
        try:
            out = await batcher.submit(judge_request, deadline)
        except QueueFull:
            return _error(503, f"overloaded: {opts.queue_size} requests already wait for "
                          "the model", retry=True)
        except Expired:
            return _error(504, f"no answer within deadline_ms ({limit_ms:g}; still queued)")
        if isinstance(out, BackendTimeout):
            return _error(504, f"no answer within deadline_ms ({limit_ms:g}): {out}")
        if isinstance(out, BaseException):
            text = str(out) if isinstance(out, BackendError) else f"{type(out).__name__}: {out}"
            return _error(502, f"backend failed: {text}")
        return JSONResponse({"text": out.text, "verdict_probs": out.verdict_probs,
                             "n_tokens": out.n_tokens, "timings_ms": out.timings_ms,
                             "model": guard.backend.model_id})

    app = Starlette(
        routes=[
            Route("/livez", livez, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", healthz, methods=["GET"]),
            Route("/v1/check", check, methods=["POST"]),
            Route("/v1/judge", judge, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
    app.state.serve = state
    return app


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _authorized(request: Request, token: str | None) -> bool:
    if token is None:
        return True
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    # Constant time: the comparison does not tell how much of a guess was right.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode(), token.encode()
    )


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _Refused(413, f"request body is {declared} bytes, over the {limit} byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():  # a body without a length is cut off as it streams
        size += len(chunk)
        if size > limit:
            raise _Refused(413, f"request body is over the {limit} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


_Body = TypeVar("_Body", bound=BaseModel)


def _parse(body: bytes, model: type[_Body]) -> _Body:
    try:
        data = loads_json(body)
    except RecursionError:
        raise _Refused(400, "request body is nested too deep to read") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Refused(400, f"request body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _Refused(400, f"request body must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"])) or "body"
        if err["type"] == "extra_forbidden":
            raise _Refused(422, f"{where}: unknown field") from None
        raise _Refused(422, f"{where}: {err['msg']}") from None


def _frames(images: list[str], config: GuardConfig) -> list[Frame] | str:
    """Decode the request's images (oldest first), or say in one line why one cannot be."""
    frames = []
    for k, text in enumerate(images):
        source = f"images[{k}]"
        if text.startswith("data:"):
            text = text.partition(",")[2]
        if len(text) * 3 // 4 > config.image.max_file_bytes:
            return f"{source}: over the {config.image.max_file_bytes} byte limit"
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return f"{source}: not valid base64"
        try:
            frames.append(Frame.from_bytes(
                data, source=source, max_input_pixels=config.image.max_input_pixels))
        except InvalidInputError as exc:
            return str(exc)
    return frames


def _decision(decision: Decision, status: int, *, retry: bool = False) -> Response:
    headers = {"Retry-After": "1"} if retry else None
    return Response(decision.model_dump_json(), status_code=status,
                    media_type="application/json", headers=headers)


def _images(images: list[str], config: GuardConfig) -> list[Any] | str:
    """A client guard's frames, as it resized them (decoded, not resized again)."""
    from PIL import Image

    out = []
    for k, text in enumerate(images):
        source = f"images[{k}]"
        try:
            data = base64.b64decode(text, validate=True)
            array = decode_image_bytes(data, source=source,
                                       max_input_pixels=config.image.max_input_pixels)
        except (binascii.Error, ValueError):
            return f"{source}: not valid base64"
        except InvalidInputError as exc:
            return str(exc)
        out.append(Image.fromarray(array))
    return out


def _error(status: int, message: str, *, retry: bool = False) -> Response:
    headers = {"Retry-After": "1"} if retry else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)
