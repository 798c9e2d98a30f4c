"""ResumableGenerator: shards saved as they finish, reused after an interruption, checked on load."""
import json
import logging

import pytest
import torch

from srlm.generation import Completion, SamplingParams
from srlm.resume import ResumableGenerator, fingerprint, work_dir


class Stub:
    """A deterministic 'model': each completion names its prompt, the seed and the sample index."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, params, desc="generate"):
        self.calls.append(("generate", list(prompts)))
        return [[Completion(f"{p}|{params.seed}|{j}", len(p) + j, "stop") for j in range(params.n)] for p in prompts]

    def next_token_probs(self, prompts, continuations, token_ids, desc="score"):
        self.calls.append(("probs", list(prompts)))
        return [torch.tensor([[len(p) / 100 + len(c) / 1000 + t / 7 for t in token_ids] for c in cs])
                for p, cs in zip(prompts, continuations)]


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
    assert seeds[:3] == ["5"] * 3 and len(set(seeds)) == 3   # shard 0 keeps the seed; 3 shards, 3 seeds


def test_a_rerun_reads_every_shard_and_never_loads_the_model(tmp_path):
    first = wrap(tmp_path, Stub()).generate(PROMPTS, SAMPLING)
    again = ResumableGenerator(never, None, tmp_path / "progress", 3)
    assert again.generate(PROMPTS, SAMPLING) == first
    assert (again.reused, again.computed) == (3, 0)


def test_an_interrupted_call_resumes_from_its_last_finished_shard(tmp_path):
    class Dies(Stub):
        def generate(self, prompts, params, desc="generate"):
            if len(self.calls) == 2:
                raise KeyboardInterrupt   # Ctrl-C during the third shard
            return super().generate(prompts, params, desc)

    with pytest.raises(KeyboardInterrupt):
        wrap(tmp_path, Dies()).generate(PROMPTS, SAMPLING)
    stub = Stub()
    resumed = wrap(tmp_path, stub).generate(PROMPTS, SAMPLING)
    assert stub.calls == [("generate", PROMPTS[6:])]   # only the unfinished shard is computed
    assert resumed == wrap(tmp_path / "fresh", Stub()).generate(PROMPTS, SAMPLING)


def test_other_prompts_or_params_do_not_reuse_shards(tmp_path):
    wrap(tmp_path, Stub()).generate(PROMPTS, SAMPLING)
    stub = Stub()
    wrap(tmp_path, stub).generate(PROMPTS, SamplingParams(n=2, seed=6))
    wrap(tmp_path, stub).generate(["other"] + PROMPTS[1:], SAMPLING)
    assert [len(c[1]) for c in stub.calls] == [3, 3, 1, 3]   # all of the first, only shard 0 of the second


@pytest.mark.parametrize("damage", ["truncate", "edit", "garbage"])
def test_a_damaged_shard_is_discarded_and_recomputed(tmp_path, caplog, damage):
    first = wrap(tmp_path, Stub()).generate(PROMPTS, SAMPLING)
    shard = sorted((tmp_path / "progress").iterdir())[0]
    text = shard.read_text()
    if damage == "truncate":
        shard.write_text(text[: len(text) // 2])
    elif damage == "edit":   # valid JSON, wrong content: caught by the checksum
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
    (model / "w.bin").write_bytes(b"2")   # a retrained model: its old progress must not be reused
    b = work_dir("judge@1", {"k": 3}, [model], root=tmp_path / "p")
    assert b != a and not a.exists() and b.exists()
    assert fingerprint({"k": 3}, [model]) != fingerprint({"k": 4}, [model])
