"""The built-in seed data: schema, size and balance; and the oasst1 conversion on a fixture."""
from collections import Counter
from pathlib import Path

from scipy.stats import spearmanr

from srlm.seed import BUILTIN_DIR, limit, load_gold, load_ift, load_oasst1, load_ranked, split

FIXTURE = Path(__file__).parent / "fixtures" / "oasst1_messages.jsonl"


def test_builtin_ift_size_and_categories():
    ift = load_ift(BUILTIN_DIR / "ift.jsonl")
    assert len(ift) >= 150
    cats = Counter(r["category"] for r in ift)
    for c in ("writing", "open_qa", "reasoning", "maths", "coding", "advice", "summarising"):
        assert cats[c] >= 15, cats
    assert len({r["instruction"] for r in ift}) == len(ift)


def test_builtin_ranked_sets():
    ranked = load_ranked(BUILTIN_DIR / "ranked.jsonl")
    assert len(ranked) >= 50
    for s in ranked:
        ranks = sorted(r["rank"] for r in s["responses"])
        assert len(ranks) in (3, 4) and ranks == list(range(len(ranks))), s["id"]
    # the list order must not give the rank away
    assert sum(s["responses"][0]["rank"] == 0 for s in ranked) < 0.6 * len(ranked)


def test_builtin_gold_judgments_span_scores_and_decouple_length():
    gold = load_gold(BUILTIN_DIR / "gold_judgments.jsonl")   # also checks 'Score: N' matches the field
    assert len(gold) >= 50
    hist = Counter(g["score"] for g in gold)
    assert all(hist[s] >= 5 for s in range(6)), hist
    rho = spearmanr([g["score"] for g in gold], [len(g["response"].split()) for g in gold]).statistic
    assert abs(rho) < 0.2, rho
    assert all(g["judgment"].rstrip().endswith(f"Score: {g['score']}") for g in gold)


def test_split_is_seeded_disjoint_and_order_free():
    recs = [{"id": f"x{i}"} for i in range(50)]
    tr, ev = split(recs, 0.2, seed=1)
    assert len(ev) == 10 and not {r["id"] for r in tr} & {r["id"] for r in ev}
    assert split(list(reversed(recs)), 0.2, seed=1) == (tr, ev)
    assert limit(recs, 5, 1) == limit(recs, 5, 1) and len(limit(recs, 5, 1)) == 5


def test_oasst1_conversion_follows_the_paper():
    ift, ranked = load_oasst1(str(FIXTURE))
    # English first turns only; rank-0 reply for IFT; Spanish and second turns ignored.
    assert [r["instruction"] for r in ift][:1] == ["What is the boiling point of water at sea level?"]
    assert all("capital" not in r["instruction"] for r in ift + ranked)
    assert all(r["response"] != "23." for r in ift)
    by_id = {r["id"]: r for r in ift}
    assert by_id["oasst-p2"]["response"].startswith("Read a lot")
    # prompts used for IFT stay out of the judge data
    assert not {r["id"] for r in ift} & {r["id"] for r in ranked}


def test_oasst1_ranked_sets_when_ift_is_capped():
    ift, ranked = load_oasst1(str(FIXTURE), max_ift=1)
    assert len(ift) == 1
    assert {r["id"] for r in ranked} == {"oasst-p2", "oasst-p4"}
    p2 = next(r for r in ranked if r["id"] == "oasst-p2")
    assert [x["rank"] for x in p2["responses"]] == [0, 1, 2]
