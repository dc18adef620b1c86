"""Messages between a worker's gRPC server process and its engine-core process.

Two ZMQ PUSH/PULL pipes (server -> core: ``ToCore``, core -> server: ``FromCore``). Each
message is one msgpack array, ``[tag, field, ...]``, encoded from and decoded into the
Structs below; both processes import this module, so a field exists on both sides or on
neither, and a peer that sends another shape fails to decode loudly (``msgspec.ValidationError``),
never shifts a field silently. KV bytes never cross this pipe: the core moves KV itself
(kv_transfer/: the store, or a direct pull between engines).
"""

from __future__ import annotations

import enum

import msgspec

from contracts.kv_handle import KVHandle
from contracts.rpc import worker_pb2 as pb
from contracts.sampling import SamplingParams


class ErrorKind(str, enum.Enum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"  # unknown KV handle / blocks evicted from the store
    UNAVAILABLE = "unavailable"  # store or engine trouble; retry elsewhere
    INTERNAL = "internal"
    CANCELLED = "cancelled"  # aborted through the Abort RPC


class _Record(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """A value inside a message (no tag of its own)."""


class _Message(msgspec.Struct, array_like=True, forbid_unknown_fields=True, tag=True):
    """A message: the first array element is its tag."""


# ---- records -------------------------------------------------------------------------------------------
class TokenLogprob(_Record):
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = msgspec.field(default_factory=list)  # (token id, logprob), most likely first

    def to_proto(self) -> pb.TokenLogprob:
        return pb.TokenLogprob(
            token_id=self.token_id, logprob=self.logprob, top=[pb.TopLogprob(token_id=t, logprob=lp) for t, lp in self.top]
        )


class RequestDelta(_Record):
    """What one engine step produced for one request."""

    request_id: str
    new_token_ids: list[int]
    logprobs: list[TokenLogprob] | None  # one per new token when the request asked for logprobs
    finished: bool
    finish_reason: str | None  # "stop" | "length" | "abort" | None
    num_cached_tokens: int  # prompt tokens not computed here (prefix hit or imported)
    num_prompt_tokens: int
    num_output_tokens: int  # all output tokens so far


class PrefillResult(_Record):
    first_token_id: int
    first_logprob: TokenLogprob | None  # set when the request asked for logprobs
    handle: KVHandle  # store writes may still be in flight: handle.blocks_pending
    num_cached_tokens: int
    num_computed_tokens: int
    finish_reason: str | None  # the first token already ends the request


class CoreInfo(_Record):
    worker_id: str
    model_fingerprint: str
    dtype: str
    block_size: int
    tp_size: int
    total_blocks: int
    kv_events_endpoint: str
    kv_snapshot_endpoint: str


class EngineLoad(_Record):
    """The engine's load (LLMEngine.load); a worker's GetLoad answers it as worker.proto WorkerLoad."""

    running: int
    waiting: int  # the core adds requests still waiting for their KV
    held: int  # prefill_only requests holding blocks for export
    kv_usage: float  # active blocks / total blocks
    queued_prefill_tokens: int
    active_blocks: int
    total_blocks: int
    block_size: int
    prefix_cache_queries: int  # prompt tokens looked up (cumulative)
    prefix_cache_hits: int  # prompt tokens found cached (cumulative)


# ---- server -> core ------------------------------------------------------------------------------------
class AddRequest(_Message, tag="add"):
    request_id: str
    prompt: list[int]
    params: SamplingParams
    cache_salt: str
    prefill_only: bool  # a prefill worker's request: answer Prefilled after the first token


class ImportRequest(_Message, tag="import"):
    """A decode request whose prompt KV a prefill worker computed."""

    request_id: str
    prompt: list[int]
    params: SamplingParams
    cache_salt: str
    handle: KVHandle
    first_token_id: int
    kv_wait_s: float  # longest wait for blocks still being written


class Abort(_Message, tag="abort"):
    request_id: str


class LoadQuery(_Message, tag="load"):
    token: int  # echoed in the LoadReport


class Shutdown(_Message, tag="shutdown"):
    pass


ToCore = AddRequest | ImportRequest | Abort | LoadQuery | Shutdown


# ---- core -> server ------------------------------------------------------------------------------------
class Ready(_Message, tag="ready"):
    """The model is loaded and warmed up."""

    info: CoreInfo


class StepOutputs(_Message, tag="out"):
    outputs: list[RequestDelta]
    step_s: float
    batch_size: int


class Prefilled(_Message, tag="prefilled"):
    request_id: str
    result: PrefillResult


class RequestError(_Message, tag="error"):
    request_id: str
    kind: ErrorKind
    message: str


class LoadReport(_Message, tag="load"):
    token: int
    load: EngineLoad


class Queued(_Message, tag="queued"):
    """A request waited this long between arriving at the core and its first step."""

    seconds: float


class Transfer(_Message, tag="transfer"):
    """One KV batch moved."""

    transport: str  # "store" | "direct"
    direction: str  # "in" | "out"
    nbytes: int
    seconds: float


class Handoff(_Message, tag="handoff"):
    """A prefilled request's KV is in this (decode) engine's pool: seconds since its import reached the core."""

    transport: str  # "store" | "direct"
    seconds: float


FromCore = Ready | StepOutputs | Prefilled | RequestError | LoadReport | Queued | Transfer | Handoff

_encoder = msgspec.msgpack.Encoder()
_to_core = msgspec.msgpack.Decoder(ToCore)
_from_core = msgspec.msgpack.Decoder(FromCore)


def encode(msg: ToCore | FromCore) -> bytes:
    return _encoder.encode(msg)


def decode_to_core(data: bytes) -> ToCore:
    return _to_core.decode(data)


def decode_from_core(data: bytes) -> FromCore:
    return _from_core.decode(data)
