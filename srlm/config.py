"""Typed view of params.yaml, in TRL's style: one dataclass per section.

Every stage loads the whole file through `load_params`, so a typo or a bad value is
reported before any work starts, with the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    pass


# Bounds are declared with each field: checked by `_coerce` when params.yaml is read.
def positive(default, **kw):
    return field(default=default, metadata={"bound": "positive"}, **kw)


def non_negative(default):  # 0 usually means "no limit" / "all" / "off"
    return field(default=default, metadata={"bound": "non_negative"})


def probability(default):
    return field(default=default, metadata={"bound": "probability"})


# The defaults below are params.yaml's (tests/test_config.py checks that the two agree): a partial
# params file, as the tests write, means the shipped defaults for everything it leaves out.


@dataclass
class LoraConfig:
    enabled: bool = True
    r: int = positive(16)
    alpha: int = positive(32)
    dropout: float = probability(0.0)  # its random masks cost about a fifth of a CPU step


@dataclass
class ModelConfig:
    base: str = "smollm2-135m-instruct"  # builtin name, hub id or local directory
    revision: str = ""
    trust_remote_code: bool = False


@dataclass
class EvalFractions:
    """The share of each seed list held out for evaluation. Ranked sets are mostly for evaluation (Table 2);
    training uses only the few that the SFT baseline judges for EFT. Gold judgments mostly train the judge."""

    ift: float = probability(0.4)
    ranked: float = probability(0.7)
    gold: float = probability(0.1)

    @staticmethod
    def from_scalar(value) -> dict:  # `eval_fraction: 0.2`: the same share of every list
        return {"ift": value, "ranked": value, "gold": value}


@dataclass
class SeedDataConfig:
    source: Literal["builtin", "oasst1", "jsonl"] = "builtin"
    ift_path: str = ""  # source=jsonl: instruction/response records
    ranked_path: str = ""  # source=jsonl: instruction + ranked responses
    gold_path: str = ""  # gold judgments (optional for oasst1/jsonl)
    verifiable_path: str = ""  # prompts with checkable instructions, evaluation only; "" = the built-in ones
    oasst_dataset: str = "OpenAssistant/oasst1"
    max_ift: int = non_negative(0)  # 0 = all (oasst1: required, the prompts drawn for IFT)
    max_ranked: int = non_negative(0)
    eval_fraction: EvalFractions = field(default_factory=lambda: EvalFractions())


@dataclass
class GenerationConfig:
    # auto: vLLM where it imports and a GPU is present, else transformers (srlm.generation.resolve_backend)
    backend: Literal["auto", "transformers", "vllm"] = "auto"
    batch_size: int = positive(64)  # transformers only: decode rows per batch; vLLM schedules its own
    # auto: bfloat16 on a GPU or CPU with fast bf16 matrix units (AMX, AVX512-BF16), else float32
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    shard_size: int = positive(32)  # prompts per progress shard: an interrupted stage resumes after its last
    tensor_parallel_size: int = positive(1)  # vllm: GPUs that one model is split over
    gpu_memory_utilization: float = positive(0.85)  # vllm: share of GPU memory for weights + KV cache

    def __post_init__(self):
        if not self.gpu_memory_utilization <= 1:
            raise ConfigError(
                f"params.yaml: generation.gpu_memory_utilization = {self.gpu_memory_utilization} must be in (0, 1]"
            )


@dataclass
class TrainConfig:
    epochs: float = positive(1.0)
    learning_rate: float = positive(2e-4)
    batch_size: int = positive(4)
    grad_accum: int = positive(2)
    max_length: int = positive(640)
    warmup_ratio: float = probability(0.0)
    # The learning rate decays linearly from learning_rate to this (the paper: SFT 5.5e-6 -> 1.1e-6,
    # DPO 1e-6 -> 1e-7); 0 = to zero.
    final_learning_rate: float = non_negative(0.0)
    gradient_checkpointing: bool = False  # saves memory on big models; costs an extra forward
    # auto: bf16 mixed precision on a GPU or CPU with fast bf16 matrix units (AMX, AVX512-BF16), else fp32.
    # fp16 needs a CUDA GPU.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # A Trainer checkpoint every save_steps optimizer steps, so an interrupted stage resumes from
    # it (0 = none). On CPU a LoRA checkpoint costs well under a second against a minute per step.
    save_steps: int = non_negative(1)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class SftConfig(TrainConfig):
    max_ift_examples: int = non_negative(24)  # 0 = all
    max_eft_examples: int = non_negative(36)


@dataclass
class EftConfig:
    include_gold: bool = True
    max_sets: int = non_negative(4)  # ranked train sets judged by the SFT baseline (0 = all)
    attempts: int = non_negative(1)  # sampled judgments per response; a set is kept on the first agreeing one
    temperature: float = non_negative(0.7)
    top_p: float = probability(0.9)
    max_new_tokens: int = positive(96)


@dataclass
class GenPromptsConfig:
    model: str = "m0"  # fixed prompt generator, as in the paper (a directory under models/)
    num_prompts: int = positive(24)  # new prompts wanted per iteration
    shots: int = positive(8)
    max_attempts: int = positive(8)  # few-shot generations per wanted prompt before giving up
    temperature: float = non_negative(0.9)
    top_p: float = probability(0.95)
    max_new_tokens: int = positive(96)
    min_words: int = positive(3)
    max_words: int = positive(60)


@dataclass
class SampleConfig:
    n: int = positive(4)
    temperature: float = non_negative(0.7)
    top_p: float = probability(0.9)
    # a candidate cut off here is never chosen (pairs.truncated_chosen): at 80, half of M1's were and 7 of 16
    # prompts lost their pair
    max_new_tokens: int = positive(128)


@dataclass
class JudgeHealthConfig:
    """An optional stop: judge@t fails, naming the reason, when its judge falls below these on the iteration's
    candidates, rather than letting DPO train on noise (off by default; every value is in the metrics)."""

    enabled: bool = False
    min_scored_rate: float = probability(0.5)  # candidates that got a score (sampled: parsed)
    min_digit_mass: float = probability(0.5)  # expected readout: mean probability on the digits 0-5
    max_tie_rate: float = probability(0.9)  # same-prompt candidate pairs with equal scores
    min_score_entropy: float = non_negative(0.5)  # bits, of the scores rounded to 0-5


@dataclass
class JudgeConfig:
    # sampled: the parsed `Score: N` (the paper). expected: Σ p(n)·n of the digits the model puts
    # right after `Score:` at the end of each judgment; every judgment gets a continuous score.
    # direct: the same digits read right after the judge prompt with `Score:` as the start of the
    # answer, no justification written (one forward pass per candidate; `samples` does not apply).
    scoring: Literal["sampled", "expected", "direct"] = "expected"
    samples: int = positive(3)
    temperature: float = non_negative(0.7)
    top_p: float = probability(0.9)
    max_new_tokens: int = positive(48)
    health: JudgeHealthConfig = field(default_factory=lambda: JudgeHealthConfig())


@dataclass
class PairsConfig:
    mode: Literal["preference", "positive"] = "preference"
    min_valid: int = positive(2)  # candidates with a valid score needed to form a pair
    # none: a prompt whose candidates all have the same score is dropped (the paper).
    # other_readout: the readout not used for `score` (sampled <-> expected) breaks such ties (not with direct).
    tie_break: Literal["none", "other_readout"] = "none"
    # A candidate cut off by sample.max_new_tokens is never `chosen` (nor a positive) unless true.
    truncated_chosen: bool = False
    # Meta-Rewarding's length control ρ (srlm.pairing.select_pairs): 0 = highest vs lowest score. One number,
    # or one per iteration ([0, 0.32, 0.32, 0.4]; the last repeats), as the paper varies it.
    length_rho: float | list = 0.0

    def __post_init__(self):
        values = self.length_rho if isinstance(self.length_rho, list) else [self.length_rho]
        ok = values and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in values)
        if not ok:
            raise ConfigError(
                f"params.yaml: pairs.length_rho = {self.length_rho!r} should be a number in [0, 1] "
                "or a non-empty list of them (one per iteration)"
            )


@dataclass
class CreamConfig:
    # How the previous model's ranking of the candidates is compared with the current one's.
    consistency: Literal["kendall", "spearman"] = "kendall"
    loss: Literal["dynamic", "average"] = "dynamic"  # each pair's own C, or the iteration's mean C


@dataclass
class MetaConfig:
    """method: meta (Meta-Rewarding, Wu et al. 2024): the meta-judge's judge pairs (srlm.judge_pairs)."""

    judge_iterations: list[int] = field(default_factory=lambda: [1, 2])  # the paper: judge pairs in iterations 1-2 only
    # probability: p(A) vs p(B) after `Winner: Judgement` (one forward per order); sampled: the paper's written
    # verdict, parsed (failures counted)
    verdict: Literal["probability", "sampled"] = "probability"
    # weights: the paper's slot weights w1 = W2/(W1+W2), w2 = W1/(W1+W2) over the iteration's verdicts;
    # agreement: a judgment wins a comparison only when both orders prefer it (NeMo-Aligner);
    # calibrated (verdict: probability): p(m better) = (p(A | m first) + 1 - p(A | m second)) / 2, soft wins
    position: Literal["weights", "agreement", "calibrated"] = "weights"
    max_chosen_chars: int = non_negative(1100)  # drop a judge pair whose chosen judgment is longer (0 = no cap)
    max_score_share: float = probability(0.4)  # cap on one score's share among the chosen judgments
    max_judge_share: float = probability(0.5)  # cap on judge pairs' share of dpo@t's pairs (paper: pooled)
    temperature: float = non_negative(0.7)  # verdict: sampled
    top_p: float = probability(0.9)
    max_new_tokens: int = positive(96)

    def __post_init__(self):
        its = self.judge_iterations
        if not all(t >= 1 for t in its):
            raise ConfigError(f"params.yaml: meta.judge_iterations = {its!r} should be a list of iteration numbers")
        if self.position == "calibrated" and self.verdict != "probability":
            raise ConfigError(
                "params.yaml: meta.position = 'calibrated' reads p(A) of both orders, which meta.verdict = "
                f"{self.verdict!r} does not give; set meta.verdict: probability"
            )


@dataclass
class DpoConfig(TrainConfig):
    beta: float = positive(0.1)
    # 8 epochs at 2e-4 over an iteration's 13-22 pairs: at 1 epoch the default run's DPO iterations moved
    # the policy by less than its intervals could show, at 4 the first iteration did in 2 seeds of 4
    # (docs/default-run.md)
    epochs: float = positive(8.0)
    learning_rate: float = positive(2e-4)
    batch_size: int = positive(2)
    max_length: int = positive(512)
    # true: the reference M_t's log-probs of each pair computed once before training (TRL's
    # precompute_ref_log_probs), not at every step. Off: on a CPU it saved 7 % of an 8-epoch call, and the
    # reference then sees other padding than the policy, so in bf16 the margin starts off zero
    # (bench/dpo_reference.py); with full fine-tuning it saves holding a second model.
    precompute_ref_log_probs: bool = False


def _default_matchups() -> dict:
    """The paper's Figure 3: M_t vs the SFT baseline, M_t vs M_{t-1}."""
    return {
        "m1_vs_sft_baseline": {"a": "m1", "b": "sft_baseline"},
        "m2_vs_sft_baseline": {"a": "m2", "b": "sft_baseline"},
        "m3_vs_sft_baseline": {"a": "m3", "b": "sft_baseline"},
        "m2_vs_m1": {"a": "m2", "b": "m1"},
        "m3_vs_m2": {"a": "m3", "b": "m2"},
    }


@dataclass
class EvaluationConfig:
    models: list = field(default_factory=lambda: ["m0", "sft_baseline", "m1", "m2", "m3"])
    ranked_sets: int = non_negative(8)  # held-out ranked sets judged per model (0 = all)
    prompts: int = non_negative(16)  # held-out IFT prompts answered per model (0 = all)
    # held-out prompts whose reference response each model scores (mean log p per token; 0 = all): a forward
    # pass each, so more of them than are answered, for a narrower interval on the shift between models
    reference_prompts: int = non_negative(0)
    temperature: float = non_negative(0.0)  # 0 = greedy; otherwise sampled with `seed`
    top_p: float = probability(0.9)
    max_new_tokens: int = positive(80)
    verifiable_prompts: int = non_negative(48)  # prompts with checkable instructions per model (0 = all)
    follow_max_new_tokens: int = positive(128)  # their answers: room for "at least N words" instructions
    # The head-to-head judge: any model directory (a pipeline model's models/<name>, or an outside
    # judge). models/m0 is neither side of a matchup nor trained from one.
    judge: str = "models/m0"
    # sampled: the judge writes a verdict ending in `Winner: A|B`. probability: compare
    # p(A) and p(B) right after `Winner:` (always decides; order bias shows up as ties).
    # calibrated: p(A) averaged over both orders, so a constant position bias cancels out.
    verdict: Literal["sampled", "probability", "calibrated"] = "probability"
    verdict_max_new_tokens: int = positive(48)
    # Model a of each matchup also judges it: its win rate by its own judgment minus by the judge's
    # (self-preference, with a paired interval over the prompts). Costs a second judging per matchup.
    self_preference: bool = True
    matchups: dict = field(default_factory=_default_matchups)  # name: {a: model, b: model}


@dataclass
class DistributedConfig:
    # Processes the training stages (sft_baseline, sft, dpo) run on, over all machines. 1 = the stage's
    # own process (CPU, one GPU). More: the stage reruns itself under `accelerate launch`.
    num_processes: int = positive(1)
    config_file: str = "configs/accelerate/fsdp.yaml"  # FSDP2; or configs/accelerate/deepspeed_zero3.yaml
    num_machines: int = positive(1)  # > 1 needs launcher: slurm
    main_process_port: int = positive(29500)  # under Slurm, offset by the job and step ids
    # Where the work runs; none of these change a result, so no stage's cache key holds them. local: in
    # the stage's process. slurm: training and generation run as Slurm steps (srun), inside the allocation
    # `dvc repro` runs in, or in one srun asks for (srun_args say what: partition, GPUs, time).
    launcher: Literal["local", "slurm"] = "local"
    srun_args: list = field(default_factory=list)  # e.g. [--partition=gpu, --gpus-per-node=8, --time=4:00:00]
    # slurm: generation engines per node (each a share of the shards); 8 with tensor_parallel_size 1 on 8 GPUs
    generation_tasks_per_node: int = positive(1)


def _default_iterations() -> dict:
    """M_t (model) -> M_{t+1} (next); prev = M_{t-1}, the model CREAM compares with."""
    return {"1": {"prev": "m0", "model": "m1", "next": "m2"}, "2": {"prev": "m1", "model": "m2", "next": "m3"}}


@dataclass
class Params:
    seed: int = 1234
    method: Literal["srlm", "cream", "meta"] = "srlm"
    model: ModelConfig = field(default_factory=ModelConfig)
    seed_data: SeedDataConfig = field(default_factory=SeedDataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    eft: EftConfig = field(default_factory=EftConfig)
    gen_prompts: GenPromptsConfig = field(default_factory=GenPromptsConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    cream: CreamConfig = field(default_factory=CreamConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    iterations: dict = field(default_factory=_default_iterations)


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"params.yaml: {where} should be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"params.yaml: unknown key {path!r}{hint}")
        bound = next(f.metadata.get("bound") for f in dataclasses.fields(cls) if f.name == key)
        kwargs[key] = _coerce(hints[key], value, path, bound)
    return cls(**kwargs)


_YAML12_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(typ, value, path, bound: str | None = None):
    if dataclasses.is_dataclass(typ) and hasattr(typ, "from_scalar") and not isinstance(value, dict):
        value = typ.from_scalar(value)
    if dataclasses.is_dataclass(typ):
        return _build(typ, value, path)
    if get_origin(typ) is Literal:
        if value not in get_args(typ):
            raise ConfigError(
                f"params.yaml: {path} = {value!r} is not allowed; choose one of {', '.join(map(repr, get_args(typ)))}"
            )
        return value
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"params.yaml: {path} should be true or false, got {value!r}")
        return value
    if typ is float and isinstance(value, str) and _YAML12_FLOAT.fullmatch(value):
        # `dvc exp run -S lr=1e-6` writes 1e-06: a float in YAML 1.2 (DVC), a string to PyYAML's YAML 1.1.
        value = float(value)
    if typ in (int, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if typ is int and ok and float(value) != int(value):
            ok = False
        if not ok:
            raise ConfigError(
                f"params.yaml: {path} should be a{'n integer' if typ is int else ' number'}, got {value!r}"
            )
        value = typ(value)
        if bound == "positive" and value <= 0:
            raise ConfigError(f"params.yaml: {path} = {value} must be > 0")
        if bound == "probability" and not 0 <= value <= 1:
            raise ConfigError(f"params.yaml: {path} = {value} must be between 0 and 1")
        if bound == "non_negative" and value < 0:
            raise ConfigError(f"params.yaml: {path} = {value} must be >= 0 (0 means no limit)")
        return value
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"params.yaml: {path} should be a string, got {value!r}")
        return value
    if typ is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"params.yaml: {path} should be a mapping")
        return value
    if typ is list or get_origin(typ) is list:  # bare `list`: a list of names
        item = get_args(typ)[0] if get_args(typ) else str
        ok = isinstance(value, list) and all(isinstance(v, item) and not isinstance(v, bool) for v in value)
        if not ok:
            what = "names" if item is str else "integers"
            raise ConfigError(f"params.yaml: {path} should be a list of {what}, got {value!r}")
        return value
    return value


def parse_params(data: dict) -> Params:
    params = _build(Params, data or {}, "")
    _check_iterations(params.iterations)
    _check_evaluation(params.evaluation, params.iterations)
    _check_paths(params)
    _check_distributed(params.distributed)
    if params.distributed.launcher == "slurm" and params.generation.dtype == "auto":
        raise ConfigError(
            "params.yaml: generation.dtype = 'auto' resolves on the machine `dvc repro` runs on, which under "
            "distributed.launcher: slurm may not be the nodes that generate; set it (bfloat16 on GPUs)"
        )
    if params.judge.scoring == "direct" and params.pairs.tie_break == "other_readout":
        raise ConfigError(
            "params.yaml: pairs.tie_break = 'other_readout' needs a second readout, and judge.scoring = 'direct' "
            "reads only one; set pairs.tie_break: none"
        )
    if params.method == "meta" and params.judge.scoring == "direct":
        raise ConfigError(
            "params.yaml: method = 'meta' compares the judge's written judgments, and judge.scoring = 'direct' "
            "writes none; use judge.scoring: expected or sampled"
        )
    for section in ("sft", "dpo"):
        cfg = getattr(params, section)
        if cfg.final_learning_rate > cfg.learning_rate:
            raise ConfigError(
                f"params.yaml: {section}.final_learning_rate = {cfg.final_learning_rate} is above "
                f"{section}.learning_rate = {cfg.learning_rate}; the schedule only decays"
            )
    return params


def _check_paths(params: Params) -> None:
    """Relative paths from params stay inside the project: `../../x` is refused. An absolute
    path is an explicit request and is taken as is. Model names become directories under
    models/, so they must be names of this pipeline's models."""
    for key in ("ift_path", "ranked_path", "gold_path", "verifiable_path", "oasst_dataset"):
        value = getattr(params.seed_data, key)
        _inside(value, f"seed_data.{key}")
    _inside(params.model.base, "model.base")
    known = model_names(params.iterations)
    if params.gen_prompts.model not in known:
        raise ConfigError(
            f"params.yaml: gen_prompts.model = {params.gen_prompts.model!r} is not a model of this "
            f"pipeline; models: {', '.join(known)}"
        )


def _check_distributed(d: DistributedConfig) -> None:
    if d.num_processes % d.num_machines:
        raise ConfigError(
            f"params.yaml: distributed.num_processes = {d.num_processes} must be a multiple of "
            f"distributed.num_machines = {d.num_machines} (the same number of processes on each)"
        )
    if d.num_machines > 1 and d.launcher != "slurm":
        raise ConfigError(
            f"params.yaml: distributed.num_machines = {d.num_machines} needs distributed.launcher: slurm "
            f"(Slurm starts each machine's share and names the main one; docs/scaling-up.md)"
        )
    if not d.main_process_port < 65536 - (10000 if d.launcher == "slurm" else 0):
        raise ConfigError(
            f"params.yaml: distributed.main_process_port = {d.main_process_port} is not a port"
            + (" (under Slurm, up to 10000 is added to it: at most 55535)" if d.launcher == "slurm" else "")
        )
    if not all(isinstance(a, str) and a.startswith("-") for a in d.srun_args):
        raise ConfigError(
            f"params.yaml: distributed.srun_args = {d.srun_args!r}: a list of srun options, each starting "
            f"with '-' (e.g. [--partition=gpu, --gpus-per-node=8])"
        )
    _inside(d.config_file, "distributed.config_file")
    if d.num_processes > 1 and not Path(d.config_file).is_file():
        raise ConfigError(
            f"params.yaml: distributed.config_file = {d.config_file!r}: no such file "
            f"(shipped: configs/accelerate/fsdp.yaml, configs/accelerate/deepspeed_zero3.yaml)"
        )


def _inside(value: str, where: str) -> None:
    if not value or Path(value).is_absolute():
        return
    if ".." in Path(value).parts:
        resolved = (Path.cwd() / value).resolve()
        if not resolved.is_relative_to(Path.cwd().resolve()):
            raise ConfigError(
                f"params.yaml: {where} = {value!r} points outside the project directory; "
                f"use an absolute path if that is what you mean"
            )


def _check_iterations(its: dict) -> None:
    """iterations: {"1": {prev: sft_baseline, model: m1, next: m2}, ...}: DVC cannot compute t-1,
    so names are spelled out. `prev` is the model CREAM compares with (M_{t-1}); in iteration 1
    it is m0 (CREAM's code: the model M1 was fine-tuned from), or sft_baseline."""
    expected_model, expected_prev = "m1", None
    for i, (key, it) in enumerate(its.items(), 1):
        if str(key) != str(i):
            raise ConfigError(f"params.yaml: iterations keys must be 1, 2, ... in order; got {key!r} at position {i}")
        if not isinstance(it, dict) or set(it) != {"prev", "model", "next"}:
            raise ConfigError(f"params.yaml: iterations.{key} must have exactly the keys prev, model and next")
        if it["model"] != expected_model or it["next"] != f"m{i + 1}":
            raise ConfigError(
                f"params.yaml: iterations.{key} should have model: {expected_model}, next: m{i + 1}; got {it}"
            )
        allowed_prev = {"m0", "sft_baseline"} if expected_prev is None else {expected_prev}
        if it["prev"] not in allowed_prev:
            raise ConfigError(
                f"params.yaml: iterations.{key}.prev = {it['prev']!r}; use {' or '.join(sorted(allowed_prev))}"
            )
        expected_prev, expected_model = it["model"], it["next"]


def model_names(iterations: dict) -> list[str]:
    """Every model directory the pipeline produces: m0, sft_baseline, m1, ..., m_{T+1}."""
    return ["m0", "sft_baseline", "m1"] + [it["next"] for it in iterations.values()]


def model_parents(iterations: dict) -> dict[str, str]:
    """Which model each pipeline model is trained from: sft_baseline and m1 from m0, M_{t+1} from M_t."""
    return {"sft_baseline": "m0", "m1": "m0"} | {it["next"]: it["model"] for it in iterations.values()}


def lineage(name: str, iterations: dict) -> list[str]:
    """`name` and every model it was trained from, nearest first (m3, m2, m1, m0)."""
    parents, out = model_parents(iterations), [name]
    while out[-1] in parents:
        out.append(parents[out[-1]])
    return out


def judge_model(judge: str, iterations: dict) -> str | None:
    """The pipeline model that the judge directory `evaluation.judge` holds (models/<name>), or None
    for an outside judge."""
    p = Path(judge)
    if len(p.parts) == 2 and p.parts[0] == "models" and p.parts[1] in model_names(iterations):
        return p.parts[1]
    return None


def judge_conflict(judge: str, a: str, b: str, iterations: dict) -> str | None:
    """Why the judge of matchup a vs b is not impartial, or None: it is one of the two sides, or was
    trained from one (M3 judging M3 vs M2; M2 judging M1 vs the baseline)."""
    name = judge_model(judge, iterations)
    if name is None:
        return None
    for side in (a, b):
        if name == side:
            return f"the judge is {side} itself"
        if side in lineage(name, iterations):
            return f"the judge ({name}) is trained from {side}"
    return None


def _check_evaluation(ev: EvaluationConfig, iterations: dict) -> None:
    known = model_names(iterations)

    def check(name, where):
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"params.yaml: {where} = {name!r} is not a model of this pipeline; {hint}models: {', '.join(known)}"
            )

    for m in ev.models:
        check(m, "evaluation.models")
    if not ev.judge:
        raise ConfigError("params.yaml: evaluation.judge is empty; give a model directory, e.g. models/m0")
    _inside(ev.judge, "evaluation.judge")
    if (
        Path(ev.judge).parts[:1] == ("models",)
        and len(Path(ev.judge).parts) == 2
        and judge_model(ev.judge, iterations) is None
        and not Path(ev.judge).is_dir()
    ):
        raise ConfigError(
            f"params.yaml: evaluation.judge = {ev.judge!r} is neither a model of this pipeline "
            f"(models/{', models/'.join(known)}) nor an existing directory"
        )
    for name, mu in ev.matchups.items():
        if not isinstance(mu, dict) or set(mu) != {"a", "b"}:
            raise ConfigError(f"params.yaml: evaluation.matchups.{name} must have exactly the keys a and b")
        for side in ("a", "b"):
            if mu[side] not in ev.models:
                raise ConfigError(
                    f"params.yaml: evaluation.matchups.{name}.{side} = {mu[side]!r} is not in "
                    f"evaluation.models ({', '.join(ev.models)}), so it has no responses to compare"
                )


def derive_seed(seed: int, *keys) -> int:
    """The one way params.yaml's `seed` becomes the seed of a random draw: a hash of the seed and the
    draw's name (stage, iteration, shard, round, ...), so no two draws share a stream by accident and
    adding one changes no other. 31 bits, a valid seed for every RNG in use.

    Draws that should be the same use the same keys on purpose: the seed-data subsets ("subset", so the
    SFT baseline and M1 train on the same IFT examples), judge@t and judge_prev@t ("judge", t: two
    models judge the same candidates with the same draws), and every model's evaluation ("eval_judge",
    "answer", "head_to_head": differences come from the models, not the draws)."""
    blob = json.dumps([int(seed), *map(str, keys)]).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") & 0x7FFFFFFF


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found (run from the project root)")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
    return parse_params(data)


def section_dict(obj) -> dict:
    return dataclasses.asdict(obj)
