"""Every instruction a pipeline trains on against every one it evaluates on, by the full comparison of
every pair (not the index the split and the prompt filter use)."""

import difflib
import json
from pathlib import Path

from srlm import artifacts
from srlm.prompts import NEAR_DUPLICATE, normalize

TRAINING = [
    str(a)
    for a in (
        artifacts.IFT_TRAIN,
        artifacts.RANKED_TRAIN,
        artifacts.GOLD_TRAIN,
        artifacts.EFT_TRAIN,
        artifacts.prompts("*"),
    )
]  # data/it*/prompts.jsonl: every iteration's
EVALUATION = [str(artifacts.seed_set(name, "eval")) for name in ("ift", "ranked", "gold")] + [
    str(artifacts.VERIFIABLE_EVAL)
]


def instructions(project: Path, patterns: list[str]) -> set[str]:
    out = set()
    for pattern in patterns:
        for f in sorted(project.glob(pattern)):
            for line in f.read_text().splitlines():
                r = json.loads(line)
                out.add(r.get("instruction", r.get("prompt")))
    return out


def assert_no_leak(train: set[str], held_out: set[str]) -> None:
    """Every pair, as SequenceMatcher(None, held-out, training).ratio(). difflib's cheap upper bounds
    (real_quick_ratio >= quick_ratio >= ratio) settle most pairs exactly; ratio() runs where they cannot.
    The training text is seq2, the one difflib caches its analysis of."""
    norm_held_out = [(e, normalize(e)) for e in sorted(held_out)]
    for t in sorted(train):
        sm = difflib.SequenceMatcher(None)
        sm.set_seq2(normalize(t))
        for e, ne in norm_held_out:
            sm.set_seq1(ne)
            if sm.real_quick_ratio() < NEAR_DUPLICATE or sm.quick_ratio() < NEAR_DUPLICATE:
                continue
            ratio = sm.ratio()
            assert ratio < NEAR_DUPLICATE, f"evaluation instruction {e!r} is {ratio:.0%} like training's {t!r}"


def assert_project_has_no_leak(project: Path) -> None:
    assert_no_leak(instructions(project, TRAINING), instructions(project, EVALUATION))
