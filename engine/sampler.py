"""Turn a batch of logits into next tokens (penalties, filters, seeded sampling, logprobs).

Order of processing, per row:
  repetition penalty -> frequency/presence penalties -> logit_bias -> min_tokens
  -> grammar mask -> temperature -> top-k -> top-p -> min-p -> sample.
The grammar mask comes last among the logit edits so that no bias can reopen a token
the grammar forbids.
Greedy rows take the argmax after the penalties (the filters never drop the argmax).
Random rows use the exponential race: argmax(probs / q), q ~ Exp(1), which draws
exactly from `probs`. A seeded row's q depends only on (seed, output position), so
its tokens do not depend on the batch it runs in nor on the machine that runs
prefill or decode (for the same device type: CPU and CUDA generators differ).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from contracts.sampling import SamplingParams

_MASK64 = (1 << 64) - 1
_MIN_NOISE = 1e-20  # Exp(1) draws may round to 0; 0/0 would be NaN and win argmax


@dataclass(slots=True)
class SamplingBatch:
    params: list[SamplingParams]
    prompt_token_ids: list[list[int]]
    output_token_ids: list[list[int]]
    # structured output: allowed tokens as packed bits, [S, ceil(V / 32)] int32 (bit j of word w
    # allows token 32 * w + j; xgrammar's layout); None when no row is guided
    token_bitmask: Tensor | None = None


@dataclass(slots=True)
class SamplerOutput:
    token_ids: Tensor  # [S] int64
    logprobs: Tensor | None  # [S] float32, sampled token under the raw model distribution
    top_token_ids: Tensor | None  # [S, k] int64, k = max requested logprobs, best first
    top_logprobs: Tensor | None  # [S, k] float32


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def noise_seed(seed: int, position: int) -> int:
    """Generator seed for a seeded request's draw at output position `position`."""
    return _splitmix64(_splitmix64(seed & _MASK64) ^ position) & (_MASK64 >> 1)


class Sampler:
    def __init__(self, eos_token_ids: set[int] | None = None, seed: int | None = None) -> None:
        self.eos_token_ids = set(eos_token_ids or ())
        self._seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}  # unseeded rows
        self._seeded: dict[torch.device, torch.Generator] = {}  # reseeded per seeded row

    def __call__(self, logits: Tensor, batch: SamplingBatch) -> SamplerOutput:
        num_rows, vocab_size = logits.shape  # [S, V]
        if not len(batch.params) == len(batch.output_token_ids) == len(batch.prompt_token_ids) == num_rows:
            raise ValueError(
                f"logits have {num_rows} rows but the batch has {len(batch.params)} params, "
                f"{len(batch.prompt_token_ids)} prompts and {len(batch.output_token_ids)} outputs; "
                "pass one entry per logits row"
            )
        logits = logits.float()
        wants_logprobs = any(p.logprobs is not None for p in batch.params)
        raw_logprobs = torch.log_softmax(logits, dim=-1) if wants_logprobs else None  # [S, V]
        logits = self.process_logits(logits, batch)

        token_ids = logits.argmax(dim=-1)  # [S], greedy answer for every row
        random_rows = [i for i, p in enumerate(batch.params) if not p.is_greedy]
        if random_rows:
            rows = torch.tensor(random_rows, device=logits.device)  # [R]
            sampled = self._sample(
                logits[rows], [batch.params[i] for i in random_rows], [len(batch.output_token_ids[i]) for i in random_rows]
            )
            token_ids = token_ids.index_copy(0, rows, sampled)
        return self._logprobs(raw_logprobs, token_ids, batch.params)

    @staticmethod
    def argmax_suffices(params: list[SamplingParams], num_output_tokens: list[int]) -> bool:
        """True when the argmax of the raw logits is the whole answer for every row:
        greedy, no penalties, no min_tokens still to enforce, no logprobs."""
        return all(
            p.is_greedy
            and p.logprobs is None
            and n >= p.min_tokens
            and p.repetition_penalty == 1.0
            and p.frequency_penalty == 0.0
            and p.presence_penalty == 0.0
            and not p.logit_bias
            and not p.is_guided
            for p, n in zip(params, num_output_tokens)
        )

    @staticmethod
    def argmax(logits: Tensor) -> SamplerOutput:
        """The output for a batch that ``argmax_suffices``: logits [S, V] -> token ids [S]."""
        return SamplerOutput(logits.argmax(dim=-1), None, None, None)

    def process_logits(self, logits: Tensor, batch: SamplingBatch) -> Tensor:
        """Penalties, logit_bias, min_tokens and grammar masking, [S, V] -> [S, V]; never modifies `logits`."""
        biased = self._apply_logit_bias(self._apply_penalties(logits, batch), batch)
        logits = self._apply_min_tokens(biased, batch)
        if batch.token_bitmask is None:
            return logits
        guided = apply_token_bitmask(logits, batch.token_bitmask)
        # a grammar that allows only EOS beats min_tokens (else the row has no token left);
        # torch.where, not an `if`, keeps the step free of a host sync
        dead = torch.isneginf(guided).all(dim=-1, keepdim=True)  # [S, 1]
        return torch.where(dead, apply_token_bitmask(biased, batch.token_bitmask), guided)

    @staticmethod
    def _apply_logit_bias(logits: Tensor, batch: SamplingBatch) -> Tensor:
        rows: list[int] = []
        cols: list[int] = []
        values: list[float] = []
        for i, p in enumerate(batch.params):
            for token_id, bias in p.logit_bias:
                rows.append(i)
                cols.append(token_id)
                values.append(bias)
        if not rows:
            return logits
        device = logits.device
        added = torch.zeros_like(logits)  # [S, V]
        # index_put_ with accumulate: a token listed twice gets both biases, as a dict would not allow
        added.index_put_(
            (torch.tensor(rows, device=device), torch.tensor(cols, device=device)),
            torch.tensor(values, device=device),
            accumulate=True,
        )
        return logits + added

    def _apply_penalties(self, logits: Tensor, batch: SamplingBatch) -> Tensor:
        params = batch.params
        device = logits.device
        num_rows, vocab_size = logits.shape
        if any(p.repetition_penalty != 1.0 for p in params):
            seen = (
                _token_counts([p + o for p, o in zip(batch.prompt_token_ids, batch.output_token_ids)], vocab_size, device) > 0
            )  # [S, V]
            penalty = torch.tensor([p.repetition_penalty for p in params], device=device)[:, None]
            penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
            logits = torch.where(seen, penalised, logits)
        if any(p.frequency_penalty != 0.0 or p.presence_penalty != 0.0 for p in params):
            counts = _token_counts(batch.output_token_ids, vocab_size, device)  # [S, V]
            freq = torch.tensor([p.frequency_penalty for p in params], device=device)[:, None]
            pres = torch.tensor([p.presence_penalty for p in params], device=device)[:, None]
            logits = logits - counts * freq - (counts > 0).float() * pres
        return logits

    def _apply_min_tokens(self, logits: Tensor, batch: SamplingBatch) -> Tensor:
        rows: list[int] = []
        cols: list[int] = []
        vocab_size = logits.shape[1]
        for i, (p, out) in enumerate(zip(batch.params, batch.output_token_ids)):
            if len(out) >= p.min_tokens:
                continue
            stops = set(p.stop_token_ids) if p.ignore_eos else set(p.stop_token_ids) | self.eos_token_ids
            blocked = [t for t in stops if 0 <= t < vocab_size]
            rows += [i] * len(blocked)
            cols += blocked
        if not rows:
            return logits
        logits = logits.clone()
        logits[torch.tensor(rows, device=logits.device), torch.tensor(cols, device=logits.device)] = float("-inf")
        return logits

    def _sample(self, logits: Tensor, params: list[SamplingParams], positions: list[int]) -> Tensor:
        """Random rows only. logits [R, V] -> token ids [R]."""
        device = logits.device
        num_rows, vocab_size = logits.shape
        temperature = torch.tensor([p.temperature for p in params], device=device)[:, None]
        logits = logits / temperature  # [R, V]
        if any(p.top_k > 0 or p.top_p < 1.0 or p.min_p > 0.0 for p in params):
            logits = self._filter(logits, params)
        probs = torch.softmax(logits, dim=-1)  # [R, V]
        return (probs / self._noise(params, positions, vocab_size, device)).argmax(dim=-1)

    def _filter(self, logits: Tensor, params: list[SamplingParams]) -> Tensor:
        """Top-k, top-p, min-p on one descending sort; the top token is always kept."""
        device = logits.device
        vocab_size = logits.shape[1]
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # [R, V]
        rank = torch.arange(vocab_size, device=device)[None, :]  # [1, V]
        top_k = torch.tensor([p.top_k if p.top_k > 0 else vocab_size for p in params], device=device)[:, None]
        drop = rank >= top_k  # [R, V]
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        probs = torch.softmax(sorted_logits, dim=-1)  # [R, V], renormalised after top-k
        top_p = torch.tensor([p.top_p for p in params], device=device)[:, None]
        mass_before = probs.cumsum(dim=-1) - probs  # probability of strictly better tokens
        # top_p == 1 keeps everything, even where rounding pushes the cumsum to 1 early.
        drop |= (mass_before >= top_p) & (rank > 0) & (top_p < 1.0)
        min_p = torch.tensor([p.min_p for p in params], device=device)[:, None]
        drop |= probs < min_p * probs[:, :1]
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        return torch.empty_like(logits).scatter_(1, order, sorted_logits)

    def _noise(self, params: list[SamplingParams], positions: list[int], vocab_size: int, device: torch.device) -> Tensor:
        """q ~ Exp(1), [R, V]: seeded rows from (seed, position) only, others from the sampler."""
        q = torch.empty(len(params), vocab_size, device=device)
        unseeded = [i for i, p in enumerate(params) if p.seed is None]
        if unseeded:
            noise = torch.empty(len(unseeded), vocab_size, device=device)
            noise.exponential_(generator=self._generator(device))
            q[torch.tensor(unseeded, device=device)] = noise
        seeded_gen = None
        for i, (p, position) in enumerate(zip(params, positions)):
            if p.seed is None:
                continue
            if seeded_gen is None:
                seeded_gen = self._seeded.setdefault(device, torch.Generator(device=device))
            seeded_gen.manual_seed(noise_seed(p.seed, position))
            q[i].exponential_(generator=seeded_gen)
        return q.clamp_min_(_MIN_NOISE)

    def _generator(self, device: torch.device) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = torch.Generator(device=device)
            if self._seed is None:
                gen.seed()
            else:
                gen.manual_seed(self._seed)
            self._generators[device] = gen
        return gen

    @staticmethod
    def _logprobs(raw_logprobs: Tensor | None, token_ids: Tensor, params: list[SamplingParams]) -> SamplerOutput:
        requested = [p.logprobs for p in params if p.logprobs is not None]
        if not requested or raw_logprobs is None:
            return SamplerOutput(token_ids, None, None, None)
        sampled = raw_logprobs.gather(1, token_ids[:, None]).squeeze(1)  # [S]
        top_logprobs, top_ids = raw_logprobs.topk(max(requested), dim=-1)  # [S, k], sorted
        return SamplerOutput(token_ids, sampled, top_ids, top_logprobs)


def apply_token_bitmask(logits: Tensor, bitmask: Tensor) -> Tensor:
    """Forbidden tokens -> -inf. logits [S, V], bitmask [S, ceil(V / 32)] int32 -> [S, V].

    Plain tensor ops, so it runs on any device and inside the sampler's stream order."""
    num_rows, vocab_size = logits.shape
    shifts = torch.arange(32, device=logits.device, dtype=torch.int32)  # [32]
    bits = (bitmask.to(logits.device)[:, :, None] >> shifts) & 1  # [S, W, 32]
    allowed = bits.reshape(num_rows, -1)[:, :vocab_size].bool()  # [S, V]
    return logits.masked_fill(~allowed, float("-inf"))


def _token_counts(token_lists: list[list[int]], vocab_size: int, device: torch.device) -> Tensor:
    """How often each token occurs in each row: [S, V] float32."""
    longest = max((len(t) for t in token_lists), default=0)
    counts = torch.zeros(len(token_lists), vocab_size + 1, device=device)  # [S, V+1], V = padding
    if longest:
        padded = torch.tensor([t + [vocab_size] * (longest - len(t)) for t in token_lists], device=device)  # [S, L]
        counts.scatter_add_(1, padded, torch.ones(padded.shape, device=device))
    return counts[:, :vocab_size]
