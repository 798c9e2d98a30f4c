import pytest

from srlm.scores import agrees_with_ranking, average, judge_metrics, parse_score


@pytest.mark.parametrize(
    "text,score,status",
    [
        ("Relevant and complete.\nScore: 4", 4, "ok"),
        ("Good answer. Score: 5.", 5, "ok"),
        ("**Score:** 3", 3, "ok"),
        ("score : 2/5", 2, "ok"),
        ("It starts at Score: 2 but then ... Score: 2", 2, "ok"),  # same value repeated
        ("No verdict at all.", None, "no_score"),
        ("", None, "no_score"),
        ("Score: 4.5", None, "non_integer"),
        ("Score: five", None, "not_a_number"),
        ("Score: 7", None, "out_of_range"),
        ("Score: -1", None, "out_of_range"),
        ("Score: 3 because the answer is fine", None, "not_at_end"),
        ("First I thought Score: 2. Final Score: 4", None, "conflicting_scores"),
        ("blah " * 2000, None, "no_score"),  # runaway repetition
    ],
)
def test_parse_score_cases(text, score, status):
    parsed = parse_score(text)
    assert (parsed.score, parsed.status) == (score, status)


def test_average_ignores_invalid_and_never_invents_a_score():
    assert average([4, None, 2]) == 3
    assert average([None, None]) is None


def test_judge_metrics_counts_and_histogram():
    m = judge_metrics(["ok", "ok", "no_score", "non_integer"], [5, 0, None, None])
    assert m["judgments"] == 4 and m["parse_rate"] == 0.5
    assert m["status_no_score"] == 1 and m["status_non_integer"] == 1
    assert m["score_5"] == 1 and m["score_0"] == 1 and m["score_3"] == 0


def test_agreement_with_human_ranking():
    assert agrees_with_ranking([5, 3, 1], [0, 1, 2])
    assert agrees_with_ranking([1, 5, 3], [2, 0, 1])
    assert not agrees_with_ranking([5, 5, 1], [0, 1, 2])  # tie between different ranks
    assert not agrees_with_ranking([1, 3, 5], [0, 1, 2])
    assert not agrees_with_ranking([5, None, 1], [0, 1, 2])


class FakeTokenizer:
    """Maps text to ids piece by piece: either ' 4' is one token (merged) or ' ' then '4'."""

    def __init__(self, merged: bool):
        self.merged = merged
        self.vocab = {
            "Score": 1,
            ":": 2,
            " ": 3,
            **{str(d): 10 + d for d in range(10)},
            **{f" {d}": 20 + d for d in range(10)},
        }
        self.inv = {v: k for k, v in self.vocab.items()}

    def __call__(self, text, add_special_tokens=False):
        ids, rest = [], text
        for piece in ("Score", ":"):
            assert rest.startswith(piece)
            ids.append(self.vocab[piece])
            rest = rest[len(piece) :]
        if rest:
            ids += [self.vocab[rest]] if self.merged else [self.vocab[" "], self.vocab[rest.strip()]]
        return {"input_ids": ids}

    def decode(self, ids):
        return "".join(self.inv[i] for i in ids)


def test_score_tokens_with_merged_digits():
    from srlm.scores import score_tokens

    assert score_tokens(FakeTokenizer(merged=True)) == ("Score:", [20, 21, 22, 23, 24, 25])


def test_score_tokens_with_a_separate_space_token():
    from srlm.scores import score_tokens

    assert score_tokens(FakeTokenizer(merged=False)) == ("Score: ", [10, 11, 12, 13, 14, 15])


def test_score_tokens_refuse_a_tokenizer_that_merges_some_digits_only():
    """ " 1".." 5" merged but " 0" as " " + "0": reading the next token would take p(" ") for p(0)."""
    from srlm.scores import score_tokens

    class Mixed(FakeTokenizer):
        def __call__(self, text, add_special_tokens=False):
            self.merged = not text.endswith(" 0")
            return super().__call__(text, add_special_tokens)

    with pytest.raises(ValueError, match="different numbers of tokens"):
        score_tokens(Mixed(merged=True))


def test_expected_score_renormalises_over_0_to_5():
    import math

    from srlm.scores import expected_score

    assert expected_score([0, 0, 0, 0, 0, 1]) == 5
    assert expected_score([0.1, 0, 0, 0, 0, 0.1]) == 2.5  # mass outside 0-5 is ignored
    assert abs(expected_score([1, 1, 1, 1, 1, 1]) - 2.5) < 1e-9
    assert math.isnan(expected_score([0] * 6))


def test_candidate_scores_keep_both_readouts():
    from srlm.scores import candidate_scores

    r = {"scores": [4, None, 2], "expected_scores": [3.5, float("nan"), 2.5]}
    assert candidate_scores(r, "sampled") == {
        "sampled_score": 3,
        "expected_score": 3.0,
        "direct_score": None,
        "score": 3,
    }
    assert candidate_scores(r, "expected")["score"] == 3.0
    none = candidate_scores({"scores": [None], "expected_scores": [float("nan")]}, "expected")
    assert none == {"sampled_score": None, "expected_score": None, "direct_score": None, "score": None}
    with pytest.raises(ValueError, match="expected_scores"):
        candidate_scores({"scores": [4]}, "expected")


def test_the_expected_readout_records_the_digit_mass_and_counts_noise(tiny_model_dir):
    """Per judgment, how much next-token probability the digits had before renormalising; the
    judge's metrics count the judgments where it was below LOW_DIGIT_MASS."""
    import torch

    from srlm.judging import judge_candidates
    from srlm.modeling import load_tokenizer
    from srlm.sampling import Completion, SamplingParams
    from srlm.scores import LOW_DIGIT_MASS

    class Stub:
        tokenizer = load_tokenizer(tiny_model_dir)

        def generate(self, prompts, sampling, desc=""):
            return [[Completion("Fine.\nScore: 4", 5, "stop")] * sampling.n for _ in prompts]

        def next_token_probs(self, prompts, conts, token_ids, desc=""):
            # candidate 0: all mass on "4"; candidate 1: 0.1 spread over the digits (noise)
            return [torch.tensor([[0, 0, 0, 0, 0.9, 0]] * 2), torch.tensor([[0.1 / 6] * 6] * 2)][: len(prompts)]

    cands = [
        {
            "prompt_id": "p",
            "candidate_id": f"p-c{j}",
            "prompt": "q",
            "response": f"r{j}",
            "finish_reason": "length" if j else "stop",
        }
        for j in range(2)
    ]
    rows, m = judge_candidates(Stub(), cands, SamplingParams(n=2), "expected")
    assert rows[0]["digit_mass"] == [0.9, 0.9] and rows[1]["digit_mass"] == [0.1, 0.1]
    assert rows[0]["expected_score"] == 4.0 and rows[1]["expected_score"] == 2.5
    assert [r["finish_reason"] for r in rows] == ["stop", "length"]  # carried on for `pairs`
    assert m["low_digit_mass_judgments"] == 2 and 0.1 < LOW_DIGIT_MASS < 0.9
    assert m["digit_mass_mean"] == pytest.approx(0.5) and m["digit_mass_min"] == pytest.approx(0.1)
