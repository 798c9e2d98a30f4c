"""Prompt texts: the paper's LLM-as-a-Judge prompt (Figure 2) and the few-shot prompt that
makes new instructions, with the parsing and filtering of what the model writes back."""

from __future__ import annotations

import difflib
import random
import re
from collections import defaultdict
from pathlib import Path

from .config import derive_seed

JUDGE_TEMPLATE = (Path(__file__).parent / "templates" / "judge_additive.txt").read_text(encoding="utf-8").strip()


def judge_prompt(instruction: str, response: str) -> str:
    """Figure 2 of Yuan et al. (2024), verbatim, with the instruction and response filled in."""
    return JUDGE_TEMPLATE.replace("<INSTRUCTION_HERE>", instruction.strip()).replace(
        "<RESPONSE_HERE>", response.strip()
    )


PAIRWISE_TEMPLATE = (Path(__file__).parent / "templates" / "pairwise.txt").read_text(encoding="utf-8").strip()


def pairwise_prompt(instruction: str, response_a: str, response_b: str) -> str:
    """The head-to-head evaluation prompt: which of two responses is better, ending in `Winner: A|B`."""
    return (
        PAIRWISE_TEMPLATE.replace("<INSTRUCTION_HERE>", instruction.strip())
        .replace("<RESPONSE_A_HERE>", response_a.strip())
        .replace("<RESPONSE_B_HERE>", response_b.strip())
    )


META_JUDGE_TEMPLATE = (Path(__file__).parent / "templates" / "meta_judge.txt").read_text(encoding="utf-8").strip()
# The judge's five additive criteria, which the meta-judge prompt quotes ("The rubric used for the initial
# judgments is as follows"): taken from the judge template, so the two never drift apart.
RUBRIC = "\n".join(line for line in JUDGE_TEMPLATE.split("\nUser:")[0].splitlines() if line.startswith("- "))


def meta_judge_prompt(instruction: str, response: str, judgment_a: str, judgment_b: str) -> str:
    """Meta-Rewarding's meta-judge prompt (Wu et al. 2024, Fig. 2, as quoted in its write-ups and in
    NeMo-Aligner): which of two judgments of one response is more accurate, ending in
    `Winner: Judgement A|B`."""
    return (
        META_JUDGE_TEMPLATE.replace("<RUBRIC_HERE>", RUBRIC)
        .replace("<INSTRUCTION_HERE>", instruction.strip())
        .replace("<RESPONSE_HERE>", response.strip())
        .replace("<JUDGMENT_A_HERE>", judgment_a.strip())
        .replace("<JUDGMENT_B_HERE>", judgment_b.strip())
    )


FEWSHOT_HEADER = (
    "Below are some tasks that users ask an AI assistant. Write new tasks that are different from all of them.\n\n"
)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def fewshot_prompt(shots: list[str]) -> str:
    """Self-Instruct style: numbered example tasks, left open at the next number."""
    body = "".join(f"Task {i}: {_one_line(s)}\n" for i, s in enumerate(shots, 1))
    return f"{FEWSHOT_HEADER}{body}Task {len(shots) + 1}:"


def pick_shots(seed_prompts: list[str], k: int, rng: random.Random, max_words: int) -> list[str]:
    pool = [p for p in seed_prompts if len(p.split()) <= max_words]
    if len(pool) < k:
        raise ValueError(
            f"only {len(pool)} seed prompts have at most {max_words} words; "
            f"need {k} few-shot examples (lower gen_prompts.shots or raise max_words)"
        )
    return rng.sample(pool, k)


_TASK_SPLIT = re.compile(r"\n\s*Task\s*\d+\s*[:.]", re.IGNORECASE)


def parse_generated_tasks(completion: str, finished: bool) -> tuple[list[str], int]:
    """Split a continuation of `fewshot_prompt` into candidate tasks.

    The continuation starts right after "Task N+1:". Every item closed by a newline or by the
    end of the model's turn is a candidate; an item cut off by the token limit is dropped
    (returned in the count of truncated items).
    """
    text = completion.replace("\r", "")
    items = _TASK_SPLIT.split(text)
    truncated = 0
    if not finished:
        # The last item has no closing newline: the model was cut off mid-task.
        last = items[-1]
        if "\n" not in last.strip("\n") and not text.endswith("\n"):
            items = items[:-1]
            truncated = 1
    tasks = []
    for it in items:
        # A task ends at its first blank line; anything after that is not part of the list.
        tasks.append(it.split("\n\n")[0].strip())
    return tasks, truncated


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())


NEAR_DUPLICATE = 0.8  # difflib ratio of the normalized texts at which two instructions count as the same


class NearDuplicates:
    """Instructions indexed for "equal or nearly equal" look-ups: the same normalized text, or a
    difflib ratio of at least NEAR_DUPLICATE. The ratio is only computed for texts that share a
    word bigram (a single word for one-word texts) and are of comparable length, so a look-up
    costs a few comparisons, not one per indexed text."""

    def __init__(self, ratio: float = NEAR_DUPLICATE):
        self.ratio = ratio
        self.texts: list[str] = []
        self.labels: list = []
        self.exact: dict[str, list[int]] = defaultdict(list)
        self.index: dict[tuple, set[int]] = defaultdict(set)

    @staticmethod
    def _shingles(norm: str) -> set[tuple]:
        w = norm.split()
        return {tuple(w)} if len(w) < 2 else set(zip(w, w[1:]))

    def add(self, text: str, label=None) -> None:
        norm, i = normalize(text), len(self.texts)
        self.texts.append(norm)
        self.labels.append(label)
        self.exact[norm].append(i)
        for sh in self._shingles(norm):
            self.index[sh].add(i)

    def matches(self, text: str) -> list:
        """The labels of every indexed text equal or nearly equal to `text`, in the order added."""
        norm = normalize(text)
        if not norm:
            return []
        found = set(self.exact.get(norm, []))
        cands = set().union(*(self.index.get(sh, ()) for sh in self._shingles(norm))) - found
        sm = difflib.SequenceMatcher(None)
        sm.set_seq2(norm)  # the text difflib analyses once for all comparisons
        for i in cands:
            other = self.texts[i]
            if abs(len(other) - len(norm)) > len(norm):
                continue
            sm.set_seq1(other)
            # real_quick_ratio >= quick_ratio >= ratio: the cheap bounds settle most pairs, exactly
            if sm.real_quick_ratio() >= self.ratio and sm.quick_ratio() >= self.ratio and sm.ratio() >= self.ratio:
                found.add(i)
        return [self.labels[i] for i in sorted(found)]

    def first(self, text: str):
        m = self.matches(text)
        return m[0] if m else None


class PromptFilter:
    """Decides whether a generated task is kept; counts why the others are dropped.

    A task equal or nearly equal to a seed instruction (the few-shot pool) is a `seed_leak`
    (`duplicate_of_seed` when identical); to one of `reserved` (e.g. {"eval_leak": evaluation
    instructions, "earlier_iteration": prompts of earlier iterations}), that key; to a task kept
    before in this run, a `duplicate`."""

    def __init__(
        self, seed_prompts: list[str], min_words: int, max_words: int, reserved: dict[str, list[str]] | None = None
    ):
        self.seeds = {normalize(s) for s in seed_prompts}
        self.known = NearDuplicates()
        for s in seed_prompts:
            self.known.add(s, "seed_leak")
        for reason, texts in (reserved or {}).items():
            for t in texts:
                self.known.add(t, reason)
        self.min_words, self.max_words = min_words, max_words
        self.counts = {
            "kept": 0,
            "empty": 0,
            "too_short": 0,
            "too_long": 0,
            "bad_format": 0,
            "duplicate_of_seed": 0,
            "seed_leak": 0,
            "duplicate": 0,
            **{reason: 0 for reason in reserved or {}},
        }

    def reason(self, task: str) -> str:
        norm = normalize(task)
        words = len(task.split())
        if not norm:
            return "empty"
        if re.search(r"task\s*\d+\s*:", task, re.IGNORECASE) or "<|" in task:
            return "bad_format"
        if words < self.min_words:
            return "too_short"
        if words > self.max_words:
            return "too_long"
        if norm in self.seeds:
            return "duplicate_of_seed"
        return self.known.first(task) or "kept"

    def add(self, task: str) -> bool:
        r = self.reason(task)
        self.counts[r] += 1
        if r == "kept":
            self.known.add(task, "duplicate")
            return True
        return False


def generate_prompts(
    generator,
    seed_prompts: list[str],
    num_prompts: int,
    shots: int,
    max_attempts: int,
    min_words: int,
    max_words: int,
    sampling,
    seed: int,
    reserved: dict[str, list[str]] | None = None,
) -> tuple[list[str], dict]:
    """Few-shot prompting from seed instructions until `num_prompts` new, filtered prompts are
    found or `num_prompts * max_attempts` generations were tried. `reserved`: instructions the new
    prompts must differ from besides the seeds, by the reason counted when one is dropped
    (`PromptFilter`)."""
    from dataclasses import replace

    rng = random.Random(seed)
    filt = PromptFilter(seed_prompts, min_words, max_words, reserved)
    kept: list[str] = []
    budget = num_prompts * max_attempts
    tried = truncated = 0
    round_ = 0
    while len(kept) < num_prompts and tried < budget:
        want = min(max(num_prompts - len(kept), 4), budget - tried)
        fewshots = [fewshot_prompt(pick_shots(seed_prompts, shots, rng, max_words)) for _ in range(want)]
        outs = generator.generate(
            fewshots,
            replace(sampling, n=1, seed=derive_seed(seed, "round", round_)),
            desc=f"gen_prompts round {round_ + 1}",
        )
        round_ += 1
        tried += want
        for comps in outs:
            tasks, cut = parse_generated_tasks(comps[0].text, comps[0].finish_reason == "stop")
            truncated += cut
            for t in tasks:
                if len(kept) < num_prompts and filt.add(t):
                    kept.append(t)
    metrics = {
        "prompts_kept": len(kept),
        "prompts_wanted": num_prompts,
        "generations": tried,
        "truncated": truncated,
        **{f"dropped_{k}": v for k, v in filt.counts.items() if k != "kept"},
    }
    return kept, metrics
