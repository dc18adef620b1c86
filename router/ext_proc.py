"""The router as a Gateway API Inference Extension endpoint picker (Envoy ext_proc).

An Envoy-based gateway whose route points at an InferencePool opens one
``envoy.service.ext_proc.v3.ExternalProcessor/Process`` stream per HTTP request and
sends the request headers, then the body (request body mode BUFFERED). The picker
tokenizes the OpenAI body as the router's own API does, asks the router's scheduler for a
placement, and answers the body with the GAIE endpoint-picker protocol's destination:
the chosen decode worker as ``ip:targetPort`` in the ``x-gateway-destination-endpoint``
header and in the ``envoy.lb`` dynamic metadata. A disaggregated placement also names
the prefill worker (its gRPC address) in ``x-splitserve-prefill-endpoint``; the mode is in
``x-splitserve-placement``. When the gateway sends a subset hint
(``envoy.lb.subset_hint``), only those endpoints are candidates. No worker: an immediate
503; the TTFT SLO broken everywhere: 429; a body that is no OpenAI request: 400.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
from fastapi import FastAPI
from google.protobuf import struct_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic import ValidationError

from contracts.rpc.envoy import base_pb2, http_status_pb2
from contracts.rpc.envoy import external_processor_pb2 as ep
from contracts.rpc.envoy import external_processor_pb2_grpc as ep_grpc
from router import protocol as p
from router.errors import APIError
from router.openai_api import RouterState
from router.scheduler import AdmissionRejected, Decision, Mode, NoWorkersAvailable
from router.tokenization import ChatTemplateError, messages_as_dicts

log = logging.getLogger(__name__)

DESTINATION = "x-gateway-destination-endpoint"
LB_NAMESPACE = "envoy.lb"
SUBSET_NAMESPACE = "envoy.lb.subset_hint"
SUBSET_KEY = "x-gateway-destination-endpoint-subset"
PREFILL_HEADER = "x-splitserve-prefill-endpoint"
MODE_HEADER = "x-splitserve-placement"


def pick(state: RouterState, prompt_ids: list[int], exclude: frozenset[str]) -> Decision:
    """The picker's one call into the router's scheduler."""
    decision = state.decide(prompt_ids, exclude)
    if decision.charge is not None:
        # The gateway runs the request, so this router never sees it finish: keep nothing
        # charged; the workers' polled load carries the work from here.
        decision.charge.release()
    return decision


def prompt_ids_of(state: RouterState, body: bytes) -> list[int]:
    """Token ids of an OpenAI completions or chat body (the router API's own request models),
    or an APIError the client can act on."""
    try:
        request = json.loads(body) if body else {"prompt": ""}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise APIError(400, f"malformed JSON body: {exc}", code="invalid_json") from exc
    if not isinstance(request, dict):
        raise APIError(400, "the body must be a JSON object")
    model = request.get("model")
    if model is not None and model != state.model_name:
        raise APIError(
            404,
            f"the model {model!r} does not exist; this pool serves {state.model_name!r}",
            param="model",
            code="model_not_found",
        )
    request.setdefault("model", state.model_name)
    try:
        if "messages" in request:
            chat = p.ChatCompletionRequest.model_validate(request)
            return state.tokenizer.apply_chat_template(messages_as_dicts(chat.messages), chat.add_generation_prompt,
                                                       **(chat.chat_template_kwargs or {}))  # fmt: skip
        prompt = p.CompletionRequest.model_validate(request).prompt
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise APIError(400, f"{where}: {first['msg']}", param=str(first["loc"][0]), code="invalid_value") from exc
    except ChatTemplateError as exc:
        raise APIError(400, str(exc), param="messages") from exc
    if isinstance(prompt, list) and not p.is_token_ids(prompt):
        if len(prompt) != 1:
            raise APIError(400, "one prompt per request is supported", param="prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        return state.tokenizer.encode(prompt) if prompt else []
    return list(prompt)


class EndpointPicker(ep_grpc.ExternalProcessorServicer):
    """One Process stream = one HTTP request through the gateway."""

    def __init__(self, state: RouterState, target_port: int | None = None) -> None:
        self.state = state
        self.target_port = target_port  # the InferencePool's targetPort; None = the worker's gRPC port

    def endpoint(self, address: str) -> str:
        host, _, port = address.rpartition(":")
        return f"{host}:{self.target_port}" if self.target_port else f"{host}:{port}"

    async def Process(
        self, requests: AsyncIterator[ep.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ep.ProcessingResponse]:
        body = bytearray()
        subset: set[str] | None = None
        async for request in requests:
            kind = request.WhichOneof("request")
            if kind == "request_headers":
                subset = subset_hint(request)
                if request.request_headers.end_of_stream:  # no body follows: place an empty prompt
                    yield self.answer(b"", subset, on_body=False)
                else:
                    yield ep.ProcessingResponse(request_headers=ep.HeadersResponse())
            elif kind == "request_body":
                body += request.request_body.body
                if request.request_body.end_of_stream:
                    yield self.answer(bytes(body), subset, on_body=True)
                else:
                    yield ep.ProcessingResponse(request_body=ep.BodyResponse())
            elif kind in ("response_headers", "response_body", "request_trailers", "response_trailers"):
                yield passthrough(kind)

    def answer(self, body: bytes, subset: set[str] | None, on_body: bool) -> ep.ProcessingResponse:
        try:
            decision = pick(self.state, prompt_ids_of(self.state, body), self.excluded(subset))
        except APIError as exc:
            return immediate(exc)
        except NoWorkersAvailable as exc:
            return immediate(APIError(503, str(exc), type="server_error", code="no_workers"))
        except AdmissionRejected as exc:
            return immediate(
                APIError(
                    429,
                    str(exc),
                    type="rate_limit_exceeded",
                    code="slo_admission",
                    headers={"retry-after": str(exc.retry_after_s)},
                )
            )
        except Exception:  # a bug here must cost one request a 500, not the gateway its picker stream
            log.exception("endpoint picker failed on a request")
            return immediate(APIError(500, "the endpoint picker failed; see the router log", type="server_error"))
        destination = self.endpoint(decision.decode_worker)
        headers = {DESTINATION: destination, MODE_HEADER: decision.mode.value}
        if decision.mode is Mode.DISAGGREGATED and decision.prefill_worker:
            headers[PREFILL_HEADER] = decision.prefill_worker
        common = ep.CommonResponse(header_mutation=header_mutation(headers), clear_route_cache=True)
        metadata = struct_pb2.Struct()
        metadata.update({LB_NAMESPACE: {DESTINATION: destination}})
        if on_body:
            return ep.ProcessingResponse(request_body=ep.BodyResponse(response=common), dynamic_metadata=metadata)
        return ep.ProcessingResponse(request_headers=ep.HeadersResponse(response=common), dynamic_metadata=metadata)

    def excluded(self, subset: set[str] | None) -> frozenset[str]:
        """Workers outside the gateway's subset hint (none when it sent no hint)."""
        if subset is None:
            return frozenset()
        return frozenset(a for a in self.state.pool.workers if self.endpoint(a) not in subset)


def subset_hint(request: ep.ProcessingRequest) -> set[str] | None:
    namespaces = request.metadata_context.filter_metadata
    if SUBSET_NAMESPACE not in namespaces or SUBSET_KEY not in namespaces[SUBSET_NAMESPACE].fields:
        return None
    raw: Any = namespaces[SUBSET_NAMESPACE][SUBSET_KEY]  # a list of "ip:port", or one comma-separated string
    entries = [raw] if isinstance(raw, str) else list(raw)
    return {e.strip() for entry in entries for e in str(entry).split(",") if e.strip()}


def header_mutation(headers: dict[str, str]) -> ep.HeaderMutation:
    overwrite = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    return ep.HeaderMutation(set_headers=[
        base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, raw_value=v.encode()), append_action=overwrite)
        for k, v in headers.items()
    ])  # fmt: skip


def immediate(error: APIError) -> ep.ProcessingResponse:
    """An OpenAI-shaped error the gateway returns to the client instead of forwarding."""
    headers = {"content-type": "application/json", **(error.headers or {})}
    # the generated stub types `code` as the StatusCode enum; the proto3 field takes any HTTP status number
    status = http_status_pb2.HttpStatus(code=error.status)  # type: ignore[arg-type]
    return ep.ProcessingResponse(immediate_response=ep.ImmediateResponse(
        status=status, headers=header_mutation(headers),
        body=json.dumps(error.body()).encode(), details=f"splitserve_picker_{error.code or error.status}",
    ))  # fmt: skip


def passthrough(kind: str) -> ep.ProcessingResponse:
    """Leave the rest of the exchange untouched (gateways configured to send more than the request)."""
    if kind == "response_headers":
        return ep.ProcessingResponse(response_headers=ep.HeadersResponse())
    if kind == "response_body":
        return ep.ProcessingResponse(response_body=ep.BodyResponse())
    if kind == "request_trailers":
        return ep.ProcessingResponse(request_trailers=ep.TrailersResponse())
    return ep.ProcessingResponse(response_trailers=ep.TrailersResponse())


async def start_picker(state: RouterState, host: str, port: int, target_port: int | None = None) -> tuple[grpc.aio.Server, int]:
    """Serve the picker (and the standard gRPC health service) on host:port; returns the bound port."""
    server = grpc.aio.server()
    ep_grpc.add_ExternalProcessorServicer_to_server(EndpointPicker(state, target_port), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info("endpoint picker (Envoy ext_proc) serving on %s:%d", host, bound)
    return server, bound


def serve_picker_with(app: FastAPI, host: str, port: int, target_port: int | None = None) -> None:
    """Run the picker for the lifetime of the router app (same process, same worker view)."""
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[Any]:
        async with inner(a) as value:
            server, _ = await start_picker(app.state.router, host, port, target_port)
            try:
                yield value
            finally:
                await server.stop(grace=2)

    app.router.lifespan_context = lifespan
