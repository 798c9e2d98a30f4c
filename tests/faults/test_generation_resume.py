"""Faults injected into a real generation stage (sample@1 on the tiny model, run as its own process):
killed by SIGINT, SIGTERM or SIGKILL mid-run, a damaged progress shard, a full disk. Each time the
previous output stays intact, nothing half-written is left, and the rerun resumes from the finished
shards and writes exactly what an uninterrupted run writes."""

import json
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from e2e_project import dvc, env, make_project
from e2e_project import start_and_kill as kill_when

OUT = Path("data/it1/candidates.jsonl")
PROGRESS = Path(".srlm/progress/sample_1")
CMD = [sys.executable, "stages/sample.py", "--iteration", "1"]
HELD = 2  # shards finished when the signal lands


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir):
    d = make_project(
        tmp_path_factory.mktemp("faults"),
        tiny_model_dir,
        # float32 on every CPU: this file checks what resuming keeps and redoes; whether bf16 computes the same
        # bits in every process is test_reproducibility's (two clean runs in the default dtype).
        {"generation": {"shard_size": 2, "batch_size": 8, "dtype": "float32"}, "sample": {"max_new_tokens": 48}},
    )
    shutil.copytree(tiny_model_dir, d / "models/m1")
    shutil.copytree(tiny_model_dir, d / "models/m0")  # a dep of sample@1: the base a LoRA adapter applies to
    words = "water sun code data list ideas short clear answer good".split()
    prompts = [
        {"id": f"it1-p{i:04d}", "prompt": f"Write about {words[i % 10]} and {words[(3 * i) % 10]} {i}"}
        for i in range(24)
    ]
    (d / "data/it1").mkdir(parents=True)
    (d / "data/it1/prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    reference = stage(d)
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert not (d / PROGRESS).exists()  # removed once the output is written
    return d, (d / OUT).read_bytes()


def stage(d: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(CMD, cwd=d, capture_output=True, text=True, env=stage_env(d), **kw)


def stage_vars(d: Path) -> dict:
    return {"PYTHONPATH": str(d), "SRLM_TRACKING": "off", "SRLM_LOG_LEVEL": "INFO"}


def stage_env(d: Path) -> dict:
    return env(**stage_vars(d))


def shards(d: Path) -> list[Path]:
    return sorted((d / PROGRESS).glob("*/generate-*.json"))


def start_and_kill(cmd: list[str], d: Path, sig: int, after_shards: int = HELD, while_held=None, **extra_env: str):
    """Run `cmd`, held right after its `after_shards`-th shard; send `sig` to its process group there."""
    return kill_when(cmd, d, sig, after_shards, while_held, **stage_vars(d), **extra_env)


def leftovers(d: Path) -> list[str]:
    """Temporaries of the output and of the progress shards."""
    return [p.name for root in (d / "data/it1", d / ".srlm") for p in root.rglob("*") if ".tmp-" in p.name]


def unchanged(d: Path) -> None:
    assert (d / OUT).read_text() == "previous output\n"


EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_a_killed_stage_keeps_its_previous_output_and_the_rerun_resumes(project, sig):
    d, reference = project
    (d / OUT).write_text("previous output\n")
    p = start_and_kill(CMD, d, sig, while_held=lambda: unchanged(d))
    # The output first: replaced would mean the stage had finished before the signal.
    assert (d / OUT).read_text() == "previous output\n", p.stderr[-3000:]
    assert p.returncode == EXIT[sig], p.stderr[-3000:]
    if sig != signal.SIGKILL:  # the handled signals say what happened; SIGKILL gives no chance to
        assert ("interrupted" if sig == signal.SIGINT else "terminated") in p.stderr, p.stderr[-3000:]
    assert not leftovers(d), p.stderr[-3000:]
    assert len(shards(d)) == HELD
    if sig == signal.SIGKILL:  # what a writer killed mid-write leaves: swept by the rerun, checked below
        (d / "data/it1" / f".candidates.jsonl.tmp-{p.pid}-x").write_text("half")
        (shards(d)[0].parent / f".generate-0.json.tmp-{p.pid}-x").write_text("half")

    rerun = stage(d)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed, {HELD} of 12 shards" in rerun.stderr, rerun.stderr[-3000:]
    assert (d / OUT).read_bytes() == reference
    assert not leftovers(d) and not (d / PROGRESS).exists()


def test_a_damaged_shard_is_recomputed(project):
    d, reference = project
    p = start_and_kill(CMD, d, signal.SIGKILL, after_shards=3)
    assert p.returncode == -signal.SIGKILL and len(shards(d)) == 3, p.stderr[-3000:]
    victim = shards(d)[1]
    victim.write_text(victim.read_text()[:40])  # torn write of a copy, a bad disk block...
    rerun = stage(d)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "damaged progress shard, discarded and recomputed" in rerun.stderr
    assert "resumed, 2 of 12 shards" in rerun.stderr, rerun.stderr[-3000:]
    assert (d / OUT).read_bytes() == reference


def _small_file_limit():
    # Any file over 8 KiB fails with EFBIG (a full disk or quota, for this stage's purposes): the
    # shards fit, the 24-prompt output does not. SIGXFSZ ignored so that write() reports the error.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))


def test_a_full_disk_leaves_no_partial_output_and_keeps_the_finished_work(project):
    d, reference = project
    (d / OUT).unlink()
    full = stage(d, preexec_fn=_small_file_limit)
    assert full.returncode == 2, full.stderr[-3000:]
    assert "error: no room to write data/it1/candidates.jsonl" in full.stderr, full.stderr[-3000:]
    assert not (d / OUT).exists() and not leftovers(d)
    assert len(shards(d)) == 12

    rerun = stage(d)
    assert rerun.returncode == 0 and "resumed, 12 of 12 shards" in rerun.stderr, rerun.stderr[-3000:]
    assert (d / OUT).read_bytes() == reference


# dvc runs a stage's cmd through $SHELL -c: bash execs the stage, which exits 130 on Ctrl-C; dash stays
# the stage's parent and dies of the SIGINT itself (dvc sees -2) while the stage still finishes cleanly.
@pytest.mark.parametrize("shell, status", [("/bin/bash", "130"), ("/bin/sh", "-2")])
def test_ctrl_c_on_dvc_repro_then_dvc_repro_resumes(project, shell, status):
    d, reference = project
    if not Path(shell).exists():
        pytest.skip(f"no {shell}")

    def not_written():  # dvc removes a stage's outputs before it runs it
        assert not (d / OUT).exists()

    # --force: the other shell's case has left the stage up to date (and its output in the cache)
    p = start_and_kill(
        [str(Path(sys.executable).parent / "dvc"), "repro", "--force", "--single-item", "sample@1"],
        d,
        signal.SIGINT,
        while_held=not_written,
        SHELL=shell,
    )
    assert not (d / OUT).exists(), p.stderr[-3000:]
    # dvc ignores SIGINT while its stage runs; the stage's interruption is a failed stage to it: dvc exits 255
    assert "interrupted" in p.stderr and f"exited with {status}" in p.stderr, p.stderr[-3000:]
    assert p.returncode == 255, p.stderr[-3000:]
    assert len(shards(d)) == HELD and not leftovers(d)
    rerun = dvc(
        ["repro", "--force", "--single-item", "sample@1"], d, SRLM_TRACKING="off", PYTHONPATH=str(d), SHELL=shell
    )
    assert f"resumed, {HELD} of 12 shards" in rerun.stderr + rerun.stdout, rerun.stderr[-3000:]
    assert (d / OUT).read_bytes() == reference
    assert not leftovers(d) and not (d / PROGRESS).exists()
