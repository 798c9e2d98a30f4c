"""Helpers to run the real DVC pipeline in a throwaway copy of the project on the tiny model."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

# Small sizes, and learning rates low enough that the tiny model keeps writing `Score: N`.
TINY_PARAMS = {
    "sft": {
        "max_ift_examples": 8,
        "max_eft_examples": 4,
        "batch_size": 4,
        "grad_accum": 1,
        "max_length": 1024,
        "learning_rate": 1e-5,
    },
    "eft": {"max_sets": 3, "attempts": 2, "max_new_tokens": 12},
    "gen_prompts": {"num_prompts": 3, "shots": 3, "max_new_tokens": 16, "min_words": 1},
    "sample": {"max_new_tokens": 12},
    "judge": {"max_new_tokens": 12},
    "dpo": {"epochs": 1, "batch_size": 2, "grad_accum": 1, "max_length": 1024, "learning_rate": 1e-5},
    # fp32: the tiny random model's digit logits hardly depend on the judgment, and bf16 rounds them to one
    # value, so its expected scores all tie and `pairs` drops every prompt (bf16 is covered elsewhere)
    "generation": {"batch_size": 16, "dtype": "float32"},
    "evaluation": {
        "models": ["sft_baseline", "m3"],
        "ranked_sets": 3,
        "prompts": 3,
        "reference_prompts": 5,
        "max_new_tokens": 12,
        "verifiable_prompts": 3,
        "follow_max_new_tokens": 12,
        "verdict_max_new_tokens": 12,
    },
}
# Outputs that record wall-clock time (train_runtime_s, ...): they differ between any two runs by design.
WALL_CLOCK = {
    "metrics/sft_baseline.json",
    "metrics/sft.json",
    "data/it1/metrics/dpo.json",
    "data/it2/metrics/dpo.json",
    "metrics/prepare_model.json",
}
TINY_MATCHUPS = {"m3_vs_sft_baseline": {"a": "m3", "b": "sft_baseline"}}


def deep_update(d: dict, u: dict) -> dict:
    for k, v in u.items():
        d[k] = deep_update(d.get(k, {}), v) if isinstance(v, dict) else v
    return d


def _git_files(*flags: str) -> list[str]:
    return subprocess.run(
        ["git", "ls-files", *flags], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()


@functools.cache
def _pipeline_products() -> frozenset[str]:
    """What `dvc repro` in the checkout wrote that git does not ignore: dvc.lock, the .gitignore files DVC writes
    beside outputs, and the uncached outputs (metrics, the report). A test project starts without them."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        outs = {Path(o.fs_path).relative_to(ROOT) for o in repo.index.outs}
    products = {"dvc.lock"} | {str(o.parent / ".gitignore") for o in outs}
    for f in _git_files("--others", "--exclude-standard"):
        if any(Path(f) == o or o in Path(f).parents for o in outs):
            products.add(f)
    return frozenset(products)


# Not the project's, in a tree without git: environments, caches, wheels carried for a GPU machine.
_NOT_PROJECT = {".venv", ".whl", "__pycache__", ".ruff_cache", ".pytest_cache", "mlruns", "srlm.egg-info"}
DVC_LOCAL = {(".dvc", "cache"), (".dvc", "tmp")}


def _project_files() -> list[str]:
    """Tracked, or new and not ignored; not what a `dvc repro` in the checkout wrote. Without git (the copy of
    a checkout that bench/gpu_check.sh gets on a GPU machine, which holds no run outputs): every file but
    environments and caches."""
    if not (ROOT / ".git").exists():
        rel = (p.relative_to(ROOT) for p in ROOT.rglob("*") if p.is_file())
        return [str(r) for r in rel if not set(r.parts) & _NOT_PROJECT and r.parts[:2] not in DVC_LOCAL]
    tracked = _git_files("--cached")
    return tracked + [f for f in _git_files("--others", "--exclude-standard") if f not in _pipeline_products()]


def make_project(dest: Path, model_dir: Path, overrides: dict | None = None) -> Path:
    """Copy the project's files (`_project_files`) into `dest`, make it a git+DVC repo (DVC alone where git is
    not installed), point it at the tiny model."""
    for f in _project_files():
        src = ROOT / f
        if src.is_file() and not f.startswith("tests/"):
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    deep_update(params, {"model": {"base": str(model_dir)}} | TINY_PARAMS)
    params["evaluation"]["matchups"] = TINY_MATCHUPS  # replaced, not merged: the shipped ones name m1
    deep_update(params, overrides or {})
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if not shutil.which("git"):
        subprocess.run([sys.executable, "-m", "dvc", "config", "--local", "core.no_scm", "true"], cwd=dest, check=True)
        return dest
    run(["git", "init", "-q"], dest)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], dest)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"], dest)
    return dest


def env(**extra: str) -> dict:
    e = dict(os.environ) | extra
    e["PATH"] = str(Path(sys.executable).parent) + os.pathsep + e.get("PATH", "")
    e.setdefault("SRLM_THREADS", "2")
    e["HF_HUB_OFFLINE"] = "1"
    e["TQDM_DISABLE"] = "1"
    return e


def run(cmd: list[str], cwd: Path, check: bool = True, **extra_env: str) -> subprocess.CompletedProcess:
    # The copy's srlm/, not the checkout's that the editable install points at: the copy is the snapshot.
    extra_env.setdefault("PYTHONPATH", str(cwd))
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env(**extra_env))
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-8000:]}")
    return p


def start_and_kill(
    cmd: list[str], cwd: Path, sig: int | None, hold_after: int, while_held=None, timeout: float = 300, **extra_env: str
) -> subprocess.CompletedProcess:
    """Start `cmd` in its own process group, held (srlm.progress.hold_point) right after its `hold_after`-th
    progress shard or checkpoint; call `while_held()`, send `sig` to the group (None: release the hold
    instead), and wait for every process of it to end (the pipes close). States, not timing: the signal
    always lands mid-run. Returns the exit status, the whole stdout and stderr and the pid; on any failure
    here the group is killed and its stderr shown."""
    hold = Path(tempfile.mkdtemp(prefix="srlm-hold-")) / "hold"
    hold.touch()
    ready = Path(f"{hold}.ready")
    p = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env(SRLM_TEST_HOLD=f"{hold}:{hold_after}", **extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    what, out, err = " ".join(cmd[1:]), "", ""
    try:
        deadline = time.monotonic() + timeout
        while not ready.exists():
            try:  # drains the pipes meanwhile, so a chatty stage never blocks on a full one
                out, err = p.communicate(timeout=0.05)
            except subprocess.TimeoutExpired:
                assert time.monotonic() < deadline, f"{what} did not reach its hold point in {timeout:.0f} s"
            else:
                raise AssertionError(f"{what} ended with {p.returncode} before its hold point:\n{err[-4000:]}")
        if while_held is not None:
            while_held()
        if sig is None:  # let it go on instead
            hold.unlink()
        else:
            os.killpg(p.pid, sig)
        out, err = p.communicate(timeout=timeout)
    except BaseException as e:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        if p.returncode is None or not err:
            err = p.communicate()[1]
        raise AssertionError(f"{e}\nstderr of {what}:\n{err[-6000:]}") from e
    finally:
        shutil.rmtree(hold.parent, ignore_errors=True)
    done = subprocess.CompletedProcess(cmd, p.returncode, out, err)
    done.pid = p.pid  # whose leftovers a test may look for
    return done


def dvc(args: list[str], cwd: Path, check: bool = True, **extra_env: str) -> subprocess.CompletedProcess:
    return run([str(Path(sys.executable).parent / "dvc"), *args], cwd, check, **extra_env)
