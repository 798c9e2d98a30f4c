"""Every file that one stage writes and another reads: its path (relative to the project root) and the
fields each of its records must have. Stages, the report and the tests name files only through here;
dvc.yaml spells the same paths as deps and outs (it cannot import Python), and the end-to-end test
checks, by watching the files each stage opens, that no stage reads or writes a file dvc.yaml does not
declare for it (tests/test_pipeline_e2e.py).

Layout:
    models/<name>/                       m0 (prepared base), sft_baseline, m1, m2, ...
    data/seed/{ift,ranked,gold}_{train,eval}.jsonl   prepare_seed's splits
    data/seed/verifiable_eval.jsonl      prompts with checkable instructions (evaluation only)
    data/reserved/<model>.jsonl          instructions M_<model>'s generated prompts must stay away from
    data/eft/train.jsonl                 build_eft's judge examples
    data/it<t>/{prompts,candidates,judgments,judgments_prev,judge_pairs,pairs}.jsonl, metrics/<stage>.json
    data/eval/<model>/{responses,reference_logprobs}.jsonl, alpaca_eval.json,
                      {ranked_judgments,follow}.jsonl,
                      metrics/{judge,answer,follow}.json
    data/eval/head_to_head/<a>_vs_<b>/{verdicts.jsonl,metrics.json}
    metrics/<stage>.json                 the stages that run once
    reports/report.md, reports/plots/    the report
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .io import Generated, read_jsonl, write_jsonl

# Record schemas: the fields a reader relies on (records may carry more). Generated: a model's text, may be empty.
IFT = {"id": str, "instruction": str, "response": str}
RANKED = {"id": str, "instruction": str, "responses": list}
GOLD = {"id": str, "instruction": str, "response": str, "judgment": str, "score": int}
EFT = {"instruction": str, "response": str, "judgment": str}
RESERVED = {"instruction": str, "source": str}
PROMPT = {"id": str, "prompt": str}
CANDIDATE = {"prompt_id": str, "candidate_id": str, "prompt": str, "response": Generated}
PAIR = {"id": str, "prompt": str, "kind": str}
RESPONSE = {"id": str, "instruction": str, "output": Generated}
REFERENCE_LOGPROB = {"id": str, "reference_logprob": float}
VERIFIABLE = {"id": str, "instruction": str, "instruction_id_list": list, "kwargs": list}
FOLLOWED = {"id": str, "instruction": str, "output": Generated, "strict": list, "loose": list}


@dataclass(frozen=True)
class Artifact:
    """A JSONL file exchanged between stages."""

    path: Path
    schema: dict

    def read(self, allow_empty: bool = False) -> list[dict]:
        """Its records, each checked against the schema (a DataError names the line that is not)."""
        return read_jsonl(self.path, self.schema, allow_empty=allow_empty)

    def write(self, rows: list[dict]) -> None:
        """Write it atomically, refusing a record without a schema field (a bug in the writer, caught here
        rather than by the next stage)."""
        for i, r in enumerate(rows, 1):
            missing = [k for k in self.schema if k not in r]
            if missing:
                raise ValueError(f"{self.path}: record {i} lacks {missing}")
        write_jsonl(self.path, rows)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:  # in messages, the file
        return str(self.path)


def model_dir(name: str) -> Path:
    return Path("models") / name


def seed_set(name: str, split: str) -> Artifact:
    """prepare_seed's `name` (ift, ranked, gold) records of `split` (train, eval)."""
    schema = {"ift": IFT, "ranked": RANKED, "gold": GOLD}[name]
    return Artifact(Path("data/seed") / f"{name}_{split}.jsonl", schema)


IFT_TRAIN, IFT_EVAL = seed_set("ift", "train"), seed_set("ift", "eval")
RANKED_TRAIN, RANKED_EVAL = seed_set("ranked", "train"), seed_set("ranked", "eval")
GOLD_TRAIN = seed_set("gold", "train")
VERIFIABLE_EVAL = Artifact(Path("data/seed/verifiable_eval.jsonl"), VERIFIABLE)
EFT_TRAIN = Artifact(Path("data/eft/train.jsonl"), EFT)


def reserved(model: str) -> Artifact:
    """The instructions that the prompts generated in M_<model>'s iteration must differ from (every
    evaluation instruction, and the prompts of earlier iterations): prepare_seed writes m1's,
    gen_prompts@t extends M_t's into M_{t+1}'s. Keyed by model name because DVC cannot compute t - 1
    for iteration t's dependency."""
    return Artifact(Path("data/reserved") / f"{model}.jsonl", RESERVED)


def metrics(stage: str) -> Path:
    """The metrics of a stage that runs once (prepare_seed, sft, ...)."""
    return Path("metrics") / f"{stage}.json"


# Iteration t (the key of `iterations` in params.yaml)
def iteration_dir(key: str) -> Path:
    return Path("data") / f"it{key}"


def iteration_metrics(key: str, stage: str) -> Path:
    return iteration_dir(key) / "metrics" / f"{stage}.json"


def prompts(key: str) -> Artifact:
    return Artifact(iteration_dir(key) / "prompts.jsonl", PROMPT)


def candidates(key: str) -> Artifact:
    return Artifact(iteration_dir(key) / "candidates.jsonl", CANDIDATE)


def judgments(key: str) -> Artifact:
    """M_t's scores of the candidates (CANDIDATE fields plus score, sampled_score, expected_score, ...)."""
    return Artifact(iteration_dir(key) / "judgments.jsonl", CANDIDATE)


def judgments_prev(key: str) -> Artifact:
    """CREAM: M_{t-1}'s scores of the same candidates (empty under method=srlm)."""
    return Artifact(iteration_dir(key) / "judgments_prev.jsonl", CANDIDATE)


def judge_pairs(key: str) -> Artifact:
    """Meta-Rewarding: (judge prompt, better judgment, worse judgment) pairs from the meta-judge (empty
    unless method=meta in one of meta.judge_iterations)."""
    return Artifact(iteration_dir(key) / "judge_pairs.jsonl", PAIR)


def pairs(key: str) -> Artifact:
    """DPO pairs (chosen, rejected, ...) or, with pairs.mode=positive, positive examples (response)."""
    return Artifact(iteration_dir(key) / "pairs.jsonl", PAIR)


# Evaluation of a model of evaluation.models, and head-to-head matchups
def eval_dir(model: str) -> Path:
    return Path("data") / "eval" / model


def eval_metrics(model: str, stage: str) -> Path:
    """`judge` (eval_judge's) or `answer`."""
    return eval_dir(model) / "metrics" / f"{stage}.json"


def responses(model: str) -> Artifact:
    return Artifact(eval_dir(model) / "responses.jsonl", RESPONSE)


def reference_logprobs(model: str) -> Artifact:
    """The model's mean per-token log-probability of each held-out prompt's reference response."""
    return Artifact(eval_dir(model) / "reference_logprobs.jsonl", REFERENCE_LOGPROB)


def alpaca_eval(model: str) -> Path:
    """The same responses in AlpacaEval's model_outputs format (a JSON list)."""
    return eval_dir(model) / "alpaca_eval.json"


def ranked_judgments(model: str) -> Artifact:
    return Artifact(eval_dir(model) / "ranked_judgments.jsonl", {"set_id": str, "rank": int})


def followed(model: str) -> Artifact:
    """follow@<model>: its answer to each verifiable prompt and which instructions it followed."""
    return Artifact(eval_dir(model) / "follow.jsonl", FOLLOWED)


def matchup_dir(name: str) -> Path:
    return Path("data") / "eval" / "head_to_head" / name


def verdicts(name: str) -> Artifact:
    return Artifact(matchup_dir(name) / "verdicts.jsonl", {"id": str})


def matchup_metrics(name: str) -> Path:
    return matchup_dir(name) / "metrics.json"


REPORTS = Path("reports")  # report.md, figures/, plots/ (CSV for `dvc plots`)
REPORT = REPORTS / "report.md"
COMPARISONS = REPORTS / "comparisons.json"  # the paired differences between models (srlm.report)
