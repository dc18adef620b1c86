"""The sampler: greedy, filters, seeded sampling, penalties, min_tokens, logprobs."""

from __future__ import annotations

import pytest
import torch

from contracts.sampling import SamplingParams
from engine.sampler import Sampler, SamplingBatch

EOS = 3


def make_batch(
    params: list[SamplingParams], outputs: list[list[int]] | None = None, prompts: list[list[int]] | None = None
) -> SamplingBatch:
    n = len(params)
    return SamplingBatch(
        params=params,
        prompt_token_ids=prompts if prompts is not None else [[0]] * n,
        output_token_ids=outputs if outputs is not None else [[]] * n,
    )


def random_logits(rows: int, vocab: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=gen) * 3  # [S, V]


def test_greedy_picks_argmax_of_logits() -> None:
    logits = random_logits(4, 50)
    out = Sampler()(logits, make_batch([SamplingParams(temperature=0.0)] * 4))
    assert out.token_ids.dtype == torch.int64
    assert out.token_ids.tolist() == logits.argmax(dim=-1).tolist()
    assert out.logprobs is None and out.top_token_ids is None and out.top_logprobs is None


def test_top_k_1_equals_greedy() -> None:
    logits = random_logits(8, 50, seed=1)
    out = Sampler(seed=0)(logits, make_batch([SamplingParams(temperature=1.5, top_k=1)] * 8))
    assert out.token_ids.tolist() == logits.argmax(dim=-1).tolist()


def repeated_draws(params: SamplingParams, logits_row: torch.Tensor, draws: int) -> torch.Tensor:
    logits = logits_row.expand(draws, -1).clone()  # [draws, V]
    return Sampler(seed=123)(logits, make_batch([params] * draws)).token_ids


def test_top_k_samples_only_the_k_best_tokens() -> None:
    logits_row = torch.tensor([1.0, 5.0, 0.5, 4.0, 3.0, 0.0])
    picked = set(repeated_draws(SamplingParams(top_k=3), logits_row, 2000).tolist())
    assert picked == {1, 3, 4}


def test_top_p_samples_only_the_nucleus() -> None:
    # probs 0.5, 0.3, 0.1, 0.1: top_p=0.75 needs tokens 0 and 1 (0.5 < 0.75, 0.8 >= 0.75).
    logits_row = torch.tensor([0.5, 0.3, 0.1, 0.1]).log()
    picked = set(repeated_draws(SamplingParams(top_p=0.75), logits_row, 2000).tolist())
    assert picked == {0, 1}


def test_min_p_samples_only_tokens_near_the_best() -> None:
    # probs 0.4, 0.3, 0.2, 0.1: min_p=0.6 keeps p >= 0.24, i.e. tokens 0 and 1.
    logits_row = torch.tensor([0.4, 0.3, 0.2, 0.1]).log()
    picked = set(repeated_draws(SamplingParams(min_p=0.6), logits_row, 2000).tolist())
    assert picked == {0, 1}


def test_temperature_sampling_matches_softmax_frequencies() -> None:
    logits_row = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    temperature, draws = 0.7, 6000
    tokens = repeated_draws(SamplingParams(temperature=temperature), logits_row, draws)
    freq = torch.bincount(tokens, minlength=5).float() / draws
    expected = torch.softmax(logits_row / temperature, dim=-1)
    # 4.5 standard errors of a binomial frequency: fails only on a real bias.
    tolerance = 4.5 * (expected * (1 - expected) / draws).sqrt()
    assert ((freq - expected).abs() <= tolerance).all(), (freq, expected)


def test_seeded_row_is_identical_alone_and_inside_a_mixed_batch() -> None:
    vocab = 1000
    target = SamplingParams(temperature=1.0, top_p=0.95, seed=42)
    target_logits = random_logits(1, vocab, seed=7)
    others = [
        SamplingParams(temperature=0.3 + 0.1 * i, top_k=i % 5, seed=i if i % 2 else None, repetition_penalty=1.0 + 0.05 * i)
        for i in range(16)
    ]
    logits = torch.cat([random_logits(8, vocab, seed=8), target_logits, random_logits(8, vocab, seed=9)])  # [17, V]
    params = others[:8] + [target] + others[8:]
    for target_output in ([], [5], [5, 9, 11]):  # first token (prefill) and later ones (decode)
        alone = Sampler(seed=1)(target_logits, make_batch([target], [target_output])).token_ids
        outputs = [[i] * i for i in range(8)] + [target_output] + [[i] for i in range(8)]
        batched = Sampler(seed=2)(logits, make_batch(params, outputs)).token_ids
        assert batched[8].item() == alone[0].item()


def test_seeded_noise_depends_on_output_position() -> None:
    # Flat logits: the draw is decided by the noise alone.
    params = [SamplingParams(seed=42)] * 8
    logits = torch.zeros(8, 1000)
    same_pos = Sampler()(logits, make_batch(params, [[1, 2]] * 8)).token_ids
    positions = Sampler()(logits, make_batch(params, [[7] * i for i in range(8)])).token_ids
    assert len(set(same_pos.tolist())) == 1  # same (seed, position): same token
    assert len(set(positions.tolist())) > 4  # new position: fresh noise


def test_repetition_then_frequency_and_presence_penalties_are_exact() -> None:
    logits_row = torch.tensor([2.0, -1.0, 3.0, 0.5, -2.0])
    params = SamplingParams(temperature=0.0, repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)
    prompt, output = [0, 1], [2, 2, 4]
    sampler = Sampler()
    processed = sampler.process_logits(logits_row[None], make_batch([params], [output], [prompt]))[0]
    # token 0: prompt, positive -> /2; token 1: prompt, negative -> *2;
    # token 2: output x2 -> 3/2 - 2*0.5 - 0.25; token 3: unseen; token 4: output x1 -> -4 - 0.5 - 0.25
    expected = torch.tensor([1.0, -2.0, 1.5 - 1.0 - 0.25, 0.5, -4.0 - 0.5 - 0.25])
    torch.testing.assert_close(processed, expected)
    # And the sampler acts on it: without penalties token 2 wins, with them token 0 does.
    out = sampler(logits_row[None], make_batch([params], [output], [prompt]))
    assert out.token_ids.tolist() == [0]


def test_min_tokens_blocks_eos_and_stop_tokens_until_reached() -> None:
    logits = torch.tensor([[0.0, 0.0, 1.0, 9.0, 8.0]]).repeat(3, 1)  # EOS (3) then stop id 4 best
    params = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[4])
    ignore = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[4], ignore_eos=True)
    sampler = Sampler(eos_token_ids={EOS})
    out = sampler(logits, make_batch([params, params, ignore], [[1], [1, 1], [1]]))
    assert out.token_ids.tolist() == [2, EOS, EOS]  # blocked, allowed, EOS is no stop here


def test_logprobs_are_raw_log_softmax_with_sorted_top_columns() -> None:
    logits = random_logits(3, 40, seed=3)
    params = [
        SamplingParams(temperature=0.8, repetition_penalty=1.5, logprobs=4),
        SamplingParams(temperature=0.0, logprobs=0),
        SamplingParams(),
    ]
    out = Sampler(seed=0)(logits, make_batch(params, [[1, 2], [], [5]]))
    assert out.logprobs is not None and out.top_token_ids is not None and out.top_logprobs is not None
    raw = torch.log_softmax(logits, dim=-1)
    expected = raw.gather(1, out.token_ids[:, None]).squeeze(1)
    torch.testing.assert_close(out.logprobs, expected)
    assert out.top_token_ids.shape == out.top_logprobs.shape == (3, 4)
    torch.testing.assert_close(out.top_logprobs, raw.gather(1, out.top_token_ids))
    assert (out.top_logprobs[:, :-1] >= out.top_logprobs[:, 1:]).all()
    assert out.top_token_ids[:, 0].tolist() == logits.argmax(dim=-1).tolist()


def test_sampler_rejects_batch_that_does_not_match_logits() -> None:
    with pytest.raises(ValueError, match="one entry per logits row"):
        Sampler()(torch.zeros(2, 10), make_batch([SamplingParams()]))


def test_sampler_does_not_modify_caller_logits() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    before = logits.clone()
    Sampler(eos_token_ids={EOS})(
        logits, make_batch([SamplingParams(min_tokens=3, repetition_penalty=2.0, top_k=2)], [[0]], [[1]])
    )
    assert torch.equal(logits, before)
