"""What docs/reproducibility.md says decides the outputs besides the seeds: the thread count (`min(cores, 16)`,
SRLM_THREADS overrides it), and `generation.shard_size`, which decides which prompts share a generation call
and its seed, so it changes sampled outputs (it is a param, so DVC reruns the stages:
tests/test_pipeline_e2e.py). `generation.batch_size` decides no draw (each sample has its own stream): in fp32
neither sampled nor greedy outputs depend on it."""

import os
import subprocess
import sys

import pytest

from srlm.generation import TransformersGenerator
from srlm.resume import ResumableGenerator
from srlm.sampling import SamplingParams, chat_prompt

SHOW = "import torch; print(torch.get_num_threads())"


def threads(code: str, **extra: str) -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("SRLM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    p = subprocess.run([sys.executable, "-c", code], env=env | extra, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    return int(p.stdout)


def test_cpu_math_uses_a_fixed_thread_count_that_srlm_threads_overrides():
    # as stage.main does it: before torch is imported, and (a library's import) after
    assert threads(f"from srlm.modeling import set_threads; set_threads(); {SHOW}") == min(os.cpu_count(), 16)
    assert threads(f"import torch; from srlm.modeling import set_threads; set_threads(); {SHOW}", SRLM_THREADS="1") == 1
    # nor lets OpenMP or MKL change it at run time (MKL's conditions for reproducible results)
    show = "import os; from srlm.modeling import set_threads; set_threads(); print(int(os.environ['{}'] == 'FALSE'))"
    assert threads(show.format("MKL_DYNAMIC"), MKL_DYNAMIC="TRUE") == threads(show.format("OMP_DYNAMIC")) == 1


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory):
    model, tok = tiny
    prompts = [chat_prompt(tok, f"Write about {w}.") for w in "water sun code data list ideas".split()]

    def run(batch_size: int, shard_size: int, sampling: SamplingParams):
        inner = TransformersGenerator(model, tok, batch_size=batch_size, progress=False)
        resumable = ResumableGenerator(lambda: inner, tok, tmp_path_factory.mktemp("progress"), shard_size)
        return resumable.generate(prompts, sampling)

    return run


SAMPLED = SamplingParams(n=2, temperature=0.9, top_p=1.0, max_new_tokens=8, seed=11)
GREEDY = SamplingParams(n=1, temperature=0.0, max_new_tokens=8)


def test_shard_size_changes_what_is_sampled_and_batch_size_does_not(run):
    base = run(4, 6, SAMPLED)
    assert run(4, 6, SAMPLED) == base  # the same params: the same samples
    assert run(2, 6, SAMPLED) == base  # one prompt (x 2 samples) per batch instead of two: the same streams
    assert run(4, 2, SAMPLED) != base  # shards of 2 prompts: other shard seeds


def test_batch_and_shard_size_do_not_change_greedy_outputs(run):
    base = run(4, 6, GREEDY)
    assert all(c.text for comps in base for c in comps)
    for batch_size, shard_size in ((1, 6), (8, 6), (4, 1), (3, 4)):
        assert run(batch_size, shard_size, GREEDY) == base, (batch_size, shard_size)
