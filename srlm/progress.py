"""Progress on disk, so that an interrupted stage resumes.

DVC deletes a stage's outputs before it reruns it, so progress cannot live in the outputs. It lives
under `.srlm/progress/<stage>/<fingerprint>/`, where the fingerprint hashes what the work depends on
beyond its own inputs (the model's files, the generation params): a rerun with other inputs gets
another fingerprint and starts clean (and the stale folder is removed). Generation stages keep their
shards there (srlm.resume), training stages their Trainer checkpoints (srlm.training). A stage removes
its folder once its outputs are written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Sequence

from .io import atomic_write_text, file_sha256

PROGRESS_ROOT = Path(".srlm") / "progress"
HOLD_ENV = "SRLM_TEST_HOLD"  # tests only: see hold_point


def path_stamp(path: str | os.PathLike) -> list:
    """What identifies a file or directory's content. Small files are hashed; big ones (model weights)
    are identified by name, size and mtime, as DVC's own state does, to avoid re-reading gigabytes."""
    path = Path(path)
    if path.is_file():
        st = path.stat()
        if st.st_size <= 64 << 20:
            return [path.name, file_sha256(path)]
        return [path.name, st.st_size, st.st_mtime_ns]
    if path.is_dir():
        return [[str(p.relative_to(path)), *path_stamp(p)[1:]] for p in sorted(path.rglob("*")) if p.is_file()]
    raise FileNotFoundError(f"{path}: not found")


def fingerprint(params: object, paths: Sequence[str | os.PathLike] = ()) -> str:
    """A short hash of JSON-able `params` and the content stamps of `paths`."""
    blob = json.dumps(
        {"params": params, "paths": [[str(p), path_stamp(p)] for p in paths]}, sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def work_dir(
    stage: str, params: object, paths: Sequence[str | os.PathLike] = (), root: str | os.PathLike = PROGRESS_ROOT
) -> Path:
    """`<root>/<stage>/<fingerprint>`; sibling folders of other fingerprints (stale runs) are removed."""
    base = Path(root) / stage.replace("@", "_")
    d = base / fingerprint(params, paths)
    if base.is_dir():
        for other in base.iterdir():
            if other != d:
                shutil.rmtree(other, ignore_errors=True)
    d.mkdir(parents=True, exist_ok=True)
    return d


def hold_point(count: int, max_s: float = 600.0) -> None:
    """Tests only. With SRLM_TEST_HOLD=<path>:<N>, the N-th call (count == N: the N-th shard computed, or
    checkpoint saved) writes `<path>.ready` and sleeps while `<path>` exists, at most `max_s`. A fault test
    sends its signal then, while the stage is provably mid-run, instead of racing it. Unset: one lookup."""
    spec = os.environ.get(HOLD_ENV)
    if not spec:
        return
    path, _, n = spec.rpartition(":")
    if count != int(n):
        return
    atomic_write_text(f"{path}.ready", f"{os.getpid()}\n")
    deadline = time.monotonic() + max_s
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)


def clear(directory: str | os.PathLike) -> None:
    """Remove a work folder of `work_dir`, and its stage's folder when no other run's work is in it."""
    directory = Path(directory)
    shutil.rmtree(directory, ignore_errors=True)
    with contextlib.suppress(OSError):
        directory.parent.rmdir()
