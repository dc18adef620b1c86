"""Engine records -> worker.proto messages (sampling parameters: engine/sampling_params.py)."""

from __future__ import annotations

from contracts.engine_core import TokenLogprob
from splitserve.rpc import worker_pb2 as pb


def token_logprob(lp: TokenLogprob) -> pb.TokenLogprob:
    return pb.TokenLogprob(token_id=lp.token_id, logprob=lp.logprob,
                           top=[pb.TopLogprob(token_id=t, logprob=p) for t, p in lp.top])
