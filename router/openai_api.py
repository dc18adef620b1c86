"""The router's HTTP edge: OpenAI-compatible API, /tokenize, /detokenize, /health, /metrics.

`create_app(RouterConfig)` builds the app; its lifespan starts discovery, the worker
pool's health/load loop and the KV-event subscriber. Every failure answers an
OpenAI-shaped error body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.background import BackgroundTask

from kvstore.block_key import block_keys
from router import protocol as p
from router.body_limit import BodySizeLimit
from router.config import RouterConfig
from router.direct_routes import DirectRoute, DirectRoutes
from router.discovery import Discovery, StaticDiscovery, parse_discovery_spec
from router.errors import APIError, error_response, install_error_handlers, sse_error
from router.generation import ChoiceState, detokenize_stream, sampling_params, to_proto
from router.guide_request import GuideValidator, requested_guide
from router.kv_event_subscriber import KVEventSubscriber
from router.metrics import RouterMetrics
from router.prefix_index import PrefixIndex
from router.responses_api import ResponsesBuilder, responses_sse, to_chat_request
from router.saturation import export_saturation
from router.scheduler import STORE_PUBLISHER, AdmissionRejected, Decision, NoWorkersAvailable, Scheduler, ScheduleRequest
from router.template_sandbox import TemplateRejected, render_in_sandbox
from router.tenancy import bearer_key, cache_salt_for
from router.tokenization import ChatTemplateError, PromptTokenizer, check_client_template, messages_as_dicts
from router.tool_calls import ToolPlan, detect_format, plan_tools, with_tools_prompt
from router.worker_backend import UNARY_MAX_TOKENS, GenerationRequest, WorkerBackend, WorkerStreamError, release
from router.worker_pool import WorkerPool
from router.workers import Role


class RouterState:
    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.model_name = config.served_model_name or Path(config.model_dir).name
        self.tokenizer = PromptTokenizer.from_dir(config.model_dir)
        self.metrics = RouterMetrics()
        self.index = PrefixIndex()
        self.metrics.store_tier_blocks.set_function(lambda: self.index.num_blocks_of(STORE_PUBLISHER))
        self.subscriber = KVEventSubscriber(self.index)
        self.pool = WorkerPool(self.subscriber, interval_s=config.health_interval_s, on_change=self._gauges)
        self.scheduler = Scheduler(config.scheduler, self.index)
        self.backend = WorkerBackend(
            self.pool,
            config.prefill_timeout_s,
            config.chunk_timeout_s,
            stall_timeout_s=config.stall_timeout_s,
            request_timeout_s=config.request_timeout_s,
        )
        self.guides = GuideValidator(self.tokenizer)
        template = getattr(self.tokenizer.tokenizer, "chat_template", None)
        self.tool_format = detect_format(template)
        self.template_renders_tools = isinstance(template, str) and "tools" in template

    def discovery(self) -> Discovery:
        if self.config.discovery:
            from router.k8s_discovery import KubernetesDiscovery

            spec = parse_discovery_spec(self.config.discovery)
            selectors = {Role.PREFILL: spec["prefill-selector"], Role.DECODE: spec["decode-selector"]}
            return KubernetesDiscovery(spec["namespace"], selectors)
        return StaticDiscovery(self.config.prefill, self.config.decode)

    def _gauges(self) -> None:
        for role in Role:
            self.metrics.ready_workers.labels(role.value).set(self.pool.ready_count(role))
            export_saturation(self.metrics.pool_saturation, role, self.pool.role_workers(role), self.config.scheduler)
        self.metrics.index_blocks.set(self.index.num_blocks())

    def decide(
        self, prompt_ids: list[int], exclude: frozenset[str] = frozenset(), cache_salt: str = "", priority: int = 0
    ) -> Decision:
        fingerprint = self.config.model_fingerprint or self.pool.model_fingerprint()
        keys = block_keys(prompt_ids, fingerprint, self.config.block_size, cache_salt) if fingerprint else []
        start = time.monotonic()
        decision = self.scheduler.decide(
            ScheduleRequest(len(prompt_ids), keys, self.config.block_size, priority),
            self.pool.role_workers(Role.PREFILL),
            self.pool.role_workers(Role.DECODE),
            exclude,
        )
        self.metrics.scheduling.observe(time.monotonic() - start)
        return decision


def create_app(config: RouterConfig, start_workers: bool = True) -> FastAPI:
    state = RouterState(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        tasks: list[asyncio.Task] = []
        if start_workers:
            state.subscriber.start()
            if config.kvstore_events:
                snapshot = config.kvstore_snapshot or snapshot_endpoint_of(config.kvstore_events)
                state.subscriber.add_publisher(STORE_PUBLISHER, config.kvstore_events, snapshot)
            tasks = [asyncio.create_task(state.discovery().run(state.pool.apply)), asyncio.create_task(state.pool.run())]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        state.subscriber.close()
        await state.pool.close()

    app = FastAPI(title="splitserve router", version="0.1.0", lifespan=lifespan)
    app.state.router = state
    install_error_handlers(app)

    async def check_api_key(request: Request) -> None:
        if not config.api_keys:
            return
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in config.api_keys:
            raise APIError(
                401, "invalid or missing API key (Authorization: Bearer KEY)", type="authentication_error", code="invalid_api_key"
            )

    # Middleware added first runs innermost: the generation routes are answered after the body
    # limit and the request counter, before FastAPI's routing (filled in below, with the handlers).
    direct: dict[str, DirectRoute] = {}
    app.add_middleware(DirectRoutes, routes=direct, authorize=check_api_key)
    app.add_middleware(BodySizeLimit, max_bytes=config.max_body_bytes, body_timeout_s=config.body_timeout_s)

    def check_model(model: str | None) -> None:
        if model is not None and model != state.model_name:
            raise APIError(
                404,
                f"the model {model!r} does not exist; this router serves {state.model_name!r}",
                param="model",
                code="model_not_found",
            )

    auth = [Depends(check_api_key)]
    errors: dict[int | str, dict[str, Any]] = {code: {"model": p.ErrorResponse} for code in (400, 401, 404, 413, 429, 503)}

    app.add_middleware(RequestCounter, counter=state.metrics.requests)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "ready_workers": {r.value: state.pool.ready_count(r) for r in Role}}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """Readiness (the chart's readinessProbe): 503 while no decode worker is ready; /health is liveness."""
        workers = {r.value: state.pool.ready_count(r) for r in Role}
        ok = workers.get(Role.DECODE.value, 0) > 0
        return JSONResponse({"status": "ready" if ok else "no ready decode worker", "ready_workers": workers},
                            status_code=200 if ok else 503)  # fmt: skip

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        state._gauges()
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", response_model=p.ModelList, dependencies=auth, responses=errors)
    async def models() -> p.ModelList:
        card = p.ModelCard(
            id=state.model_name, max_model_len=state.tokenizer.max_model_len, vocab_size=state.tokenizer.vocab_size
        )
        return p.ModelList(data=[card])

    @app.post("/tokenize", response_model=p.TokenizeResponse, dependencies=auth, responses=errors)
    async def tokenize(req: p.TokenizeRequest) -> p.TokenizeResponse:
        check_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise APIError(400, "give exactly one of 'prompt' or 'messages'", param="prompt")
        if req.messages is not None:
            tools = {"tools": [t.model_dump(exclude_none=True) for t in req.tools]} if req.tools else None
            ids = await _chat_ids(state, req.messages, req.add_generation_prompt, tools)
        else:
            ids = state.tokenizer.encode(req.prompt or "", add_special_tokens=req.add_special_tokens)
        return p.TokenizeResponse(tokens=ids, count=len(ids), max_model_len=state.tokenizer.max_model_len)

    @app.post("/detokenize", response_model=p.DetokenizeResponse, dependencies=auth, responses=errors)
    async def detokenize(req: p.DetokenizeRequest) -> p.DetokenizeResponse:
        check_model(req.model)
        bad = [t for t in req.tokens if not 0 <= t < state.tokenizer.vocab_size]
        if bad:
            raise APIError(400, f"token ids out of range [0, {state.tokenizer.vocab_size}): {bad[:5]}", param="tokens")
        return p.DetokenizeResponse(prompt=state.tokenizer.decode(req.tokens))

    @app.post("/v1/completions", response_model=p.CompletionResponse, dependencies=auth, responses=errors)
    async def completions(req: p.CompletionRequest, request: Request):
        check_model(req.model)
        if isinstance(req.prompt, list) and not p.is_token_ids(req.prompt):
            if len(req.prompt) != 1:
                raise APIError(400, "one prompt per request is supported", param="prompt")
            req.prompt = req.prompt[0]
        if isinstance(req.prompt, str):
            prompt_ids = state.tokenizer.encode(req.prompt)
        else:
            prompt_ids = list(req.prompt)
            if any(not 0 <= t < state.tokenizer.vocab_size for t in prompt_ids):
                raise APIError(400, "prompt token ids out of the vocabulary", param="prompt")
        if not prompt_ids:
            raise APIError(400, "the prompt is empty", param="prompt")
        if req.best_of is not None and req.best_of != req.n:
            raise APIError(
                400,
                f"best_of={req.best_of} is not supported: only best_of equal to n ({req.n})",
                param="best_of",
                code="unsupported_parameter",
            )
        if req.echo and req.logprobs is not None:
            raise APIError(
                400,
                "echo with logprobs needs prompt logprobs, which are not supported",
                param="echo",
                code="unsupported_parameter",
            )
        return await _run(state, req, prompt_ids, request, chat=False)

    @app.post("/v1/chat/completions", response_model=p.ChatCompletionResponse, dependencies=auth, responses=errors)
    async def chat_completions(req: p.ChatCompletionRequest, request: Request):
        check_model(req.model)
        tools = plan_tools(req, state.tool_format)
        kwargs = dict(req.chat_template_kwargs or {})
        if tools is not None:
            kwargs["tools"] = tools.tools
        describe = tools is not None and tools.mode == "auto"
        prompt_ids = await _chat_ids(state, req.messages, req.add_generation_prompt, kwargs, describe)
        return await _run(state, req, prompt_ids, request, chat=True, tools=tools)

    @app.post("/v1/responses", dependencies=auth, responses=errors)
    async def create_response(req: p.ResponsesRequest, request: Request):
        check_model(req.model)
        try:
            chat = to_chat_request(req)
        except ValidationError as exc:
            raise APIError(400, f"the request cannot be served: {exc.errors()[0].get('msg', exc)}", param="input") from exc
        prompt_ids = await _chat_ids(state, chat.messages, True, None)
        return await _run(state, chat, prompt_ids, request, chat=True, responses=req)

    direct["/v1/completions"] = DirectRoute(p.CompletionRequest, completions)
    direct["/v1/chat/completions"] = DirectRoute(p.ChatCompletionRequest, chat_completions)
    direct["/v1/responses"] = DirectRoute(p.ResponsesRequest, create_response)
    return app


class RequestCounter:
    """Counts HTTP requests by route and status: a plain ASGI middleware (Starlette's
    BaseHTTPMiddleware costs a task and a memory stream per request)."""

    def __init__(self, app, counter) -> None:
        self.app, self.counter = app, counter
        self._children: dict[tuple[str, int], object] = {}  # (path, status) -> the labelled counter

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message) -> None:
            if message["type"] == "http.response.start":
                key = (scope["path"], message["status"])
                child = self._children.get(key)
                if child is None:
                    child = self._children[key] = self.counter.labels(key[0], str(key[1]))
                child.inc()  # type: ignore[attr-defined]
            await send(message)

        await self.app(scope, receive, counting_send)


def snapshot_endpoint_of(events_endpoint: str) -> str:
    """The KV-event convention: snapshots are served on the events port + 1."""
    base, _, port = events_endpoint.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"KV-event endpoint {events_endpoint!r} has no port; expected tcp://HOST:PORT")
    return f"{base}:{int(port) + 1}"


async def _chat_ids(
    state: RouterState,
    messages: list[p.ChatMessage],
    add_generation_prompt: bool,
    kwargs: dict | None,
    describe_tools: bool = True,
) -> list[int]:
    """``describe_tools``: a template that ignores ``tools`` gets them in a system turn. Forced
    tool choices skip it: the grammar already holds the names and argument schemas."""
    kwargs, tok = dict(kwargs or {}), state.tokenizer
    dicts = messages_as_dicts(messages)
    if kwargs.get("tools") and not state.template_renders_tools:
        tools = kwargs.pop("tools")  # the template would drop them silently
        dicts = with_tools_prompt(dicts, tools) if describe_tools else dicts
    try:
        check_client_template(kwargs, state.config.allow_client_chat_template)
        if "chat_template" in kwargs:  # the client's code: a killable, resource-limited child process
            variables = {**tok.special_tokens(), **kwargs, "messages": dicts,
                         "add_generation_prompt": add_generation_prompt}  # fmt: skip
            del variables["chat_template"]
            text = await render_in_sandbox(kwargs["chat_template"], variables, state.config.chat_template_timeout_s)
        else:  # the operator's template, off the event loop so that /health and other requests go on
            text = await asyncio.to_thread(tok.render_chat_template, dicts, add_generation_prompt, **kwargs)
    except (ChatTemplateError, TemplateRejected) as exc:
        raise APIError(400, str(exc), param="messages", code="chat_template_error") from exc
    # the template already holds any BOS token: do not add special tokens again
    return tok.encode(text, add_special_tokens=False)


async def _run(
    state: RouterState,
    req,
    prompt_ids: list[int],
    request: Request,
    chat: bool,
    tools: ToolPlan | None = None,
    responses: p.ResponsesRequest | None = None,
):
    """Place and run one request; ``responses`` set: answer in the Responses API's shapes."""
    tok = state.tokenizer
    guide = tools.guide if tools is not None and tools.guide is not None else requested_guide(req)
    params = sampling_params(req, len(prompt_ids), tok.max_model_len, tok.vocab_size, state.config.max_n, guide)
    await state.guides.check(guide)
    try:
        salt = cache_salt_for(req.cache_salt, bearer_key(request.headers.get("authorization")), state.config.salt_per_api_key)
        decision = state.decide(prompt_ids, cache_salt=salt, priority=params.priority)
    except NoWorkersAvailable as exc:
        raise APIError(503, str(exc), type="service_unavailable", code="no_workers") from exc
    except AdmissionRejected as exc:
        raise APIError(
            429, str(exc), type="rate_limit_error", code="slo_unattainable", headers={"Retry-After": str(exc.retry_after_s)}
        ) from exc
    metrics = state.metrics
    metrics.prompt_tokens.inc(len(prompt_ids))
    metrics.predicted_hits.inc(decision.predicted_hit_tokens)
    if decision.prefill_worker:
        metrics.count_decision("prefill", decision.prefill_worker, decision.mode.value)
    metrics.count_decision("decode", decision.decode_worker, decision.mode.value)
    from router.responses import ResponseBuilder

    builder: ResponseBuilder | ResponsesBuilder
    if responses is not None:
        request_id = "resp_" + uuid.uuid4().hex
        builder = ResponsesBuilder(request_id, state.model_name, responses, len(prompt_ids))
    else:
        request_id = p.new_id("chatcmpl" if chat else "cmpl")
        builder = ResponseBuilder(request_id, state.model_name, chat, req, len(prompt_ids), tok, tools)
    start = time.monotonic()
    states = [ChoiceState() for _ in range(req.n)]
    last_token = [start]

    def on_token() -> None:
        now = time.monotonic()
        if last_token[0] == start:
            metrics.ttft.observe(now - start)
        else:
            metrics.itl.observe(now - last_token[0])
        last_token[0] = now

    # A short answer nobody streams comes in one message: no stream to keep per call. It has no
    # first-token time at the router (its tokens arrive together): only its e2e latency is recorded.
    unary = not req.stream and params.max_tokens <= UNARY_MAX_TOKENS

    async def choice_events(i: int) -> AsyncGenerator:
        gen = GenerationRequest(f"{request_id}-{i}", prompt_ids, to_proto(params, i), cache_salt=salt, unary=unary)
        first = decision if i == 0 else state.decide(prompt_ids, cache_salt=salt, priority=params.priority)
        chunks = state.backend.generate(gen, first, lambda ex: state.decide(prompt_ids, ex, salt, params.priority))
        try:
            async for event in detokenize_stream(
                i, chunks, tok.tokenizer, prompt_ids, params, tok.eos_token_ids, states[i], None if unary else on_token
            ):
                yield event
        finally:
            await chunks.aclose()
            release(first)  # also when the generator never started (cancelled before its first step)

    async def run_choice(i: int, queue: asyncio.Queue) -> None:
        async with contextlib.aclosing(choice_events(i)) as choice:
            async for event in choice:
                await queue.put(event)

    def record_totals() -> None:
        metrics.e2e.observe(time.monotonic() - start)
        metrics.generation_tokens.inc(sum(len(s.token_ids) for s in states))
        metrics.realised_hits.inc(max((s.num_cached_tokens for s in states), default=0))

    async def events() -> AsyncIterator:
        if req.n == 1:  # one choice: no task and no queue between the worker's stream and the answer
            try:
                async with contextlib.aclosing(choice_events(0)) as choice:
                    async for event in choice:
                        yield event
            finally:
                record_totals()
            return
        queue: asyncio.Queue = asyncio.Queue()
        tasks = [asyncio.create_task(run_choice(i, queue)) for i in range(req.n)]
        pending = set(tasks)
        getter: asyncio.Task | None = None
        try:
            while pending or not queue.empty():
                getter = getter or asyncio.create_task(queue.get())
                done, _ = await asyncio.wait(pending | {getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                    getter = None
                for task in done & pending:
                    pending.discard(task)
                    task.result()  # re-raise a failed choice
        finally:
            for task in tasks:
                task.cancel()  # client gone or a choice failed: abort the others
            if getter:
                getter.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            record_totals()

    if req.stream:
        # the background task also runs when the client left before the stream began
        failures = (WorkerStreamError, NoWorkersAvailable, AdmissionRejected)
        if isinstance(builder, ResponsesBuilder):
            stream = responses_sse(builder, events(), states, failures)
        else:
            stream = _sse(builder, events(), states, req)
        return StreamingResponse(stream, media_type="text/event-stream", background=BackgroundTask(release, decision))
    try:
        async for event in events():
            builder.add(event)
    except WorkerStreamError as exc:
        raise APIError(502, str(exc), type="server_error", code="worker_failed") from exc
    if isinstance(builder, ResponsesBuilder):
        return JSONResponse(builder.final_body(states))
    # serialized by pydantic straight to JSON bytes (no dict in between, no json.dumps)
    return Response(builder.final(states).model_dump_json(exclude_none=True), media_type="application/json")


async def _sse(builder, events: AsyncIterator, states: list[ChoiceState], req) -> AsyncIterator[str]:
    try:
        for first in builder.stream_start():
            yield f"data: {first}\n\n"
        async for event in events:
            chunk = builder.stream_chunk(event)
            if chunk is not None:
                yield f"data: {chunk}\n\n"
        if req.stream_options and req.stream_options.include_usage:
            yield f"data: {builder.stream_usage(states)}\n\n"
    except (WorkerStreamError, NoWorkersAvailable, AdmissionRejected) as exc:
        yield sse_error(APIError(502, str(exc), type="server_error", code="worker_failed"))
    yield "data: [DONE]\n\n"


__all__ = ["create_app", "RouterState", "json", "error_response"]
