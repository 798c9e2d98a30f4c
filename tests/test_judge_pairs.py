"""Meta-Rewarding's judge pairs (srlm.judge_pairs): which candidate the meta-judge looks at, the slot
weights and the battle matrix, the Bradley–Terry fit, the filters and the pair mix, on hand-made
judgments; the meta-judge's verdicts on the tiny model; and dpo@t handing the mix to the trainer."""

import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from srlm.generation import TransformersGenerator
from srlm.judge_pairs import (
    battle_matrix,
    bradley_terry,
    cap_score_share,
    comparisons,
    mix,
    position_weights,
    select_judge_pairs,
    shown_judgment,
    uncertain_candidate,
)
from srlm.judging import meta_verdicts
from srlm.prompts import judge_prompt, meta_judge_prompt
from srlm.sampling import SamplingParams, chat_prompt
from srlm.scores import label_tokens, parse_meta_verdict

CFG = SimpleNamespace(max_chosen_chars=1100, max_score_share=1.0)


def cand(pid, j, scores, finish="stop", texts=None):
    return {
        "prompt_id": pid,
        "candidate_id": f"{pid}-c{j}",
        "prompt": f"question {pid}",
        "response": f"answer {pid}{j}",
        "finish_reason": finish,
        "judgments": texts
        or [f"Reason {i} for {pid}{j}.\nScore: {s if s is not None else '?'}" for i, s in enumerate(scores)],
        "scores": scores,
        "expected_scores": [float("nan") if s is None else s + 0.1 for s in scores],
    }


def test_the_meta_judge_looks_at_the_candidate_the_judge_is_least_sure_of():
    rows = [
        cand("p", 0, [3, 3, 3]),  # no spread
        cand("p", 1, [1, 5, 3]),  # the widest, but cut off by the token limit
        cand("p", 2, [2, 4, None]),  # variance 1 over its two scored judgments
        cand("p", 3, [2, 3, 3]),
        cand("p", 4, [5, None, None]),  # one scored judgment: nothing to compare
    ]
    rows[1]["finish_reason"] = "length"
    best, idx = uncertain_candidate(rows, "sampled")
    assert best["candidate_id"] == "p-c2" and idx == [0, 1]
    assert uncertain_candidate(rows[:1] + rows[4:], "sampled") == (None, [])
    # the expected readout reads each judgment's own expected score (NaN: nothing read)
    assert uncertain_candidate(rows, "expected")[0]["candidate_id"] == "p-c2"
    with pytest.raises(ValueError, match="direct"):
        uncertain_candidate(rows, "direct")


def test_a_judgment_is_shown_with_its_readouts_score():
    assert shown_judgment("Relevant and clear.\nScore: 2", 4.4) == "Relevant and clear.\nScore: 4"
    assert shown_judgment("Relevant and clear.", 2.5) == "Relevant and clear.\nScore: 3"  # half up


def test_every_pair_of_judgments_is_compared_in_both_orders():
    assert comparisons(3) == [(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)]
    assert len(comparisons(11)) == 110  # the paper's N = 11: 55 pairs x 2 orders


def test_bradley_terry_recovers_known_strengths():
    true = np.array([1.0, 0.0, -0.5, -0.5])
    b = 10_000 * 1 / (1 + np.exp(-(true[:, None] - true[None, :])))  # B_mn = N p(m beats n)
    np.fill_diagonal(b, 0)
    fit = bradley_terry(b)
    assert fit == pytest.approx(true - true.mean(), abs=0.01)
    # one judgment that wins everything gets a finite, top strength (the prior), the others tie below it
    sweep = np.zeros((3, 3))
    sweep[0, 1] = sweep[0, 2] = 2
    s = bradley_terry(sweep)
    assert np.isfinite(s).all() and s[0] > s[1] + 1 and s[1] == pytest.approx(s[2], abs=1e-6)


def test_slot_weights_give_the_favoured_position_less_credit():
    assert position_weights(["A", "A", "A", "B", None]) == (0.25, 0.75)
    assert position_weights([None]) == (0.5, 0.5)
    # each judgment wins once, from slot A: w1 each, a draw
    b = battle_matrix(2, {(0, 1): "A", (1, 0): "A"}, "weights", (0.25, 0.75))
    assert b.tolist() == [[0.0, 0.25], [0.25, 0.0]]
    # judgment 0 wins from slot A (w1) and from slot B (w2)
    b = battle_matrix(2, {(0, 1): "A", (1, 0): "B"}, "weights", (0.25, 0.75))
    assert b.tolist() == [[0.0, 1.0], [0.0, 0.0]]


def test_agreement_needs_both_orders():
    assert battle_matrix(2, {(0, 1): "A", (1, 0): "B"}, "agreement").tolist() == [[0, 1], [0, 0]]
    assert battle_matrix(2, {(0, 1): "B", (1, 0): "A"}, "agreement").tolist() == [[0, 0], [1, 0]]
    assert battle_matrix(2, {(0, 1): "A", (1, 0): "A"}, "agreement").tolist() == [[0, 0.5], [0.5, 0]]
    assert battle_matrix(2, {(0, 1): "A", (1, 0): None}, "agreement").tolist() == [[0, 0], [0, 0]]


def verdicts_from(judge):
    """A meta-judge that calls judge(judgment A text, judgment B text) -> "A" | "B" | None."""
    return lambda items: [{"verdict": judge(a, b), "p_a": None} for _, _, a, b in items]


def probabilities_from(p_a):
    """A meta-judge whose p(A) is p_a(judgment A text, judgment B text)."""

    def read(items):
        ps = [p_a(a, b) for _, _, a, b in items]
        return [{"verdict": "A" if p > 0.5 else "B" if p < 0.5 else None, "p_a": p} for p in ps]

    return read


def score_of(text):
    return int(text.rsplit("Score: ", 1)[1])


@pytest.mark.parametrize("position", ["weights", "agreement"])
def test_a_meta_judge_that_prefers_higher_scores_picks_the_highest_against_the_lowest(position):
    rows = [cand("p", 0, [1, 4, 2]), cand("p", 1, [3, 3, 3]), cand("q", 0, [5, 0, 3])]
    prefer_high = verdicts_from(lambda a, b: "A" if score_of(a) > score_of(b) else "B")
    pairs, m = select_judge_pairs(rows, "sampled", prefer_high, position, CFG)
    assert [(p["id"], p["chosen_score"], p["rejected_score"]) for p in pairs] == [("p", 4, 1), ("q", 5, 0)]
    p = pairs[0]
    assert p["kind"] == "judge" and p["prompt"] == judge_prompt("question p", "answer p0")
    assert p["chosen"] == "Reason 1 for p0.\nScore: 4" and p["chosen_elo"] > p["rejected_elo"]
    assert m["comparisons"] == 12 and m["verdict_failures"] == 0 and m["prefers_higher_score_rate"] == 1.0
    assert m["judgment_score_3"] == 4 and m["judgment_score_5"] == 1  # every judgment of the iteration


@pytest.mark.parametrize("position", ["weights", "agreement"])
def test_a_meta_judge_that_only_follows_the_position_gives_no_pair(position):
    rows = [cand("p", 0, [1, 4, 2])]
    pairs, m = select_judge_pairs(rows, "sampled", verdicts_from(lambda a, b: "A"), position, CFG)
    assert pairs == [] and m["dropped_elo_tie"] == 1 and m["position_a_rate"] == 1.0


def test_calibration_finds_the_preference_under_a_constant_position_bias():
    """p(A) is 0.9 plus a little for the higher-scoring judgment: every verdict says A, so the paper's slot
    weights see nothing, while averaging p(A) over both orders recovers the preference."""
    rows = [cand("p", 0, [1, 4, 2]), cand("q", 0, [5, 0, 3])]

    def biased(a, b):
        return 0.9 + 0.01 * ((score_of(a) > score_of(b)) - (score_of(a) < score_of(b)))

    pairs, m = select_judge_pairs(rows, "sampled", probabilities_from(biased), "weights", CFG)
    assert pairs == [] and m["position_a_rate"] == 1.0 and m["dropped_elo_tie"] == 2
    pairs, m = select_judge_pairs(rows, "sampled", probabilities_from(biased), "calibrated", CFG)
    assert [(p["id"], p["chosen_score"], p["rejected_score"]) for p in pairs] == [("p", 4, 1), ("q", 5, 0)]
    # a meta-judge with no preference beyond the position gives no pair
    pairs, m = select_judge_pairs(rows, "sampled", probabilities_from(lambda a, b: 0.9), "calibrated", CFG)
    assert pairs == [] and m["dropped_elo_tie"] == 2
    with pytest.raises(ValueError, match="calibrated"):
        select_judge_pairs(rows, "sampled", verdicts_from(lambda a, b: "A"), "calibrated", CFG)


def test_calibrated_needs_the_probability_readout():
    from srlm.config import ConfigError, parse_params

    with pytest.raises(ConfigError, match="meta.verdict: probability"):
        parse_params({"meta": {"position": "calibrated", "verdict": "sampled"}})


def test_the_filters():
    prefer_high = verdicts_from(lambda a, b: "A" if score_of(a) > score_of(b) else "B")
    long = cand("p", 0, [1, 4], texts=["Short.\nScore: 1", "x" * 2000 + "\nScore: 4"])
    pairs, m = select_judge_pairs([long], "sampled", prefer_high, "weights", CFG)
    assert pairs == [] and m["dropped_too_long"] == 1
    assert (
        len(
            select_judge_pairs(
                [long], "sampled", prefer_high, "weights", SimpleNamespace(max_chosen_chars=0, max_score_share=1)
            )[0]
        )
        == 1
    )
    # expected scores 2.1 and 2.4 round to the same shown score: not a pair
    close = cand("q", 0, [2, 2])
    close["expected_scores"] = [2.1, 2.4]
    prefer_first = verdicts_from(lambda a, b: "A" if a.startswith("Reason 0") else "B")
    pairs, m = select_judge_pairs([close], "expected", prefer_first, "weights", CFG)
    assert pairs == [] and m["dropped_same_score"] == 1
    # unparsable verdicts are counted and credit nobody
    pairs, m = select_judge_pairs([cand("r", 0, [1, 4])], "sampled", verdicts_from(lambda a, b: None), "weights", CFG)
    assert pairs == [] and m["verdict_failures"] == 2 and m["verdict_failure_rate"] == 1.0


def test_no_score_takes_more_than_its_share_of_the_chosen_judgments():
    pairs = [
        {"chosen_score": s, "chosen_elo": 1000 + gap, "rejected_elo": 1000}
        for s, gap in [(5, 10), (5, 30), (5, 20), (4, 5), (3, 1)]
    ]
    kept, dropped = cap_score_share(pairs, 0.4)  # at most 2 of 5 chosen 5s: the two widest gaps
    assert dropped == 1 and [p["chosen_elo"] for p in kept] == [1030, 1020, 1005, 1001]
    assert cap_score_share(pairs[:1], 0.4) == (pairs[:1], 0)  # one pair is always allowed


def test_the_mix_caps_the_judge_pairs_share():
    actor, judge = [{"n": i} for i in range(6)], [{"j": i} for i in range(10)]
    rows, m = mix(actor, judge, 0.25, seed=1)  # 2 judge pairs with 6 actor pairs is 25 %
    assert rows[:6] == actor and m == {"actor_pairs": 6, "judge_pairs": 2, "judge_pairs_left_out": 8}
    assert mix(actor, judge, 0.25, seed=1) == (rows, m)  # seeded
    assert mix(actor, judge, 1.0, seed=1)[1]["judge_pairs"] == 10
    assert mix(actor, judge, 0.0, seed=1)[1]["judge_pairs"] == 0
    assert mix(actor, [], 0.5, seed=1) == (actor, {"actor_pairs": 6, "judge_pairs": 0, "judge_pairs_left_out": 0})


def test_the_meta_verdict_parser():
    assert parse_meta_verdict("It is more precise.\nWinner: Judgement A") == "A"
    assert parse_meta_verdict("**Winner:** [Judgment B].") == "B"
    assert parse_meta_verdict("Winner: A") is None  # the head-to-head's form is not a meta verdict
    assert parse_meta_verdict("Winner: Judgement A\nWinner: Judgement B") == "B"  # the last one counts
    assert parse_meta_verdict("no verdict") is None


def test_the_meta_judge_prompt_quotes_the_judges_rubric():
    text = meta_judge_prompt("Q?", "R.", "J1\nScore: 1", "J2\nScore: 2")
    assert text.count("point") >= 5 and "User: Q?\nResponse: R.\nJudgment A: J1\nScore: 1\nJudgment B: J2" in text
    assert text.endswith('"Winner: [Judgement A | Judgement B]"')


@pytest.mark.parametrize("mode", ["probability", "sampled"])
def test_meta_verdicts_on_the_tiny_model(tiny, mode):
    model, tok = tiny
    gen = TransformersGenerator(model, tok, batch_size=4, progress=False)
    items = [
        ("Say hi.", "Hello.", "Fine.\nScore: 4", "Bad.\nScore: 1"),
        ("Count.", "1 2", "Ok.\nScore: 2", "No.\nScore: 5"),
    ]
    sampling = SamplingParams(n=1, temperature=0.0, max_new_tokens=12)
    got = meta_verdicts(gen, items, mode, sampling)
    prompts = [chat_prompt(tok, meta_judge_prompt(*it)) for it in items]
    if mode == "sampled":
        want = [parse_meta_verdict(gen.generate([p], sampling)[0][0].text) for p in prompts]
        assert got == [{"verdict": v, "p_a": None} for v in want]
        return
    anchor, targets = label_tokens(tok, "Winner: Judgement", ["A", "B"])
    for p, v in zip(prompts, got):
        ids = tok(p, add_special_tokens=False).input_ids + tok(anchor, add_special_tokens=False).input_ids
        with torch.inference_mode():
            pa, pb = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)[targets].tolist()
        assert v["verdict"] == ("A" if pa > pb else "B") and v["p_a"] == pytest.approx(pa / (pa + pb), abs=2e-4)


def test_dpo_trains_on_the_actor_pairs_plus_the_judge_pairs(tmp_path, monkeypatch):
    """method=meta: the examples dpo@t hands to the trainer are the actor pairs and the mixed-in judge pairs."""
    import importlib.util
    from pathlib import Path

    from srlm import artifacts
    from srlm.config import parse_params

    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("dpo_stage", Path(__file__).parent.parent / "stages/dpo.py")
    dpo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dpo)
    actor = [
        {"id": f"a{i}", "kind": "preference", "prompt": f"q{i}", "chosen": "good", "rejected": "bad"} for i in range(3)
    ]
    judge = [
        {"id": f"j{i}", "kind": "judge", "prompt": f"judge q{i}", "chosen": "J+", "rejected": "J-"} for i in range(5)
    ]
    artifacts.pairs("1").write(actor)
    artifacts.judge_pairs("1").write(judge)
    seen = {}

    def fake_train(src, dst, examples, cfg, **kw):
        seen["examples"], seen["kw"] = examples, kw
        return {"train_loss": 0.0}

    monkeypatch.setattr(dpo, "train_dpo", fake_train)
    monkeypatch.setattr(dpo, "record_model", lambda *a, **k: None)
    monkeypatch.setattr(dpo, "checkpoint_dir", lambda *a, **k: tmp_path / "work")
    monkeypatch.setenv("SRLM_TRACKING", "off")
    params = parse_params({"method": "meta", "meta": {"max_judge_share": 0.5}})
    dpo.run(params, "1", {"prev": "m0", "model": "m1", "next": "m2"})
    prompts = [e["prompt"][0]["content"] for e in seen["examples"]]
    assert prompts[:3] == ["q0", "q1", "q2"] and len(prompts) == 6
    assert sum(p.startswith("judge") for p in prompts) == 3 and seen["kw"]["consistency"] == "none"
    metrics = __import__("json").loads(artifacts.iteration_metrics("1", "dpo").read_text())
    assert metrics["judge_pairs"] == 3 and metrics["judge_pairs_left_out"] == 2 and metrics["actor_pairs"] == 3
    # srlm ignores the judge pairs
    dpo.run(parse_params({}), "1", {"prev": "m0", "model": "m1", "next": "m2"})
    assert len(seen["examples"]) == 3


def test_bradley_terry_orders_a_random_battle_matrix_like_its_win_totals():
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(2, 6)
        b = np.array([[0 if i == j else rng.randint(0, 3) for j in range(n)] for i in range(n)], float)
        s = bradley_terry(b)
        net = b.sum(1) - b.sum(0)
        # with equal numbers of comparisons per pair, stronger means a higher net win total (ties aside)
        if all(b[i, j] + b[j, i] == b[0, 1] + b[1, 0] for i in range(n) for j in range(n) if i != j):
            assert all((s[i] > s[j]) == (net[i] > net[j]) for i in range(n) for j in range(n) if net[i] != net[j])
        assert math.isclose(s.mean(), 0, abs_tol=1e-9)
