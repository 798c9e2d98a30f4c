import dataclasses

import pytest
import torch

from srlm import generation
from srlm.generation import TransformersGenerator
from srlm.prompts import judge_prompt
from srlm.sampling import SamplingParams, chat_prompt, sample_responses


def _prompts(tok):
    # shared judge prefix + suffixes of different lengths: exercises prefix reuse and mid padding
    return [chat_prompt(tok, judge_prompt("question " * (i + 1), "answer " * (3 * i))) for i in range(5)] + [
        chat_prompt(tok, "hello")
    ]


def test_batched_greedy_equals_one_prompt_at_a_time(tiny):
    model, tok = tiny
    gen = TransformersGenerator(model, tok, batch_size=4, progress=False)
    prompts = _prompts(tok)
    outs = gen.generate(prompts, SamplingParams(n=1, temperature=0, max_new_tokens=12))
    for p, o in zip(prompts, outs):
        enc = tok(p, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            ref = model.generate(
                **enc, max_new_tokens=12, do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
            )
        new = [t for t in ref[0, enc.input_ids.shape[1] :].tolist() if t != tok.eos_token_id]
        assert o[0].text == tok.decode(new, skip_special_tokens=True).strip()


def test_n_samples_per_prompt_seeded_and_in_order(tiny):
    model, tok = tiny
    gen = TransformersGenerator(model, tok, batch_size=8, progress=False)
    prompts = _prompts(tok)
    sp = SamplingParams(n=3, temperature=0.9, top_p=0.95, max_new_tokens=10, seed=7)
    a = gen.generate(prompts, sp)
    assert [len(x) for x in a] == [3] * len(prompts)
    assert a == gen.generate(prompts, sp)  # same seed, same samples
    assert a != gen.generate(prompts, SamplingParams(n=3, temperature=0.9, top_p=0.95, max_new_tokens=10, seed=8))
    assert all(c.finish_reason in ("stop", "length") and c.num_tokens <= 10 for x in a for c in x)


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_continuous_batching_draws_what_fixed_batches_draw(tiny, temperature, monkeypatch):
    """The decode pool (rows leave when they end, waiting prompts take their place) gives each sample exactly
    the tokens of model.generate over fixed batches, whatever the batch size: every sample has its own random
    stream. Batch sizes 3 and 5 with n=2 make the pool admit prompts mid-decode, move rows into the holes of
    ended ones and move its columns to the front."""
    from srlm.generation import DecodePool

    compactions = []
    compact = DecodePool._compact
    monkeypatch.setattr(DecodePool, "_compact", lambda self: compactions.append(self.col) or compact(self))
    model, tok = _random_model(tiny[1]), tiny[1]
    prompts = _prompts(tok) + [chat_prompt(tok, "word " * i) for i in range(1, 8)]
    sp = SamplingParams(n=2, temperature=temperature, top_p=0.9, max_new_tokens=16, seed=3)
    # Rows must end at different steps, some by an end token and some at the cut. A random model (the trained
    # tiny one answers every prompt alike) rarely writes its end token, and near-ties round differently from
    # one CPU to another, so the end tokens and the cut are chosen from what it writes here: one more end
    # token, the one whose first places in the answers differ most, and the cut at the latest end.
    raw = []
    done = generation._completion
    monkeypatch.setattr(generation, "_completion", lambda tk, t, eos: raw.append(t) or done(tk, t, eos))
    eos = _generator(model, tok, 4, False, None).eos_ids
    _generator(model, tok, 4, False, eos).generate(prompts, sp)
    answers = [generation._cut(t, eos) for t in raw]
    stop = max({t for a in answers for t in a}, key=lambda t: len({_end(a, t) for a in answers}))
    ends = [_end(a, stop) for a in answers]
    assert len(set(ends)) > 1, answers
    eos, sp = eos + [stop], dataclasses.replace(sp, max_new_tokens=max(ends))
    fixed = _generator(model, tok, 4, False, eos).generate(prompts, sp)
    assert {c.finish_reason for cs in fixed for c in cs} == {"stop", "length"}
    for batch_size in (3, 5, 64):
        assert _generator(model, tok, batch_size, True, eos).generate(prompts, sp) == fixed
    assert compactions


def _random_model(tok):
    """The tiny Llama's shape, untrained (seeded), with its own output layer: tied to the embeddings, a random
    model writes one token over and over, and every row would end at the same step."""
    from transformers import LlamaForCausalLM

    from tiny import tiny_config

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config(tok, tie_word_embeddings=False)).eval()


def _end(answer: list[int], token: int) -> int:
    return answer.index(token) if token in answer else len(answer)


def _generator(model, tok, batch_size: int, pooled: bool, eos_ids: list[int] | None):
    g = TransformersGenerator(model, tok, batch_size=batch_size, progress=False, pooled=pooled)
    if eos_ids is not None:
        g.eos_ids = eos_ids
    return g


def test_models_with_sliding_window_layers_decode_in_fixed_batches():
    """The pool holds full-attention layers only; a cache with sliding-window layers (Gemma 2, Qwen2 with its
    window on) makes `generate` take the fixed batches."""
    from types import SimpleNamespace

    from transformers import Gemma2Config, LlamaConfig, Qwen2Config

    from srlm.generation import _full_attention_only

    assert _full_attention_only(SimpleNamespace(config=LlamaConfig(num_hidden_layers=2)))
    qwen = Qwen2Config(num_hidden_layers=2, use_sliding_window=True, sliding_window=8, max_window_layers=0)
    assert not _full_attention_only(SimpleNamespace(config=qwen))
    assert not _full_attention_only(SimpleNamespace(config=Gemma2Config(num_hidden_layers=2)))


def test_sample_responses_ids(tiny):
    model, tok = tiny
    gen = TransformersGenerator(model, tok, batch_size=4, progress=False)
    rows = sample_responses(
        gen,
        [{"id": "p0", "prompt": "Say hi."}, {"id": "p1", "prompt": "Count to 3."}],
        SamplingParams(n=2, max_new_tokens=6),
    )
    assert [r["candidate_id"] for r in rows] == ["p0-c0", "p0-c1", "p1-c0", "p1-c1"]
    assert rows[2]["prompt"] == "Count to 3."


def test_fast_attention_matches_stock_sdpa(tiny_model_dir):
    from srlm.generation import register_fast_attention
    from srlm.modeling import load_model

    stock, tok = load_model(tiny_model_dir)
    fast, _ = load_model(tiny_model_dir, attn_implementation=register_fast_attention())
    tok.padding_side = "left"
    enc = tok(["short", "a much longer prompt with many more tokens in it"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        a, b = stock(**enc).logits, fast(**enc).logits
    assert torch.allclose(a[enc.attention_mask.bool()], b[enc.attention_mask.bool()], atol=1e-5)


def test_fast_attention_decode_step_matches_stock_sdpa(tiny_model_dir):
    """A decode step (one query position over a left-padded cache) through the folded grouped-KV path gives the
    stock path's logits."""
    from srlm.generation import register_fast_attention
    from srlm.modeling import load_model

    stock, tok = load_model(tiny_model_dir)
    fast, _ = load_model(tiny_model_dir, attn_implementation=register_fast_attention())
    assert fast.config.num_attention_heads != fast.config.num_key_value_heads  # the folded path is exercised
    tok.padding_side = "left"
    enc = tok(["short", "a much longer prompt with many more tokens in it"], return_tensors="pt", padding=True)
    nxt = torch.tensor([[5], [9]])
    mask = torch.cat([enc.attention_mask, torch.ones(2, 1, dtype=torch.long)], 1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = []
    with torch.inference_mode():
        for model in (stock, fast):
            out = model(**enc, position_ids=pos[:, :-1], use_cache=True)
            step = model(
                input_ids=nxt, attention_mask=mask, position_ids=pos[:, -1:], past_key_values=out.past_key_values
            )
            logits.append(step.logits[:, -1])
    assert torch.allclose(logits[0], logits[1], atol=1e-5)
    assert not torch.allclose(logits[0][0], logits[0][1], atol=1e-3)  # the two rows saw different contexts


@torch.inference_mode()
def test_pool_reads_a_shared_prefix_once_with_the_same_logits(tiny_model_dir):
    """Cascade attention: a DecodePool that holds the prompts' shared prefix once (rows hold only what follows
    it) gives, step by step, the logits of a pool whose rows each hold a copy, through admissions and rows that
    leave. Both pools are fed the same tokens."""
    from srlm.generation import DecodePool, cascades, register_fast_attention
    from srlm.modeling import load_model

    model, tok = load_model(tiny_model_dir, attn_implementation=register_fast_attention())
    stock, _ = load_model(tiny_model_dir)
    assert cascades(model) and not cascades(stock)  # other attention would ignore the prefix
    gen = TransformersGenerator(model, tok, batch_size=8, progress=False)
    prompts = [chat_prompt(tok, judge_prompt("question " * (i + 1), "answer " * (3 * i))) for i in range(5)]
    ids, plen, prefix_cache = gen._tokenize_with_prefix(prompts, 12, "test")
    assert plen > 20  # the judge rubric
    n, eos = 2, [tok.convert_tokens_to_ids("<|endoftext|>")]  # ended below by schedule, not by the model
    kw = dict(rows=8, width=max(map(len, ids)) - 1, max_new_tokens=12, device=torch.device("cpu"))
    copied, cascade = DecodePool(model, **kw), DecodePool(model, **kw, prefix=prefix_cache)
    assert cascade.width == copied.width - plen
    waiting, steps, live_at_admission = [[0, 1, 2], [3, 4]], 0, []
    while waiting or copied.live:
        if waiting and copied.rows - copied.live >= n * len(waiting[0]):
            take = waiting.pop(0)
            live_at_admission.append(copied.live)
            cache, mask, last = gen._prefill_prompts([ids[i] for i in take], plen, prefix_cache)
            keys = [(i, j) for i in take for j in range(n)]
            for pool in (copied, cascade):
                pool.admit(cache, mask, last, n, keys, [None] * len(keys))
        a, b = copied.step(model), cascade.step(model)
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (steps, (a - b).abs().max())
        nxt = a.argmax(-1)
        nxt[(torch.arange(len(nxt)) + steps) % 5 == 4] = eos[0]  # rows leave at different steps; others move up
        assert copied.append(nxt, eos) == cascade.append(nxt, eos)
        steps += 1
    assert live_at_admission[1] > 0  # the second prompts joined rows already decoding


def test_next_token_probs_equal_a_plain_forward(tiny):
    model, tok = tiny
    gen = TransformersGenerator(model, tok, batch_size=4, progress=False)
    prompts = _prompts(tok)[:4]
    conts = [["the answer\nScore:", "x"], ["good", "no no no Score:"], ["a", "b"], ["yes Score:", "short"]]
    targets = [5, 6, 7]
    got = gen.next_token_probs(prompts, conts, targets)
    for p, cs, g in zip(prompts, conts, got):
        for c, row in zip(cs, g):
            ids = tok(p, add_special_tokens=False).input_ids + tok(c, add_special_tokens=False).input_ids
            with torch.inference_mode():
                ref = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1], -1)[targets]
            assert torch.allclose(row, ref, atol=1e-5)


@pytest.mark.parametrize("positions_per_product", [None, 3])
def test_continuation_logprobs_equal_a_plain_forward(tiny, monkeypatch, positions_per_product):
    """Left-padded batches of different lengths give each continuation token's log-probability as one
    unpadded forward pass does, also with the output layer taken a few positions at a time."""
    model, tok = tiny
    if positions_per_product:
        vocab = model.get_output_embeddings().weight.shape[0]
        monkeypatch.setattr(generation, "HEAD_CHUNK_ELEMENTS", positions_per_product * vocab)
    gen = TransformersGenerator(model, tok, batch_size=8, progress=False)
    prompts = _prompts(tok)
    conts = ["a short one", "x", "a much longer continuation " * 4, "yes", "no no", "the end"]
    got = gen.continuation_logprobs(prompts, conts)
    for p, c, g in zip(prompts, conts, got):
        p_ids, c_ids = tok(p, add_special_tokens=False).input_ids, tok(c, add_special_tokens=False).input_ids
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=torch.tensor([p_ids + c_ids])).logits[0].float(), -1)
        ref = [logp[len(p_ids) - 1 + t, tok_id].item() for t, tok_id in enumerate(c_ids)]
        assert len(g) == len(c_ids) and g == pytest.approx(ref, abs=1e-4)
    with pytest.raises(ValueError, match="non-empty continuation"):
        gen.continuation_logprobs(prompts[:1], [""])


@pytest.mark.parametrize("temperature, top_p", [(0.7, 0.9), (1.0, 0.95), (0.9, 1.0)])
def test_the_nucleus_sampler_draws_from_transformers_top_p_distribution(temperature, top_p):
    """The same distribution as TemperatureLogitsWarper + TopPLogitsWarper, including rows whose nucleus is
    wider than the top k it searches first (the near-flat rows here)."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    from srlm.generation import NucleusSampler

    torch.manual_seed(0)
    scores = torch.randn(6, 2000) * torch.tensor([[8.0], [3.0], [1.0], [0.1], [5.0], [2.0]])
    expected = TemperatureLogitsWarper(temperature)(None, scores.clone())
    if top_p < 1:
        expected = TopPLogitsWarper(top_p)(None, expected)
    expected = expected.softmax(-1)
    sampler = NucleusSampler(temperature, top_p, k=64)
    p, idx = sampler.nucleus(scores)
    got = torch.zeros_like(scores).scatter_add_(-1, idx, p)
    got = got / got.sum(-1, keepdim=True)
    assert torch.equal(got > 0, expected > 0)
    assert torch.allclose(got, expected, atol=1e-6)
    # draw inverts each row's distribution: evenly spaced uniforms give every token its probability's share
    m = 5_000
    u = (torch.arange(m) + 0.5) / m
    for row in range(len(scores)):
        drawn = sampler.draw(scores[row].expand(m, -1), u)
        freq = torch.bincount(drawn, minlength=scores.shape[1]) / m
        assert (freq - expected[row]).abs().max() <= 2 / m


def test_the_growing_cache_layer_holds_what_concatenation_would():
    """GrowingLayer appends into room set aside (no copy of the whole cache per step) and returns the same keys
    and values as DynamicLayer's concatenation, through a prefill, decode steps, a batch repeat and a crop."""
    from transformers.cache_utils import DynamicLayer

    from srlm.generation import GrowingLayer

    torch.manual_seed(0)
    grow, cat = GrowingLayer(room=3), DynamicLayer()
    steps = [5, 1, 1, "repeat", 1, 1, 1, 1, "crop", 2]  # 4 decode steps after the repeat: more than the room
    batch = 2
    for step in steps:
        if step == "repeat":
            grow.batch_repeat_interleave(2), cat.batch_repeat_interleave(2)
            batch *= 2
            continue
        if step == "crop":
            grow.crop(-2), cat.crop(-2)
            continue
        k, v = torch.randn(batch, 3, step, 4), torch.randn(batch, 3, step, 4)
        gk, gv = grow.update(k, v)
        ck, cv = cat.update(k, v)
        assert torch.equal(gk, ck) and torch.equal(gv, cv)
        assert grow.get_seq_length() == cat.get_seq_length()
    storage = grow._storage[0]
    before = storage.data_ptr()
    grow.room = 8
    grow.update(torch.randn(batch, 3, 1, 4), torch.randn(batch, 3, 1, 4))  # re-allocates once, with room 8
    after = grow._storage[0].data_ptr()
    grow.update(torch.randn(batch, 3, 1, 4), torch.randn(batch, 3, 1, 4))
    assert grow._storage[0].data_ptr() == after != before  # the next step wrote in place
