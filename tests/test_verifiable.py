"""The judge-free instruction-following measure: lm-eval's IFEval checkers on the project's prompts, and the
accuracies and intervals computed from them."""

import json

import pytest

from srlm.io import DataError
from srlm.metrics import follow_metrics, paired_difference
from srlm.seed import BUILTIN_DIR, load_verifiable
from srlm.verifiable import check, validate


def record(ids, kwargs, instruction="Say something about rivers."):
    return {"id": "x", "instruction": instruction, "instruction_id_list": ids, "kwargs": kwargs}


def test_the_checkers_follow_their_instructions():
    r = record(
        ["punctuation:no_comma", "length_constraints:number_words"], [{}, {"num_words": 8, "relation": "less than"}]
    )
    assert check(r, "Rivers run to the sea.") == ([True, True], [True, True])
    assert check(r, "Rivers, lakes and seas.")[0] == [False, True]
    assert check(r, "Rivers run through valleys and towns to reach the open sea.")[0] == [True, False]
    j = record(["detectable_format:json_format"], [{}])
    assert check(j, '{"river": "Nile"}')[0] == [True]
    assert check(j, "The Nile.")[0] == [False]
    # loose also accepts the answer without its first line (a preamble such as "Sure, here it is:")
    assert check(j, 'Here you go\n{"river": "Nile"}') == ([False], [True])
    k = record(["keywords:forbidden_words", "change_case:english_lowercase"], [{"forbidden_words": ["water"]}, {}])
    assert check(k, "rivers carve canyons.")[0] == [True, True]
    assert check(k, "Rivers carry water.")[0] == [False, False]


def test_validate_names_the_record_and_refuses_what_would_make_scores_random():
    ok = record(["length_constraints:number_words"], [{"num_words": 50, "relation": "at least"}])
    assert validate([ok], "f.jsonl") == [ok]
    with pytest.raises(DataError, match=r"f.jsonl: record 1 \(id 'x'\): unknown instruction id 'length:words'"):
        validate([record(["length:words"], [{}])], "f.jsonl")
    # without num_words the checker would draw one at random
    with pytest.raises(DataError, match=r"needs \['num_words'\]"):
        validate([record(["length_constraints:number_words"], [{"relation": "at least"}])], "f.jsonl")
    with pytest.raises(DataError, match="relation"):
        validate([record(["length_constraints:number_words"], [{"num_words": 5, "relation": "exactly"}])], "f.jsonl")


def test_the_loader_checks_the_schema(tmp_path):
    f = tmp_path / "v.jsonl"
    f.write_text(json.dumps(record(["punctuation:no_comma"], [{}, {}])) + "\n")
    with pytest.raises(DataError, match=r"v.jsonl: record 1 \(id 'x'\): instruction_id_list and kwargs"):
        load_verifiable(f)


def test_every_builtin_reference_answer_passes_and_a_broken_one_does_not():
    """The built-in prompts are checkable as written: each has a reference answer that follows all of its
    instructions (strict); and the checks bite: the same answer with its instructions swapped for
    contradictory ones fails."""
    records = validate(load_verifiable(BUILTIN_DIR / "verifiable.jsonl"), "verifiable.jsonl")
    refs = {json.loads(line)["id"]: json.loads(line)["reference"] for line in open(BUILTIN_DIR / "verifiable.jsonl")}
    assert len(records) >= 100
    for r in records:
        strict, loose = check(r, refs[r["id"]])
        assert all(strict) and all(loose), (r["id"], r["instruction_id_list"], strict)
    # every reference is at least 1 word and at most 2000: "fewer than 1 word" fails each of them
    broken = [
        check(
            r
            | {
                "instruction_id_list": ["length_constraints:number_words"],
                "kwargs": [{"num_words": 1, "relation": "less than"}],
            },
            refs[r["id"]],
        )[0]
        for r in records
    ]
    assert not any(all(s) for s in broken)
    ids = {i for r in records for i in r["instruction_id_list"]}
    assert len(ids) >= 15, sorted(ids)  # spread over the checker families


def rows(followed: list[list[bool]]) -> list[dict]:
    return [{"strict": f, "loose": f, "instruction_id_list": [f"i{k}" for k in range(len(f))]} for f in followed]


def test_prompt_and_instruction_level_accuracy():
    m = follow_metrics(rows([[True, True], [True, False], [False]]), seed=0)
    assert m["prompt_strict"] == pytest.approx(1 / 3) and m["instruction_strict"] == pytest.approx(3 / 5)
    assert m["prompts"] == 3 and m["instructions"] == 5
    assert m["prompt_strict_ci_low"] <= m["prompt_strict"] <= m["prompt_strict_ci_high"]
    assert m["strict_by_instruction"] == {"i0": pytest.approx(2 / 3), "i1": 0.5}


def test_paired_difference_sees_what_two_separate_intervals_cannot():
    """Two models that differ on the same 5 of 40 prompts: a separate interval of each covers the other's
    value, the paired interval of their difference excludes zero."""
    base = [[k % 2 == 0] for k in range(40)]
    better = [[True] if k < 10 else b for k, b in enumerate(base)]  # 5 more followed (k = 1, 3, 5, 7, 9)
    a, b = follow_metrics(rows(better), seed=1), follow_metrics(rows(base), seed=1)
    assert a["prompt_strict_ci_low"] <= b["prompt_strict"]
    d = paired_difference(rows(better), rows(base), follow_metrics, ["prompt_strict"], seed=1)
    assert d["prompt_strict_diff"] == pytest.approx(5 / 40) and d["n"] == 40
    assert 0 < d["prompt_strict_diff_ci_low"] < d["prompt_strict_diff_ci_high"]
    same = paired_difference(rows(base), rows(base), follow_metrics, ["prompt_strict"], seed=1)
    assert (
        same["prompt_strict_diff"] == 0 and same["prompt_strict_diff_ci_low"] == same["prompt_strict_diff_ci_high"] == 0
    )
    with pytest.raises(ValueError, match="differ in number"):
        paired_difference(rows(base), rows(base[:3]), follow_metrics, ["prompt_strict"], seed=1)
