"""srlm.judging on a real model and tokenizer (the tiny Llama, transformers backend, the CPU default): the
`Score:` digit and `Winner:` label tokens, the expected-score readout of `judge_responses` and the verdict
probabilities of `pairwise_verdicts`, each checked against a plain forward pass of the model."""

import pytest
import torch

from srlm.generation import TransformersGenerator
from srlm.judging import judge_responses, pairwise_verdicts
from srlm.prompts import judge_prompt, pairwise_prompt
from srlm.sampling import SamplingParams, chat_prompt
from srlm.scores import (
    _before_score,
    candidate_scores,
    expected_score,
    label_tokens,
    parse_score,
    parse_verdict,
    score_tokens,
)

ITEMS = [("Name a colour.", "Blue."), ("Count to three.", "1 2 3"), ("Say hi.", "Hello there, friend.")]


@pytest.fixture(scope="module")
def gen(tiny):
    model, tok = tiny
    return TransformersGenerator(model, tok, batch_size=4, progress=False)


def next_token(model, tok, prompt: str, continuation: str, targets: list[int]) -> torch.Tensor:
    """p(targets) after prompt + continuation, tokenized as the generators do (each part on its own)."""
    ids = tok(prompt, add_special_tokens=False).input_ids + tok(continuation, add_special_tokens=False).input_ids
    with torch.inference_mode():
        return torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)[targets]


@pytest.mark.parametrize("word,labels", [("Score:", "012345"), ("Winner:", "AB")])
@pytest.mark.parametrize("before", ["", "Relevant and complete.\n", "**Reasoning:** fine.\n\n"])
def test_the_tokens_read_after_score_and_winner_are_what_the_text_tokenizes_to(tiny, word, labels, before):
    """The readouts append one target token to the anchor text: that must be how the tokenizer
    itself writes `Score: 4` or `Winner: B` after any judgment text."""
    tok = tiny[1]

    def ids(text):
        return tok(text, add_special_tokens=False).input_ids

    anchor, targets = score_tokens(tok) if word == "Score:" else label_tokens(tok, word, list(labels))
    assert anchor.startswith(word) and len(set(targets)) == len(labels)
    for label, target in zip(labels, targets):
        assert ids(f"{before}{word} {label}") == ids(before + anchor) + [target], label
        assert tok.decode([target]).strip() == label


def test_before_score_cuts_at_a_trailing_score_too():
    """What this model writes greedily (and any judgment cut off right after `Score:`): the readout must
    continue from that `Score:`, not from a second one appended after it."""
    assert _before_score("Short and clear.\nScore:") == "Short and clear.\n"


def test_before_score_cuts_at_the_last_score():
    assert _before_score("Score: 2 at first, then\nScore: 4") == "Score: 2 at first, then\n"
    assert _before_score("**Score:** 3") == "**"
    assert _before_score("No verdict at all.  ") == "No verdict at all.\n"


def test_judge_responses_reads_the_expected_score_after_each_judgment(tiny, gen):
    model, tok = tiny
    # 8 new tokens: some judgments end in `Score: N`, others are cut off before it
    sampling = SamplingParams(n=3, temperature=0.9, top_p=1.0, max_new_tokens=8, seed=3)
    results = judge_responses(gen, ITEMS, sampling)
    anchor, targets = score_tokens(tok)
    judgments = [j for r in results for j in r["judgments"]]
    assert len(judgments) == 9
    # this model writes judgments with a digit and without: both cases are read
    assert {parse_score(j).status for j in judgments} >= {"ok", "no_score"}
    for (ins, resp), r in zip(ITEMS, results):
        assert r["scores"] == [parse_score(j).score for j in r["judgments"]]
        assert r["statuses"] == [parse_score(j).status for j in r["judgments"]]
        prompt = chat_prompt(tok, judge_prompt(ins, resp))
        for j, got in zip(r["judgments"], r["expected_scores"]):
            want = expected_score(next_token(model, tok, prompt, _before_score(j) + anchor, targets).tolist())
            assert got == pytest.approx(want, abs=2e-4)  # stored rounded to 4 decimals


@pytest.mark.parametrize("mode", ["probability", "sampled"])
def test_pairwise_verdicts_on_the_transformers_backend(tiny, gen, mode):
    model, tok = tiny
    triples = [(ins, resp, "No.") for ins, resp in ITEMS]
    sampling = SamplingParams(n=1, temperature=0.0, max_new_tokens=16)
    rows = pairwise_verdicts(gen, triples, mode, sampling)
    assert len(rows) == len(triples)
    for (ins, x, y), r in zip(triples, rows):
        both = {"ab": chat_prompt(tok, pairwise_prompt(ins, x, y)), "ba": chat_prompt(tok, pairwise_prompt(ins, y, x))}
        for order, prompt in both.items():
            if mode == "sampled":  # the greedy text, and the verdict parsed from it
                text = gen.generate([prompt], sampling)[0][0].text
                assert r[f"text_{order}"] == text and r[order] == parse_verdict(text)
                continue
            anchor, targets = label_tokens(tok, "Winner:", ["A", "B"])
            pa, pb = next_token(model, tok, prompt, anchor, targets).tolist()
            assert r[f"p_a_{order}"] == pytest.approx(pa / (pa + pb), abs=2e-4)
            assert r[order] == ("A" if pa > pb else "B")


def test_the_direct_readout_reads_the_digits_right_after_the_prompt(tiny, gen):
    """judge.scoring: direct writes no judgment: `Score:` starts the answer, one forward pass per item."""
    model, tok = tiny
    sampling = SamplingParams(n=3, temperature=0.9, top_p=1.0, max_new_tokens=8, seed=3)
    results = judge_responses(gen, ITEMS, sampling, scoring="direct")
    anchor, targets = score_tokens(tok)
    for (ins, resp), r in zip(ITEMS, results):
        assert r["judgments"] == [] and r["statuses"] == []
        p = next_token(model, tok, chat_prompt(tok, judge_prompt(ins, resp)), anchor, targets)
        assert r["direct_scores"] == [pytest.approx(expected_score(p.tolist()), abs=2e-4)]
        assert r["digit_mass"] == [pytest.approx(float(p.sum()), abs=2e-4)]
    scores = [candidate_scores(r, "direct") for r in results]
    assert all(s["score"] == s["direct_score"] is not None and s["sampled_score"] is None for s in scores)
    with pytest.raises(ValueError, match="direct_scores"):
        candidate_scores(judge_responses(gen, ITEMS[:1], sampling, expected=False)[0], "direct")


def test_table2_under_the_direct_readout(gen):
    from srlm.evaluation import judge_ranked_sets

    sets = [
        {"id": f"s{i}", "instruction": ins, "responses": [{"text": resp, "rank": 0}, {"text": "No.", "rank": 1}]}
        for i, (ins, resp) in enumerate(ITEMS)
    ]
    sampling = SamplingParams(n=3, temperature=0.9, top_p=1.0, max_new_tokens=8, seed=3)
    rows, metrics = judge_ranked_sets(gen, sets, sampling, "direct")
    assert len(rows) == 6 and all(r["score"] == r["direct_score"] is not None for r in rows)
    assert metrics["parse_rate"] is None and metrics["direct_pairs"] == 3
    assert 0 <= metrics["direct_pairwise_accuracy"] <= 1 and "direct_pairwise_accuracy_ci_low" in metrics
    assert not any(k.startswith("sampled_") for k in metrics)
    # every human-preferred response is longer than "No.": the split has only that side; length alone is right
    assert metrics["direct_pairs_preferred_longer"] == 3 and metrics["direct_pairs_preferred_shorter"] == 0
    assert metrics["direct_accuracy_preferred_longer"] == metrics["direct_pairwise_accuracy"]
    assert metrics["length_only_pairwise_accuracy"] == 1.0
