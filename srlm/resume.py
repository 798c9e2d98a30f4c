"""Resumable generation: `ResumableGenerator` saves each shard of every call in the stage's progress
folder (srlm.progress) as soon as it is done, so an interrupted stage's rerun computes only what is
left. Shards are written atomically and carry a checksum: a damaged one is detected, discarded and
recomputed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Callable

from .io import atomic_write_text
from .progress import clear, hold_point
from .sampling import Completion, SamplingParams

log = logging.getLogger(__name__)


class ResumableGenerator:
    """A `Generator` whose calls are split into shards of `shard_size` prompts, each saved under
    `directory` as soon as it is done. A rerun after an interruption loads the finished shards and
    computes only the rest, so every stage that generates resumes without code of its own, and a
    multi-round stage (gen_prompts) replays its finished rounds from disk.

    A shard's file is named by a hash of what it computes (the call, its prompts, the sampling
    params), and shard i samples with its own seed, derived from `params.seed` and i: the same
    shards give the same outputs whether or not the run was interrupted, and wherever they ran. The
    model is loaded only when a shard must be computed: a fully resumed stage never loads it.

    `engine` is a callable returning the inner generator, or srlm.generation.make_generator's
    arguments as a dict. With `spread` (and a dict), the missing shards of each call are not computed
    here: they are written to a work order, and `spread(order_path)` has them computed, e.g. by a Slurm
    step whose tasks each run `work` on their share (srlm.stage.generator)."""

    def __init__(
        self,
        engine: Callable[[], object] | dict,
        tokenizer,
        directory: str | os.PathLike,
        shard_size: int,
        spread: Callable[[Path], None] | None = None,
    ):
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        if spread is not None and not isinstance(engine, dict):
            raise ValueError("spreading shards over tasks needs the engine as make_generator's arguments")
        self._engine, self._inner, self._spread = engine, None, spread
        self.tokenizer = tokenizer
        self.dir = Path(directory)
        self.shard_size = shard_size
        self.reused = 0
        self.computed = 0

    @property
    def inner(self):
        if self._inner is None:
            self._inner = build_engine(self._engine)
        return self._inner

    def generate(self, prompts: list[str], params, desc: str = "generate"):
        rows = self._run("generate", prompts, [dataclasses.asdict(params)], desc)
        return [[Completion(*c) for c in comps] for comps in rows]

    def next_token_probs(
        self, prompts: list[str], continuations: list[list[str]], token_ids: list[int], desc: str = "score"
    ):
        import torch

        rows = self._run("next_token_probs", list(zip(prompts, continuations)), [token_ids], desc)
        return [torch.tensor(r, dtype=torch.float32) for r in rows]

    def continuation_logprobs(self, prompts: list[str], continuations: list[str], desc: str = "log-probability"):
        return self._run("continuation_logprobs", list(zip(prompts, continuations)), [], desc)

    def _run(self, kind: str, items: list, extra: list, desc: str) -> list:
        n = math.ceil(len(items) / self.shard_size)
        shards = []
        for i in range(n):
            chunk = items[i * self.shard_size : (i + 1) * self.shard_size]
            key = hashlib.sha256(json.dumps([kind, i, chunk, extra], sort_keys=True).encode()).hexdigest()[:32]
            label = f"{desc} [{i + 1}/{n}]" if n > 1 else desc
            shards.append({"i": i, "chunk": chunk, "path": str(self.dir / f"{kind}-{key}.json"), "label": label})
        done = [_load_shard(Path(s["path"]), len(s["chunk"])) for s in shards]
        missing = [s for s in shards if done[s["i"]] is None]
        if missing and self._spread is not None:
            order = {"kind": kind, "extra": extra, "engine": self._engine, "shards": missing}
            blob = json.dumps(order, sort_keys=True)
            path = self.dir / f"order-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.json"
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, blob)
            log.info("%s: %d of %d shards to compute, spread over a step's tasks", desc, len(missing), n)
            self._spread(path)
            for s in missing:
                done[s["i"]] = _load_shard(Path(s["path"]), len(s["chunk"]))
                if done[s["i"]] is None:
                    raise RuntimeError(f"{s['path']}: the step's tasks ended without writing shard {s['i']}")
            self.computed += len(missing)
            path.unlink()
        else:
            for s in missing:
                done[s["i"]] = _compute_shard(self.inner, kind, s, extra)
                self.computed += 1
                hold_point(self.computed)
        reused = n - len(missing)
        if reused:
            log.info("%s: resumed, %d of %d shards read from %s", desc, reused, n, self.dir)
        self.reused += reused
        return [row for rows in done for row in rows]

    def clear(self) -> None:
        """Drop the progress once the stage's outputs are written."""
        clear(self.dir)


def build_engine(engine: Callable[[], object] | dict):
    if callable(engine):
        return engine()
    from .generation import make_generator  # torch: paid only where a shard is computed

    return make_generator(**engine)


def _compute_shard(inner, kind: str, shard: dict, extra: list) -> list:
    """Compute one shard of a call and save it (atomically, with its checksum)."""
    chunk, i, label = shard["chunk"], shard["i"], shard["label"]
    if kind == "generate":
        params = _shard_params(SamplingParams(**extra[0]), i)
        rows = [
            [[c.text, c.num_tokens, c.finish_reason] for c in comps]
            for comps in inner.generate(chunk, params, desc=label)
        ]
    elif kind == "next_token_probs":
        probs = inner.next_token_probs([p for p, _ in chunk], [c for _, c in chunk], extra[0], desc=label)
        rows = [t.tolist() for t in probs]
    elif kind == "continuation_logprobs":
        rows = inner.continuation_logprobs([p for p, _ in chunk], [c for _, c in chunk], desc=label)
    else:
        raise ValueError(f"unknown call {kind!r}")
    path = Path(shard["path"])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"n_items": len(chunk), "rows": rows, "sha256": _digest(rows)}))
    return rows


def work(order_path: str | os.PathLike, rank: int, tasks: int) -> int:
    """One task's share of a work order: shards rank, rank + tasks, ... that are not on disk yet. Returns how
    many it computed. Run by `python -m srlm.stage work ORDER` in each task of a step."""
    order = json.loads(Path(order_path).read_text())
    mine = [s for j, s in enumerate(order["shards"]) if j % tasks == rank]
    todo = [s for s in mine if _load_shard(Path(s["path"]), len(s["chunk"])) is None]
    log.info("task %d of %d: %d shards (%d already on disk)", rank, tasks, len(todo), len(mine) - len(todo))
    inner = build_engine(order["engine"]) if todo else None
    for count, s in enumerate(todo, 1):
        _compute_shard(inner, order["kind"], s, order["extra"])
        hold_point(count)
    return len(todo)


def _shard_params(params, i: int):
    # Shard 0 keeps the seed, so one shard equals the plain generator's call.
    return dataclasses.replace(params, seed=params.seed + 1_000_003 * i)


def _load_shard(path: Path, n_items: int) -> list | None:
    if not path.exists():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
        rows = obj["rows"]
        ok = obj["n_items"] == n_items == len(rows) and obj["sha256"] == _digest(rows)
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        log.warning("%s: damaged progress shard, discarded and recomputed", path)
        path.unlink(missing_ok=True)
        return None
    return rows


def _digest(rows: list) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
