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
from .sampling import Completion

log = logging.getLogger(__name__)


class ResumableGenerator:
    """A `Generator` whose calls are split into shards of `shard_size` prompts, each saved under
    `directory` as soon as it is done. A rerun after an interruption loads the finished shards and
    computes only the rest, so every stage that generates resumes without code of its own, and a
    multi-round stage (gen_prompts) replays its finished rounds from disk.

    A shard's file is named by a hash of what it computes (the call, its prompts, the sampling
    params), and shard i samples with its own seed, derived from `params.seed` and i: the same
    shards give the same outputs whether or not the run was interrupted. The model is loaded
    only when a shard must be computed: a fully resumed stage never loads it."""

    def __init__(self, factory: Callable[[], object], tokenizer, directory: str | os.PathLike, shard_size: int):
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        self._factory, self._inner = factory, None
        self.tokenizer = tokenizer
        self.dir = Path(directory)
        self.shard_size = shard_size
        self.reused = 0
        self.computed = 0

    @property
    def inner(self):
        if self._inner is None:
            self._inner = self._factory()
        return self._inner

    def generate(self, prompts: list[str], params, desc: str = "generate"):
        def compute(chunk, i, label):
            p = _shard_params(params, i)
            outs = self.inner.generate(chunk, p, desc=label)
            return [[[c.text, c.num_tokens, c.finish_reason] for c in comps] for comps in outs]

        rows = self._run("generate", prompts, [dataclasses.asdict(params)], compute, desc)
        return [[Completion(*c) for c in comps] for comps in rows]

    def next_token_probs(
        self, prompts: list[str], continuations: list[list[str]], token_ids: list[int], desc: str = "score"
    ):
        import torch

        def compute(chunk, i, label):
            conts = [c for _, c in chunk]
            probs = self.inner.next_token_probs([p for p, _ in chunk], conts, token_ids, desc=label)
            return [t.tolist() for t in probs]

        rows = self._run("next_token_probs", list(zip(prompts, continuations)), [token_ids], compute, desc)
        return [torch.tensor(r, dtype=torch.float32) for r in rows]

    def continuation_logprobs(self, prompts: list[str], continuations: list[str], desc: str = "log-probability"):
        def compute(chunk, i, label):
            return self.inner.continuation_logprobs([p for p, _ in chunk], [c for _, c in chunk], desc=label)

        return self._run("continuation_logprobs", list(zip(prompts, continuations)), [], compute, desc)

    def _run(self, kind: str, items: list, extra: list, compute, desc: str) -> list:
        n = math.ceil(len(items) / self.shard_size)
        out: list = []
        reused = 0
        for i in range(n):
            chunk = items[i * self.shard_size : (i + 1) * self.shard_size]
            key = hashlib.sha256(json.dumps([kind, i, chunk, extra], sort_keys=True).encode()).hexdigest()[:32]
            path = self.dir / f"{kind}-{key}.json"
            rows = _load_shard(path, len(chunk))
            if rows is None:
                rows = compute(chunk, i, f"{desc} [{i + 1}/{n}]" if n > 1 else desc)
                self.dir.mkdir(parents=True, exist_ok=True)
                atomic_write_text(path, json.dumps({"n_items": len(chunk), "rows": rows, "sha256": _digest(rows)}))
                self.computed += 1
                hold_point(self.computed)
            else:
                reused += 1
            out.extend(rows)
        if reused:
            log.info("%s: resumed, %d of %d shards read from %s", desc, reused, n, self.dir)
        self.reused += reused
        return out

    def clear(self) -> None:
        """Drop the progress once the stage's outputs are written."""
        clear(self.dir)


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
