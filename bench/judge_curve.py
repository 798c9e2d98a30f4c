"""Can the embedded 135M model learn to judge? M1 variants trained with the pipeline's own SFT (M0 + IFT + EFT) on
growing numbers of gold judgments, a few seeds each, then judged against the held-out ranked sets the pipeline's
Table 2 uses, beside two judge-free baselines on the same sets (a judge must beat both to count):

- length: the longer response is the better one;
- log p: M0's mean per-token log-probability of the response.

Each readout: `direct` (the digits right after the judge prompt, on every held-out set) and, on the first
--sampled-sets sets, `sampled` (parsed `Score: N`) and `expected` (Σ p(n)·n after each sampled judgment).
Pairwise accuracy comes with its 95 % bootstrap interval over the sets and is split by whether the human-preferred
response is the shorter or the longer one.

Resumable: one result file per variant under --out, written when the variant is done (a rerun skips it), and
training resumes from its last checkpoint. Runs in the background for an hour or more:

    nohup python bench/judge_curve.py > judge_curve.log 2>&1 &
    python bench/judge_curve.py --summary          # the tables (and --figure PATH) from what has finished

The split and M0 are the pipeline's (`dvc repro prepare_seed prepare_model`, run first if missing).
"""

import argparse
import dataclasses
import json
import random
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from srlm import artifacts, seed
from srlm.config import derive_seed, load_params
from srlm.evaluation import judge_ranked_sets, ranked_set_metrics
from srlm.generation import make_generator
from srlm.io import write_json
from srlm.metrics import missing
from srlm.prompts import NearDuplicates, judge_prompt
from srlm.sampling import SamplingParams, chat_prompt
from srlm.training import sft_examples, train_sft

CONTRAST = seed.BUILTIN_DIR / "length_contrast.jsonl"


@dataclasses.dataclass(frozen=True)
class Variant:
    eft: int  # gold judgments trained on (nested: a seed's 50 are the first 50 of its 100)
    seed: int
    contrast: bool = False  # + the length-contrast judgments (data/builtin/length_contrast.jsonl)
    lora_r: int = 16  # 0 = full fine-tuning
    epochs: float = 1.0
    lr: float = 2e-4
    trained: bool = True  # False: M0 itself

    @property
    def name(self) -> str:
        if not self.trained:
            return "m0"
        extra = [
            "contrast" * self.contrast,
            "full" if not self.lora_r else (f"r{self.lora_r}" if self.lora_r != 16 else ""),
            f"ep{self.epochs:g}" if self.epochs != 1 else "",
            f"lr{self.lr:g}" if self.lr != 2e-4 else "",
        ]
        return "-".join([f"eft{self.eft}", *filter(None, extra), f"s{self.seed}"])

    @property
    def group(self) -> str:  # the variant without its seed: what the summary averages over
        return self.name.rsplit("-s", 1)[0]


def grid(sizes: list[int], seeds: list[int], axis_size: int) -> list[Variant]:
    """In the order they run: M0; the size curve and the length-contrast data, seed by seed; then the
    training axes (full fine-tuning, more epochs, a higher learning rate) at `axis_size`, first seed."""
    out = [Variant(0, 0, trained=False)]
    for s in seeds:
        out += [Variant(n, s) for n in sizes] + [Variant(axis_size, s, contrast=True)]
    s = seeds[0]
    out += [Variant(axis_size, s, lora_r=0), Variant(axis_size, s, epochs=3), Variant(axis_size, s, lr=6e-4)]
    return out


def training_pairs(v: Variant, ift: list[dict], gold: list[dict], contrast: list[dict], n_ift: int) -> list:
    """As M1's SFT data (srlm.seed.sft_pairs): IFT examples, then judge prompts -> gold judgments, shuffled."""
    order = random.Random(derive_seed(v.seed, "eft")).sample(gold, len(gold))
    eft = order[: v.eft] + (contrast if v.contrast else [])
    pairs = [(r["instruction"], r["response"]) for r in seed.limit(ift, n_ift, derive_seed(v.seed, "subset"))]
    pairs += [(judge_prompt(r["instruction"], r["response"]), r["judgment"]) for r in eft]
    random.Random(v.seed).shuffle(pairs)
    return pairs


def sets_with(held_out: list[dict], scores: list[list]) -> list[dict]:
    return [
        {
            "id": s["id"],
            "ranks": [r["rank"] for r in s["responses"]],
            "lengths": [len(r["text"]) for r in s["responses"]],
            "scores": sc,
        }
        for s, sc in zip(held_out, scores)
    ]


def evaluate(model_dir: Path, held_out: list[dict], args, params) -> dict:
    gen = make_generator("transformers", str(model_dir), params.generation.batch_size, dtype=args.dtype)
    cfg, s = params.judge, derive_seed(params.seed, "eval_judge")
    out, t = {}, time.time()
    _, m = judge_ranked_sets(gen, held_out, SamplingParams(n=1, seed=s), "direct")  # eval_judge's own metrics
    out["direct"] = readout(m, "direct") | {"seconds": round(time.time() - t, 1)}
    few = held_out[: args.sampled_sets]
    if few:
        t = time.time()
        _, m = judge_ranked_sets(gen, few, SamplingParams.of(cfg, n=cfg.samples, seed=s), "expected")
        for name in ("sampled", "expected"):
            out[name] = readout(m, name) | {"parse_rate": m["parse_rate"], "seconds": round(time.time() - t, 1)}
    return out


def readout(metrics: dict, name: str) -> dict:
    """One readout's metrics of judge_ranked_sets, without their `<readout>_` prefix."""
    return {k.removeprefix(f"{name}_"): v for k, v in metrics.items() if k.startswith(f"{name}_")}


def baselines(m0: Path, held_out: list[dict], args, params) -> dict:
    """The length-only and M0 log-probability judges on the same sets."""
    s = derive_seed(params.seed, "eval_judge")
    length = [[len(r["text"]) for r in st["responses"]] for st in held_out]
    gen = make_generator("transformers", str(m0), params.generation.batch_size, dtype=args.dtype)
    items = [(st["instruction"], r["text"]) for st in held_out for r in st["responses"]]
    lps = iter(
        gen.continuation_logprobs([chat_prompt(gen.tokenizer, i) for i, _ in items], [t for _, t in items], "log p")
    )
    logp = [[(lambda lp: sum(lp) / len(lp))(next(lps)) for _ in st["responses"]] for st in held_out]
    return {
        "length": ranked_set_metrics(sets_with(held_out, length), "expected", s),
        "logp_m0": ranked_set_metrics(sets_with(held_out, logp), "expected", s),
    }


def run_variant(v: Variant, data: dict, args, params) -> dict:
    work, model_dir = args.scratch / "work" / v.name, args.scratch / "models" / v.name
    result = {"variant": dataclasses.asdict(v), "name": v.name}
    if v.trained:
        pairs = training_pairs(v, data["ift"], data["gold"], data["contrast"], args.ift)
        cfg = dataclasses.replace(
            params.sft,
            epochs=v.epochs,
            learning_rate=v.lr,
            save_steps=params.sft.save_steps if v.lora_r else 10,  # a full checkpoint holds the optimizer's state
            lora=dataclasses.replace(
                params.sft.lora, enabled=v.lora_r > 0, r=v.lora_r or 16, alpha=2 * (v.lora_r or 16)
            ),
        )
        t = time.time()
        m = train_sft(data["m0"], model_dir, sft_examples(pairs), cfg, derive_seed(v.seed, "sft"), work_dir=work)
        result["train"] = {k: m[k] for k in ("train_loss", "steps", "examples") if k in m}
        result["train"]["seconds"] = round(time.time() - t, 1)
        result["train"]["eft_examples"] = v.eft + v.contrast * len(data["contrast"])
    result["readouts"] = evaluate(model_dir if v.trained else data["m0"], data["held_out"], args, params)
    if v.trained and not args.keep_models:
        shutil.rmtree(model_dir, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    return result


def load_data(params) -> dict:
    if not (artifacts.RANKED_EVAL.path.is_file() and (artifacts.model_dir("m0") / "config.json").is_file()):
        subprocess.run(["dvc", "repro", "prepare_seed", "prepare_model"], check=True)
    held_out = seed.load_ranked(artifacts.RANKED_EVAL)
    return {
        "held_out": held_out,
        "ift": seed.load_ift(artifacts.IFT_TRAIN),
        "gold": seed.load_gold(artifacts.GOLD_TRAIN),
        "m0": artifacts.model_dir("m0"),
    }


def contrast_judgments(held_out: list[dict]) -> list[dict]:
    """The length-contrast judgments, less any whose instruction is (nearly) a held-out one: never train near
    an evaluated instruction. Read when a variant needs them."""
    index = NearDuplicates()
    for s in held_out:
        index.add(s["instruction"])
    contrast = seed.load_gold(CONTRAST) if CONTRAST.is_file() else []
    kept = [r for r in contrast if not index.matches(r["instruction"])]
    if len(kept) < len(contrast):
        print(f"length contrast: {len(contrast) - len(kept)} judgments left out, near a held-out instruction")
    return kept


def fmt(m: dict, key: str = "pairwise_accuracy") -> str:
    v, lo, hi = m.get(key), m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
    if missing(v):
        return "–"
    return f"{100 * v:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" if not missing(lo, hi) else f"{100 * v:.1f}"


COLUMNS = ["judge", "readout", "sets", "pairwise acc. % [95 % CI]", "ties %", "Spearman (pooled)"]
COLUMNS += ["preferred shorter %", "preferred longer %", "train loss", "train s"]


def row(name: str, readout: str, m: dict, train: dict) -> str:
    cells = [name, readout, m["sets"], fmt(m), f"{100 * m['pairwise_tie_rate']:.1f}"]
    cells += ["–" if missing(m.get("spearman_pooled")) else f"{m['spearman_pooled']:.3f}"]
    cells += [fmt(m, "accuracy_preferred_shorter"), fmt(m, "accuracy_preferred_longer")]
    cells += [f"{train['train_loss']:.3f}" if "train_loss" in train else "", train.get("seconds", "")]
    return "| " + " | ".join(map(str, cells)) + " |"


def summary(out: Path, figure: Path | None) -> None:
    """Every finished run, then the mean and spread over seeds of each variant's pairwise accuracy."""
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.name != "baselines.json"]
    base = json.loads((out / "baselines.json").read_text()) if (out / "baselines.json").is_file() else {}
    order = {name: i for i, name in enumerate(v.name for v in grid(*GRID_ARGS))}
    results.sort(key=lambda r: order.get(r["name"], len(order)))
    print("| " + " | ".join(COLUMNS) + " |\n" + "|---" * len(COLUMNS) + "|")
    for name, m in base.items():
        print(row(f"baseline: {name}", "–", m, {}))
    for r in results:
        for readout, m in r["readouts"].items():
            print(row(r["name"], readout, m, r.get("train", {})))
    groups: dict[tuple, list[float]] = {}
    for r in results:
        for readout, m in r["readouts"].items():
            groups.setdefault((Variant(**r["variant"]).group, readout), []).append(m["pairwise_accuracy"])
    print("\n| variant | readout | seeds | pairwise acc. %, mean ± sd over seeds |\n|---|---|---|---|")
    for (group, readout), accs in groups.items():
        sd = f" ± {100 * statistics.stdev(accs):.1f}" if len(accs) > 1 else ""
        print(f"| {group} | {readout} | {len(accs)} | {100 * statistics.mean(accs):.1f}{sd} |")
    if figure:
        plot(results, base, figure)


def plot(results: list[dict], base: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    # the size curve: variants that differ from the default SFT only in their number of gold judgments
    curve = [r for r in results if Variant(**r["variant"]).group == f"eft{r['variant']['eft']}"]
    m0 = next((r for r in results if not r["variant"]["trained"]), None)
    for readout, colour in (("direct", "tab:blue"), ("expected", "tab:orange"), ("sampled", "tab:green")):
        pts = [(r["variant"]["eft"], r["readouts"][readout]) for r in curve if readout in r["readouts"]]
        if not pts:
            continue
        xs = [x + {"direct": -2, "expected": 0, "sampled": 2}[readout] for x, _ in pts]
        ys = [100 * m["pairwise_accuracy"] for _, m in pts]
        err = [
            [y - 100 * m["pairwise_accuracy_ci_low"] for y, (_, m) in zip(ys, pts)],
            [100 * m["pairwise_accuracy_ci_high"] - y for y, (_, m) in zip(ys, pts)],
        ]
        ax.errorbar(xs, ys, yerr=err, fmt="o", color=colour, capsize=3, label=f"M1, {readout} readout")
    for (name, m), style in zip(base.items(), (":", "-.")):
        ax.axhline(100 * m["pairwise_accuracy"], color="grey", linestyle=style, label=f"baseline: {name}")
    if m0:
        ax.axhline(
            100 * m0["readouts"]["direct"]["pairwise_accuracy"],
            color="tab:blue",
            linestyle="--",
            linewidth=0.8,
            label="M0, direct readout",
        )
    ax.axhline(50, color="black", linewidth=0.8, label="chance")
    ax.set_xlabel("gold judgments in M1's SFT (EFT examples)")
    ax.set_ylabel("pairwise accuracy on held-out ranked sets (%)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"figure: {path}")


GRID_ARGS = ([0, 50, 100, 200], [1, 2], 200)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/judge_curve"))
    ap.add_argument("--scratch", type=Path, default=Path(".srlm/judge_curve"), help="checkpoints and models")
    ap.add_argument("--sizes", type=int, nargs="+", default=GRID_ARGS[0], help="gold judgments per variant")
    ap.add_argument("--seeds", type=int, nargs="+", default=GRID_ARGS[1])
    ap.add_argument("--axis-size", type=int, default=GRID_ARGS[2], help="EFT size of the contrast and training axes")
    ap.add_argument("--only", nargs="*", help="variant names to run (default: the whole grid, in order)")
    ap.add_argument("--ift", type=int, default=24, help="IFT examples in every variant (sft.max_ift_examples)")
    ap.add_argument("--sampled-sets", type=int, default=16, help="held-out sets for the sampled readouts (0: none)")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--keep-models", action="store_true")
    ap.add_argument("--summary", action="store_true", help="print the tables from what has finished, run nothing")
    ap.add_argument("--figure", type=Path, help="with --summary: write the curve as a PNG")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.summary:
        return summary(args.out, args.figure)
    params = load_params()
    data = load_data(params)
    print(f"{len(data['held_out'])} held-out ranked sets, {len(data['gold'])} gold judgments to train on")
    if not (args.out / "baselines.json").is_file():
        write_json(args.out / "baselines.json", baselines(data["m0"], data["held_out"], args, params))
    todo = [v for v in grid(args.sizes, args.seeds, args.axis_size) if not args.only or v.name in args.only]
    for i, v in enumerate(todo, 1):
        done = args.out / f"{v.name}.json"
        if done.is_file():
            continue
        data["contrast"] = contrast_judgments(data["held_out"]) if v.contrast else []
        if v.contrast and not data["contrast"]:
            print(f"{v.name}: no {CONTRAST}, left out")
            continue
        start = time.time()
        print(f"[{i}/{len(todo)}] {v.name} ({time.strftime('%H:%M:%S')})", flush=True)
        write_json(done, run_variant(v, data, args, params))
        print(f"[{i}/{len(todo)}] {v.name} done in {time.time() - start:.0f} s", flush=True)
    summary(args.out, None)


if __name__ == "__main__":
    main()
