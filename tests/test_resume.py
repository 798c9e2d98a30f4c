"""ResumableGenerator: shards saved as they finish, reused after an interruption, checked on load."""

import hashlib
import json
import logging
import re

import pytest
import torch

from srlm.progress import fingerprint, work_dir
from srlm.resume import ResumableGenerator
from srlm.sampling import Completion, SamplingParams


class Stub:
    """A deterministic 'model': each completion names its prompt, the seed and the sample index."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, params, desc="generate"):
        self.calls.append(("generate", list(prompts)))
        return [[Completion(f"{p}|{params.seed}|{j}", len(p) + j, "stop") for j in range(params.n)] for p in prompts]

    def next_token_probs(self, prompts, continuations, token_ids, desc="score"):
        self.calls.append(("probs", list(prompts)))
        return [
            torch.tensor([[len(p) / 100 + len(c) / 1000 + t / 7 for t in token_ids] for c in cs])
            for p, cs in zip(prompts, continuations)
        ]


PROMPTS = [f"prompt {i}" for i in range(7)]
SAMPLING = SamplingParams(n=2, seed=5)


def wrap(tmp_path, stub, shard_size=3):
    return ResumableGenerator(lambda: stub, tokenizer=None, directory=tmp_path / "progress", shard_size=shard_size)


def never():
    raise AssertionError("the model was loaded although every shard was on disk")


def test_one_shard_equals_the_plain_generator(tmp_path):
    stub = Stub()
    assert wrap(tmp_path, stub, shard_size=100).generate(PROMPTS, SAMPLING) == Stub().generate(PROMPTS, SAMPLING)


def test_shards_sample_with_their_own_seeds(tmp_path):
    out = wrap(tmp_path, Stub()).generate(PROMPTS, SAMPLING)
    seeds = [c[0].text.split("|")[1] for c in out]
    assert seeds[:3] == ["5"] * 3 and len(set(seeds)) == 3  # shard 0 keeps the seed; 3 shards, 3 seeds


def test_a_rerun_reads_every_shard_and_never_loads_the_model(tmp_path):
    first = wrap(tmp_path, Stub()).generate(PROMPTS, SAMPLING)
    again = ResumableGenerator(never, None, tmp_path / "progress", 3)
    assert again.generate(PROMPTS, SAMPLING) == first
    assert (again.reused, again.computed) == (3, 0)


def test_an_interrupted_call_resumes_from_its_last_finished_shard(tmp_path):
    class Dies(Stub):
        def generate(self, prompts, params, desc="generate"):
            if len(self.calls) == 2:
                raise KeyboardInterrupt  # Ctrl-C during the third shard
            return super().generate(prompts, params, desc)

    with pytest.raises(KeyboardInterrupt):
        wrap(tmp_path, Dies()).generate(PROMPTS, SAMPLING)
    stub = Stub()
    resumed = wrap(tmp_path, stub).generate(PROMPTS, SAMPLING)
    assert stub.calls == [("generate", PROMPTS[6:])]  # only the unfinished shard is computed
    assert resumed == wrap(tmp_path / "fresh", Stub()).generate(PROMPTS, SAMPLING)


def test_other_prompts_or_params_do_not_reuse_shards(tmp_path):
    wrap(tmp_path, Stub()).generate(PROMPTS, SAMPLING)
    stub = Stub()
    wrap(tmp_path, stub).generate(PROMPTS, SamplingParams(n=2, seed=6))
    wrap(tmp_path, stub).generate(["other"] + PROMPTS[1:], SAMPLING)
    assert [len(c[1]) for c in stub.calls] == [3, 3, 1, 3]  # all of the first, only shard 0 of the second


@pytest.mark.parametrize("damage", ["truncate", "edit", "garbage"])
def test_a_damaged_shard_is_discarded_and_recomputed(tmp_path, caplog, damage):
    first = wrap(tmp_path, Stub()).generate(PROMPTS, SAMPLING)
    shard = sorted((tmp_path / "progress").iterdir())[0]
    text = shard.read_text()
    if damage == "truncate":
        shard.write_text(text[: len(text) // 2])
    elif damage == "edit":  # valid JSON, wrong content: caught by the checksum
        obj = json.loads(text)
        obj["rows"][0][0][0] = "tampered"
        shard.write_text(json.dumps(obj))
    else:
        shard.write_bytes(b"\x00\xff" * 10)
    stub = Stub()
    with caplog.at_level(logging.WARNING):
        assert wrap(tmp_path, stub).generate(PROMPTS, SAMPLING) == first
    assert len(stub.calls) == 1 and "damaged progress shard" in caplog.text


def test_next_token_probs_round_trip_exactly(tmp_path):
    conts = [[f"c{j}" * (i + 1) for j in range(3)] for i in range(len(PROMPTS))]
    first = wrap(tmp_path, Stub()).next_token_probs(PROMPTS, conts, [1, 2, 3])
    again = ResumableGenerator(never, None, tmp_path / "progress", 3).next_token_probs(PROMPTS, conts, [1, 2, 3])
    direct = Stub().next_token_probs(PROMPTS, conts, [1, 2, 3])
    for a, b, c in zip(first, again, direct):
        assert a.shape == (3, 3) and torch.equal(a, b) and torch.equal(a, c.float())


def test_work_dir_follows_the_fingerprint_and_drops_stale_folders(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "w.bin").write_bytes(b"1")
    a = work_dir("judge@1", {"k": 3}, [model], root=tmp_path / "p")
    assert work_dir("judge@1", {"k": 3}, [model], root=tmp_path / "p") == a
    (model / "w.bin").write_bytes(b"2")  # a retrained model: its old progress must not be reused
    b = work_dir("judge@1", {"k": 3}, [model], root=tmp_path / "p")
    assert b != a and not a.exists() and b.exists()
    assert fingerprint({"k": 3}, [model]) != fingerprint({"k": 4}, [model])


# --- on the real (tiny) model, and the multi-round prompt generation ------------------------------------------


class DiesOnCall:
    """The real generator, with Ctrl-C arriving during its `at`-th call."""

    def __init__(self, inner, at: int):
        self.inner, self.at, self.calls = inner, at, 0

    def __getattr__(self, name):
        method = getattr(self.inner, name)

        def call(*a, **kw):
            self.calls += 1
            if self.calls == self.at:
                raise KeyboardInterrupt
            return method(*a, **kw)

        return call


@pytest.fixture(scope="module")
def real(tiny):
    from srlm.generation import TransformersGenerator

    return TransformersGenerator(*tiny, batch_size=4, progress=False)


def test_next_token_probs_resume_on_the_real_model(tmp_path, real):
    from srlm.prompts import judge_prompt
    from srlm.sampling import chat_prompt
    from srlm.scores import score_tokens

    tok = real.tokenizer
    prompts = [chat_prompt(tok, judge_prompt(f"question {i}", "answer " * i)) for i in range(5)]
    conts = [[f"fine {i}\nScore:", "Score:"] for i in range(5)]
    targets = score_tokens(tok)[1]
    with pytest.raises(KeyboardInterrupt):
        ResumableGenerator(lambda: DiesOnCall(real, at=2), tok, tmp_path / "p", 2).next_token_probs(
            prompts, conts, targets
        )
    resumed = ResumableGenerator(lambda: real, tok, tmp_path / "p", 2)
    got = resumed.next_token_probs(prompts, conts, targets)
    assert (resumed.reused, resumed.computed) == (1, 2)
    whole = ResumableGenerator(lambda: real, tok, tmp_path / "q", 2).next_token_probs(prompts, conts, targets)
    reread = ResumableGenerator(never, tok, tmp_path / "p", 2).next_token_probs(prompts, conts, targets)
    direct = real.next_token_probs(prompts, conts, targets)
    for a, b, c, d in zip(got, whole, reread, direct):
        assert a.dtype == torch.float32 and a.shape == (2, len(targets))
        assert torch.equal(a, b) and torch.equal(a, c)  # resumed = uninterrupted = read back, bit for bit
        assert torch.allclose(a, d, atol=1e-6)  # sharding batches prompts differently: rounding only


def test_an_interrupted_judgment_resumes_in_its_expected_score_pass(tmp_path, real):
    """The judge stage's two calls: sampled judgments, then the expected-score readout. Interrupted in the
    second, the rerun reads every judgment from disk and computes only the readout's unfinished shards."""
    from srlm.judging import judge_responses

    items = [(f"Name thing {i}.", "Thing " * i) for i in range(5)]
    sampling = SamplingParams(n=2, temperature=0.9, top_p=1.0, max_new_tokens=12, seed=4)
    want = judge_responses(ResumableGenerator(lambda: real, real.tokenizer, tmp_path / "a", 2), items, sampling)
    dies = DiesOnCall(real, at=5)  # 3 shards of judgments, then the readout's second shard
    with pytest.raises(KeyboardInterrupt):
        judge_responses(ResumableGenerator(lambda: dies, real.tokenizer, tmp_path / "b", 2), items, sampling)
    counting = DiesOnCall(real, at=0)
    resumed = ResumableGenerator(lambda: counting, real.tokenizer, tmp_path / "b", 2)
    assert judge_responses(resumed, items, sampling) == want
    assert (resumed.reused, resumed.computed, counting.calls) == (4, 2, 2)


class TaskWriter:
    """Continues a few-shot prompt with one task, picked by the prompt and the seed among a few, so that
    rounds keep finding duplicates and generate_prompts needs several of them."""

    TASKS = [
        "Plan a picnic for six friends.",
        "Explain how ocean tides work.",
        "Write a haiku about rain.",
        "List three uses of copper.",
        "Translate good morning into French.",
        "Compare cats and dogs as pets.",
        "Describe a volcano to a child.",
    ]

    def __init__(self, die_in_round: int | None = None):
        self.die_in_round, self.rounds = die_in_round, []  # the round of each call (a shard)

    def generate(self, prompts, params, desc="generate"):
        round_ = int(re.search(r"round (\d+)", desc).group(1))
        if round_ == self.die_in_round:
            raise KeyboardInterrupt
        self.rounds.append(round_)
        pick = [int(hashlib.sha256(f"{p}|{params.seed}".encode()).hexdigest(), 16) % len(self.TASKS) for p in prompts]
        return [[Completion(f" {self.TASKS[i]}\n", 8, "stop")] for i in pick]


SEEDS = [
    "Summarize the plot of a novel you like.",
    "Give me a recipe for lentil soup.",
    "How do I change a bicycle tyre?",
    "Suggest names for a bakery.",
    "What causes thunder?",
]


def test_gen_prompts_replays_its_finished_rounds_from_disk(tmp_path):
    from srlm.prompts import generate_prompts

    def run(writer, where):
        g = ResumableGenerator(lambda: writer, None, tmp_path / where, shard_size=2)
        out = generate_prompts(
            g,
            SEEDS,
            num_prompts=7,
            shots=3,
            max_attempts=6,
            min_words=2,
            max_words=40,
            sampling=SamplingParams(temperature=0.9, max_new_tokens=16),
            seed=5,
        )  # 6 rounds
        return out, g

    ref = TaskWriter()
    want, _ = run(ref, "whole")
    assert max(ref.rounds) >= 4 and len(want[0]) == 7
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C in round 3
        run(TaskWriter(die_in_round=3), "cut")
    writer = TaskWriter()
    got, g = run(writer, "cut")
    assert got == want
    assert min(writer.rounds) == 3  # rounds 1 and 2 were read from disk, none recomputed
    assert g.reused == sum(r < 3 for r in ref.rounds) and g.computed == len(writer.rounds)
