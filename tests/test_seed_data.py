"""The built-in seed data: schema, size and balance; and the oasst1 conversion on a fixture."""

from collections import Counter
from pathlib import Path

from scipy.stats import spearmanr

from leakage import assert_no_leak, assert_project_has_no_leak
from srlm.io import read_jsonl
from srlm.seed import BUILTIN_DIR, limit, load_gold, load_ift, load_oasst1, load_ranked, oasst1_split, split

FIXTURE = Path(__file__).parent / "fixtures" / "oasst1_messages.jsonl"
TREES = Path(__file__).parent / "fixtures" / "oasst1_trees.jsonl"  # 60 trees: make_oasst1_trees.py


def test_builtin_ift_size_and_categories():
    ift = load_ift(BUILTIN_DIR / "ift.jsonl")
    assert len(ift) >= 250
    cats = Counter(r["category"] for r in ift)
    for c in ("writing", "open_qa", "reasoning", "maths", "coding", "advice", "summarising"):
        assert cats[c] >= 15, cats
    assert len({r["instruction"] for r in ift}) == len(ift)


def test_builtin_ranked_sets():
    ranked = load_ranked(BUILTIN_DIR / "ranked.jsonl")
    assert len(ranked) >= 150
    for s in ranked:
        ranks = sorted(r["rank"] for r in s["responses"])
        assert len(ranks) in (3, 4) and ranks == list(range(len(ranks))), s["id"]
    # neither the list order nor the length gives the rank away
    assert sum(s["responses"][0]["rank"] == 0 for s in ranked) < 0.4 * len(ranked)
    ranks = [r["rank"] for s in ranked for r in s["responses"]]
    assert abs(spearmanr(ranks, [len(r["text"].split()) for s in ranked for r in s["responses"]]).statistic) < 0.15
    best_is_longest = sum(max(s["responses"], key=lambda r: len(r["text"]))["rank"] == 0 for s in ranked)
    assert best_is_longest < 0.4 * len(ranked)
    assert Counter(s["category"] for s in ranked).most_common()[-1][1] >= 15  # every category


def test_builtin_gold_judgments_span_scores_and_decouple_length():
    gold = load_gold(BUILTIN_DIR / "gold_judgments.jsonl")  # also checks 'Score: N' matches the field
    assert len(gold) >= 220
    hist = Counter(g["score"] for g in gold)
    assert all(hist[s] == len(gold) / 6 for s in range(6)), hist  # evenly over 0-5
    rho = spearmanr([g["score"] for g in gold], [len(g["response"].split()) for g in gold]).statistic
    assert abs(rho) < 0.2, rho
    assert all(g["judgment"].rstrip().endswith(f"Score: {g['score']}") for g in gold)


def test_length_contrast_judgments_pair_a_good_and_a_bad_answer_of_opposite_lengths():
    """bench/judge_curve.py's EFT data against the length cue: per instruction, one good and one bad response of
    very different lengths, half with the brief one good; no instruction near any other built-in one."""
    recs = load_gold(BUILTIN_DIR / "length_contrast.jsonl")
    by = {}
    for r in recs:
        by.setdefault(r["instruction"], []).append(r)
    assert len(recs) == 96 and len(by) == 48 and all(len(v) == 2 for v in by.values())
    brief_good = 0
    for pair in by.values():
        good, bad = sorted(pair, key=lambda r: -r["score"])
        assert good["score"] >= 4 and bad["score"] <= 2 and good["judgment"].endswith(f"Score: {good['score']}")
        short, long_ = sorted((len(r["response"]) for r in pair))
        assert long_ > 3 * short
        brief_good += len(good["response"]) == short
    assert brief_good == 24
    assert abs(spearmanr([r["score"] for r in recs], [len(r["response"]) for r in recs]).statistic) < 0.15
    others = {
        r["instruction"]
        for name in ("ift", "ranked", "gold_judgments", "verifiable")
        for r in read_jsonl(BUILTIN_DIR / f"{name}.jsonl", None)
    }
    assert_no_leak(set(by), others)


def test_split_is_seeded_disjoint_and_order_free():
    recs = [{"id": f"x{i}", "instruction": f"{i} {w}"} for i, w in enumerate(("apples pears plums " * 17).split())]
    tr, ev = split({"a": recs}, 0.2, seed=1)["a"]
    assert len(ev) == 10 and not {r["id"] for r in tr} & {r["id"] for r in ev}
    assert split({"a": list(reversed(recs))}, 0.2, seed=1)["a"] == (tr, ev)
    assert limit(recs, 5, 1) == limit(recs, 5, 1) and len(limit(recs, 5, 1)) == 5


def test_split_keeps_near_duplicate_instructions_on_one_side_across_lists():
    ift = [
        {"id": f"i{k:02d}", "instruction": r["instruction"]}
        for k, r in enumerate(load_ift(BUILTIN_DIR / "ift.jsonl")[:40])
    ]
    gold = [
        {"id": f"g{k}", "instruction": r["instruction"].upper().rstrip(".")} for k, r in enumerate(ift[:12])
    ]  # equal after normalisation
    ranked = [
        {"id": f"r{k}", "instruction": "Please: " + r["instruction"]} for k, r in enumerate(ift[6:18])
    ]  # nearly equal
    parts = split({"ift": ift, "ranked": ranked, "gold": gold}, 0.25, seed=3)
    train = {r["instruction"] for tr, _ in parts.values() for r in tr}
    held_out = {r["instruction"] for _, ev in parts.values() for r in ev}
    assert_no_leak(train, held_out)
    for name, recs in (("ift", ift), ("ranked", ranked), ("gold", gold)):
        tr, ev = parts[name]
        assert len(tr) + len(ev) == len(recs) and 0 < len(ev) <= round(0.25 * len(recs))


def test_no_builtin_evaluation_instruction_is_equal_or_near_to_a_training_one(tmp_path, monkeypatch):
    """prepare_seed on the built-in data: every file the pipeline trains on against every one it evaluates on
    (the full comparison of every pair, not the index the split uses)."""
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "stages"))
    import prepare_seed

    from srlm.config import parse_params

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SRLM_TRACKING", "off")
    prepare_seed.run(parse_params({}))

    def instructions(name):
        lines = (tmp_path / f"data/seed/{name}.jsonl").read_text().splitlines()
        return {json.loads(line)["instruction"] for line in lines}

    train = set().union(*(instructions(f"{n}_train") for n in ("ift", "ranked", "gold")))
    held_out = set().union(*(instructions(f"{n}_eval") for n in ("ift", "ranked", "gold", "verifiable")))
    assert len(held_out) >= 300 and len(train) >= 400
    assert_project_has_no_leak(tmp_path)
    counts = json.loads((tmp_path / "metrics/prepare_seed.json").read_text())
    # enough held out for intervals of about ±5 points (issue 15), and >= 200 gold judgments to train on
    assert counts["ranked_eval"] >= 100 and counts["ift_eval"] >= 100 and counts["verifiable_eval"] >= 100
    assert counts["gold_train"] >= 200 and counts["gold_eval"] > 0  # gold is split too
    reserved = [json.loads(line) for line in (tmp_path / "data/reserved/m1.jsonl").read_text().splitlines()]
    assert {r["instruction"] for r in reserved} == held_out  # what generated prompts must avoid


def test_oasst1_conversion_follows_the_paper():
    ift, ranked = oasst1_split(*load_oasst1(str(FIXTURE)), max_ift=0, seed=0)
    # English first turns only; rank-0 reply for IFT; Spanish and second turns ignored.
    assert [r["instruction"] for r in ift][:1] == ["What is the boiling point of water at sea level?"]
    assert all("capital" not in r["instruction"] for r in ift + ranked)
    assert all(r["response"] != "23." for r in ift)
    by_id = {r["id"]: r for r in ift}
    assert by_id["oasst-p2"]["response"].startswith("Read a lot")
    # prompts used for IFT stay out of the judge data
    assert not {r["id"] for r in ift} & {r["id"] for r in ranked}


def test_oasst1_ranked_sets_when_ift_is_capped():
    pool_ift, pool_ranked = load_oasst1(str(FIXTURE))
    ift, ranked = oasst1_split(pool_ift, pool_ranked, max_ift=1, seed=0)
    assert len(ift) == 1
    assert {r["id"] for r in ranked} == {r["id"] for r in pool_ranked} - {ift[0]["id"]}
    assert {"oasst-p2", "oasst-p4"} <= {r["id"] for r in pool_ranked}
    p2 = next(r for r in pool_ranked if r["id"] == "oasst-p2")
    assert [x["rank"] for x in p2["responses"]] == [0, 1, 2]


def test_oasst1_split_in_the_paper_scale_profiles_proportions():
    """60 trees, the profile's switches with max_ift scaled from 4000 to 20: IFT from prompts with a
    rank-0 reply, the ranked sets from all the other prompts with ranked replies, neither sharing a prompt."""
    pool_ift, pool_ranked = load_oasst1(str(TREES))
    assert len(pool_ift) == 45 and len(pool_ranked) == 50  # 40 + 5 with a rank-0 reply; 40 + 10 ranked
    ift, ranked = oasst1_split(pool_ift, pool_ranked, max_ift=20, seed=1234)
    assert len(ift) == 20 and not {r["id"] for r in ift} & {r["id"] for r in ranked}
    singles = {f"oasst-t{i:03d}-p" for i in range(55, 60)}
    chosen_with_sets = len({r["id"] for r in ift} - singles)
    assert len(ranked) == 50 - chosen_with_sets >= 30  # every prompt not used for IFT is a ranked set
    assert {f"oasst-t{i:03d}-p" for i in range(40, 50)} <= {r["id"] for r in ranked}
    parts = split({"ift": ift, "ranked": ranked, "gold": []}, 0.2, seed=1234)
    assert [len(x) for x in parts["ift"]] == [16, 4]
    assert [len(x) for x in parts["ranked"]] == [len(ranked) - round(0.2 * len(ranked)), round(0.2 * len(ranked))]
    assert oasst1_split(pool_ift, pool_ranked, max_ift=20, seed=1234) == (ift, ranked)  # seeded
