"""The head-to-head rule (both orders, disagreement = tie) through `head_to_head`, on stub judges."""

import re

import pytest
import torch

from srlm.evaluation import head_to_head
from srlm.sampling import Completion, Generator, SamplingParams


class ChatTokenizer:
    """Enough of a tokenizer for the prompts and for reading `Winner: A|B` as one token each."""

    vocab = {"Winner": 1, ":": 2, " A": 3, " B": 4}

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "USER: " + messages[0]["content"] + "\nASSISTANT: "

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.vocab[p] for p in re.findall(r"Winner|:| A| B", text)]}

    def decode(self, ids):
        return ""


def shown(prompt):
    """The two responses as the judge sees them, in order."""
    a = re.search(r"\[Response A\]\n(.*?)\n\[End of Response A\]", prompt, re.S).group(1)
    b = re.search(r"\[Response B\]\n(.*?)\n\[End of Response B\]", prompt, re.S).group(1)
    return a, b


class StubJudge(Generator):
    """`prefers(a, b)` -> 'A' | 'B': what the stub judge says for a prompt showing a then b."""

    def __init__(self, prefers):
        self.tokenizer = ChatTokenizer()
        self.prefers = prefers
        self.seen = []

    def generate(self, prompts, params, desc=""):
        self.seen += prompts
        return [[Completion(f"Some reasoning.\nWinner: {self.prefers(*shown(p))}", 5, "stop")] for p in prompts]

    def next_token_probs(self, prompts, continuations, token_ids, desc=""):
        assert token_ids == [3, 4] and all(c == ["Winner:"] for c in continuations)
        return [
            torch.tensor([[0.7, 0.1]]) if self.prefers(*shown(p)) == "A" else torch.tensor([[0.2, 0.6]])
            for p in prompts
        ]

    def continuation_logprobs(self, prompts, continuations, desc=""):
        raise AssertionError("a head-to-head reads no log-probabilities")


X = [{"id": f"p{i}", "instruction": f"task {i}", "output": o} for i, o in enumerate(["good 1", "bad 2", "good 3"])]
Y = [{"id": f"p{i}", "instruction": f"task {i}", "output": o} for i, o in enumerate(["bad 1", "good 2", "good 3"])]
SAMPLING = SamplingParams(n=1, temperature=0.0, max_new_tokens=8)


@pytest.mark.parametrize("mode", ["sampled", "probability"])
def test_a_consistent_judge_gives_wins_and_losses(mode):
    # prefers the response that says "good"; between two good ones it prefers the first shown (order bias)
    judge = StubJudge(lambda a, b: "A" if a.startswith("good") else "B")
    rows, m = head_to_head(judge, X, list(reversed(Y)), mode, SAMPLING)  # Y reordered: aligned by id
    assert [r["outcome"] for r in rows] == ["win", "loss", "tie"]
    assert (m["win"], m["tie"], m["loss"], m["n"]) == (1, 1, 1, 3)
    assert m["win_rate_ties_half"] == pytest.approx(0.5)


def test_a_judge_that_always_picks_the_first_position_only_ties():
    judge = StubJudge(lambda a, b: "A")
    rows, m = head_to_head(judge, X, Y, "sampled", SAMPLING)
    assert {r["outcome"] for r in rows} == {"tie"} and m["verdicts_first_position"] == 1.0
    # every pair was shown in both orders
    assert len(judge.seen) == 6
    assert shown(judge.seen[0]) == ("good 1", "bad 1") and shown(judge.seen[3]) == ("bad 1", "good 1")


def test_unparsable_verdicts_are_ties_and_counted():
    class Mute(StubJudge):
        def generate(self, prompts, params, desc=""):
            return [[Completion("I cannot decide.", 4, "stop")] for _ in prompts]

    rows, m = head_to_head(Mute(None), X, Y, "sampled", SAMPLING)
    assert {r["outcome"] for r in rows} == {"tie"} and m["verdicts_unparsed"] == 6


def test_response_files_for_different_prompts_are_refused():
    with pytest.raises(ValueError, match="different prompts"):
        head_to_head(StubJudge(lambda a, b: "A"), X, Y[:2], "sampled", SAMPLING)


def test_calibration_recovers_a_preference_hidden_under_a_position_bias():
    class Biased(StubJudge):
        """Always more likely to say A (position bias), a little more so when A is the good one."""

        def next_token_probs(self, prompts, continuations, token_ids, desc=""):
            out = []
            for p in prompts:
                a, b = shown(p)
                pa = 0.8 + 0.1 * a.startswith("good") - 0.1 * b.startswith("good")
                out.append(torch.tensor([[pa, 1 - pa]]))
            return out

    rows, _ = head_to_head(Biased(None), X, Y, "probability", SAMPLING)
    assert [r["outcome"] for r in rows] == ["tie", "tie", "tie"]  # A both times: ties
    rows, m = head_to_head(Biased(None), X, Y, "calibrated", SAMPLING)
    assert [r["outcome"] for r in rows] == ["win", "loss", "tie"]
    assert rows[0]["p_a_ab"] == pytest.approx(0.9) and rows[0]["p_a_ba"] == pytest.approx(0.7)
