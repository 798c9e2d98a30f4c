"""`dvc repro` of the whole DAG on the tiny model, then the caching behaviour users rely on."""

import json
import math
import re
import sys

import pytest
import yaml

from e2e_project import dvc, run
from srlm import artifacts
from srlm.io import file_sha256, read_jsonl
from srlm.modeling import load_tokenizer

pytestmark = pytest.mark.e2e

MODELS = ["sft_baseline", "m3"]
ALL_STAGES = (
    ["prepare_model", "prepare_seed", "sft_baseline", "build_eft", "sft"]
    + [
        f"{s}@{t}"
        for t in (1, 2)
        for s in ("gen_prompts", "sample", "judge", "judge_prev", "meta_judge", "pairs", "dpo")
    ]
    + [f"{s}@{m}" for m in MODELS for s in ("eval_judge", "answer", "follow")]
    + ["head_to_head@m3_vs_sft_baseline", "report"]
)


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def skipped(output: str) -> set[str]:
    return set(re.findall(r"Stage '([^']+)' didn't change, skipping", output))


def table(report: str, header: str, key: str) -> dict[str, str]:
    """The row named `key` of the report's table whose header starts with `header`, as {column: cell}."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header}"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return dict(zip(rows[0], next(r for r in rows[2:] if r[0] == key)))


def outputs(d) -> dict[str, tuple]:
    """Every file of every output in dvc.lock: its content hash, and its mtime and inode, which a checkout
    (a run-cache restore) changes even when the content is the same."""
    lock = yaml.safe_load((d / "dvc.lock").read_text())
    files = {}
    for st in lock["stages"].values():
        for o in st.get("outs", []):
            p = d / o["path"]
            for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
                if f.is_file():
                    files[str(f.relative_to(d))] = (file_sha256(f), f.stat().st_mtime_ns, f.stat().st_ino)
    return files


@pytest.fixture(scope="module")
def project(repro_project):
    d, stdout, _lock = repro_project
    return d, stdout


def test_repro_runs_every_stage_and_produces_m3(project):
    d, out = project
    assert ran(out) == set(ALL_STAGES)
    m3 = d / artifacts.model_dir("m3")  # LoRA: the adapter on models/m0, every iteration's update stacked
    assert json.loads((m3 / "adapter_config.json").read_text())["base_model_name_or_path"] == "../m0"
    assert not (m3 / "model.safetensors").exists()
    assert load_tokenizer(d / artifacts.model_dir("m3")).chat_template  # refuses a checkpoint without one
    left = sorted(str(p.relative_to(d)) for p in (d / ".srlm/progress").rglob("*"))
    assert not left, f"progress a stage did not remove: {left}"  # every generating and training stage clears its own
    for t in (1, 2):
        pairs = read_jsonl(d / artifacts.pairs(t).path)
        assert pairs and all(p["chosen_score"] > p["rejected_score"] for p in pairs)
        judge = json.loads((d / artifacts.iteration_metrics(t, "judge")).read_text())
        assert 0 < judge["parse_rate"] <= 1
        prompts = read_jsonl(d / artifacts.prompts(t).path)
        # gen_prompts.num_prompts is a cap: the tiny model may run out of attempts before it has 3 new ones
        assert 0 < len(prompts) <= 3
    shown = dvc(["metrics", "show", "--json"], d).stdout
    assert "parse_rate" in shown and "train_loss" in shown and "expected_pairwise_accuracy" in shown
    assert (d / "mlflow.db").is_file()


def test_the_repro_is_one_mlflow_parent_run_with_its_models_registered(project):
    """The tracking a user opens after `dvc repro`: one parent run holding every stage run, the headline
    metrics, and each model as a version of the pipeline's registered model (tests/test_tracking.py has the
    cached-stage and experiment cases on a toy pipeline)."""
    import mlflow

    d, _ = project
    client = mlflow.MlflowClient(f"sqlite:///{d / 'mlflow.db'}")
    exp = client.get_experiment_by_name("self-rewarding")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs
    [parent] = client.search_runs([exp.experiment_id], "tags.`srlm.kind` = 'pipeline'")
    children = client.search_runs(
        [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=1000
    )
    assert sorted(c.data.tags["dvc_stage"] for c in children) == sorted(ALL_STAGES)
    assert {c.info.status for c in children} == {"FINISHED"} and parent.info.status == "FINISHED"
    readout = yaml.safe_load((d / "params.yaml").read_text())["judge"]["scoring"]
    m3 = json.loads((d / artifacts.eval_metrics("m3", "judge")).read_text())
    assert parent.data.metrics["m3.pairwise_accuracy"] == pytest.approx(m3[f"{readout}_pairwise_accuracy"])
    assert parent.data.params["judge.scoring"] == readout
    name = parent.data.tags["srlm.registered_model"]
    versions = {v.tags["model"]: v for v in client.search_model_versions(f"name = '{name}'")}
    assert set(versions) == {"m0", "sft_baseline", "m1", "m2", "m3"}
    assert (versions["m3"].tags["parent"], versions["m1"].tags["parent"]) == ("m2", "m0")
    lock = yaml.safe_load((d / "dvc.lock").read_text())["stages"]
    assert versions["m3"].tags["weights_md5"] == next(
        o["md5"] for o in lock["dpo@2"]["outs"] if o["path"] == "models/m3"
    )
    assert client.get_model_version_by_alias(name, "last-iteration").tags["model"] == "m3"
    accuracy = {m: parent.data.metrics[f"{m}.pairwise_accuracy"] for m in MODELS}
    best = client.get_model_version_by_alias(name, "best-judge").tags["model"]
    assert accuracy[best] == max(accuracy.values())


def _pct(v) -> str:  # the report's cell for a rate (–: undefined, e.g. no pair on that side)
    return "–" if v is None or math.isnan(v) else f"{100 * v:.1f}"


def test_report_is_built_from_the_stage_outputs(project):
    d, _ = project
    report = (d / "reports/report.md").read_text()
    readout = yaml.safe_load((d / "params.yaml").read_text())["judge"]["scoring"]
    for m in MODELS:
        judge = json.loads((d / artifacts.eval_metrics(m, "judge")).read_text())
        assert judge["sampled_pairs"] == judge["expected_pairs"] > 0
        row = table(report, "model | pairwise acc %", m)  # the Table-2 row shows the stage's numbers
        assert float(row["pairwise acc %"]) == pytest.approx(100 * judge[f"{readout}_pairwise_accuracy"], abs=0.05)
        assert float(row["parse rate %"]) == pytest.approx(100 * judge["parse_rate"], abs=0.05)
        length_only = table(report, "model | pairwise acc %", "length only (no model)")  # same sets for every model
        assert float(length_only["pairwise acc %"]) == pytest.approx(
            100 * judge["length_only_pairwise_accuracy"], abs=0.05
        )
        split = table(report, "model | preferred shorter %", m)
        assert split["preferred longer %"] == _pct(judge[f"{readout}_accuracy_preferred_longer"])
        alpaca = json.loads((d / artifacts.alpaca_eval(m)).read_text())
        assert len(alpaca) == 3 and set(alpaca[0]) == {"instruction", "output", "generator"}
    h2h = json.loads((d / artifacts.matchup_metrics("m3_vs_sft_baseline")).read_text())
    assert h2h["win"] + h2h["tie"] + h2h["loss"] == h2h["n"] == 3
    # m3 judged its own matchup too: its self-preference is its win rate by itself minus by the judge
    assert h2h["self_preference"] == pytest.approx(h2h["self_judged_win_rate"] - h2h["win_rate_ties_half"])
    row = table(report, "a vs b |", "m3 vs sft_baseline")
    for col, key in (
        ("win %", "win_rate"),
        ("tie %", "tie_rate"),
        ("loss %", "loss_rate"),
        ("win rate %", "win_rate_ties_half"),
    ):
        assert float(row[col]) == pytest.approx(100 * h2h[key], abs=0.05), col
    assert int(row["n"]) == h2h["n"]
    for m in MODELS:  # the judge-free measure: 3 verifiable prompts, IFEval's four accuracies
        follow = json.loads((d / artifacts.eval_metrics(m, "follow")).read_text())
        assert follow["prompts"] == 3 and 0 <= follow["prompt_strict"] <= follow["prompt_loose"] <= 1
        row = table(report, "model | prompt strict %", m)
        assert float(row["prompt strict %"]) == pytest.approx(100 * follow["prompt_strict"], abs=0.05)
    # the paired difference is the difference of the two models' own numbers on the same items
    paired = json.loads((d / "reports/comparisons.json").read_text())["m3_vs_sft_baseline"]
    m3, sft = (json.loads((d / artifacts.eval_metrics(m, "follow")).read_text()) for m in ("m3", "sft_baseline"))
    assert paired["prompt_strict_diff"] == pytest.approx(m3["prompt_strict"] - sft["prompt_strict"])
    j3, jb = (json.loads((d / artifacts.eval_metrics(m, "judge")).read_text()) for m in ("m3", "sft_baseline"))
    key = f"{readout}_pairwise_accuracy"
    assert paired["pairwise_accuracy_diff"] == pytest.approx(j3[key] - jb[key])
    assert paired["ranked_sets"] == 3 and paired["verifiable_prompts"] == 3
    # the log-probability shift: on more prompts than are answered (5 references scored, 3 answered)
    a3, ab = (json.loads((d / artifacts.eval_metrics(m, "answer")).read_text()) for m in ("m3", "sft_baseline"))
    assert a3["responses"] == 3 and a3["reference_prompts"] == paired["prompts"] == 5
    shift = a3["reference_logprob_mean"] - ab["reference_logprob_mean"]
    assert paired["reference_logprob_diff"] == pytest.approx(shift)
    assert paired["answered_prompts"] == 3  # and the answers' length, on the prompts both answered
    assert paired["response_tokens_diff"] == pytest.approx(a3["mean_tokens"] - ab["mean_tokens"])
    assert "answer tokens Δ" in report
    assert "Paired differences" in report
    assert (d / "reports/figures/head_to_head.png").stat().st_size > 1000
    # `dvc plots show` draws the intervals as error bars, with the chance line where one applies
    plots = json.loads(dvc(["plots", "show", "--json"], d).stdout)["data"]
    judge_plot = next(v[0]["content"] for k, v in plots.items() if k.startswith("Judge pairwise accuracy"))
    assert [layer["mark"]["type"] for layer in judge_plot["layer"]] == ["errorbar", "point", "rule"]
    assert {r["model"] for r in judge_plot["data"]["values"]} == set(MODELS)
    assert all({"value", "ci_low", "ci_high"} <= set(r) for r in judge_plot["data"]["values"])
    assert "iteration" in (d / "reports/plots/iterations.csv").read_text()


def test_second_repro_is_a_no_op(project):
    d, _ = project
    assert "up to date" in dvc(["status"], d).stdout
    lock, before = (d / "dvc.lock").read_text(), outputs(d)
    again = dvc(["repro"], d)
    # Nothing run, and nothing restored from the run cache either (that prints no "Running stage").
    assert ran(again.stdout) == set() and "is cached" not in again.stdout, again.stdout
    assert skipped(again.stdout) == set(ALL_STAGES), again.stdout
    assert (d / "dvc.lock").read_text() == lock and outputs(d) == before
    assert "up to date" in dvc(["status"], d).stdout


# What a stage may touch beyond its deps and outs: its params (tracked by dvc as params), the code (deps
# checked by tests/test_dvc_graph.py), its own progress folder, MLflow's store and git's and dvc's files.
NOT_ARTIFACTS = (
    ".srlm/",
    "mlflow.db",
    "mlruns/",
    "mlartifacts/",
    ".git/",
    ".dvc/",
    "srlm/",
    "stages/",
    "params.yaml",
    "dvc.yaml",
    "dvc.lock",
    ".dvcignore",
)


def undeclared_files(d, log) -> dict:
    """Per stage of the audit log (srlm.stage._audit_files), the files it read that are not among its deps
    (or outs) in dvc.lock, and those it wrote that are not among its outs."""
    lock = yaml.safe_load((d / "dvc.lock").read_text())["stages"]

    def covered(path, declared):
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in declared)

    out = {}
    for r in map(json.loads, log.read_text().splitlines()):
        st = lock[r["stage"]]
        deps, outs = [x["path"] for x in st.get("deps", [])], [x["path"] for x in st.get("outs", [])]
        reads = [p for p in r["read"] if not p.startswith(NOT_ARTIFACTS) and not covered(p, deps + outs)]
        writes = [
            p for p in r["write"] if not p.startswith(NOT_ARTIFACTS) and ".tmp-" not in p and not covered(p, outs)
        ]
        if reads or writes:
            out[r["stage"]] = {"read": reads, "write": writes}
    return out


def test_every_stage_reads_only_its_deps_and_writes_only_its_outs(project):
    """The cache key is complete: a file a stage opens but dvc.yaml does not declare would let a cached
    result come from old data. Files are seen by an audit hook in each stage's process."""
    d, _ = project
    log = d.parent / "files.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert {r["stage"] for r in records} == set(ALL_STAGES)
    assert not undeclared_files(d, log), "files a stage touches that dvc.yaml does not declare for it"
    # the hook does see the artifacts
    judge = next(r for r in records if r["stage"] == "judge@1")
    assert "data/it1/candidates.jsonl" in judge["read"] and "data/it1/judgments.jsonl" in judge["write"]
    assert any(p.startswith("models/m1/") for p in judge["read"])


def commit(d):
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], d)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "--allow-empty", "-qm", "run"], d)


def test_a_teammate_pulls_the_run_from_a_shared_remote(project, tmp_path):
    d, _ = project
    dvc(["remote", "add", "-d", "shared", str(tmp_path / "remote")], d)
    dvc(["push"], d)
    commit(d)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(d), str(clone)], tmp_path)
    assert not (clone / "models/m3").exists()
    dvc(["pull"], clone)
    for f in ("models/m3/adapter_model.safetensors", "data/it2/pairs.jsonl", "data/eval/m3/responses.jsonl"):
        assert (clone / f).read_bytes() == (d / f).read_bytes()
    status = dvc(["status"], clone).stdout
    assert "up to date" in status, status


def test_changing_judge_samples_reruns_only_judge_and_downstream(project):
    d, _ = project
    commit(d)
    # Tracking is off from here on: these runs check what DVC reruns, and MLflow costs seconds per stage.
    exp = dvc(["exp", "run", "-n", "samples2", "-S", "judge.samples=2"], d, SRLM_TRACKING="off")
    # every stage that reads judge.* reruns; what follows from their outputs reruns only where an output
    # changed (new scores can leave the same chosen and rejected texts, hence the same M2); nothing upstream
    reads_judge = {"judge@1", "judge@2", "judge_prev@1", "judge_prev@2", "pairs@1", "report"} | {
        f"eval_judge@{m}" for m in MODELS
    }
    downstream = reads_judge | {
        "meta_judge@1",  # reads the judgments (and writes an empty file under method=srlm)
        "meta_judge@2",
        "pairs@2",
        "dpo@1",
        "dpo@2",
        "sample@2",
        "answer@m3",
        "follow@m3",
        "head_to_head@m3_vs_sft_baseline",
    }
    assert reads_judge <= ran(exp.stdout) <= downstream, exp.stdout
    show = dvc(["exp", "show", "--csv"], d).stdout
    assert "judge.samples" in show


def switch_method(d, name, *settings):
    """`dvc exp run -n <name>` with judge.samples=2 (the workspace's experiment) and `settings`: the stages
    that read `method` rerun (judge_prev, meta_judge, pairs, dpo of iteration 1, the report); what follows
    reruns only where an output changed (e.g. the same M2); never the prompts, sampling or judging of
    iteration 1. No stage reads a file it does not declare."""
    log = d.parent / f"files-{name}.jsonl"
    args = ["exp", "run", "-n", name, "-S", "judge.samples=2"]
    for setting in settings:
        args += ["-S", setting]
    exp = dvc(args, d, SRLM_TRACKING="off", SRLM_AUDIT_FILES=str(log))
    certain = {"judge_prev@1", "judge_prev@2", "meta_judge@1", "meta_judge@2", "pairs@1", "dpo@1", "report"}
    downstream = certain | {
        "pairs@2",
        "dpo@2",
        "sample@2",
        "judge@2",
        "eval_judge@m3",
        "answer@m3",
        "follow@m3",
        "head_to_head@m3_vs_sft_baseline",
    }
    assert certain <= ran(exp.stdout) <= downstream, exp.stdout
    assert not undeclared_files(d, log)


def test_cream_reuses_the_generation_stages(project):
    d, _ = project
    # The workspace holds the judge.samples=2 experiment; CREAM on top of it must not resample or rejudge
    # iteration 1, only add the previous model's judgments and retrain.
    # judge_prev reads the previous model, which is its dep
    switch_method(d, "cream", "method=cream")
    for t, prev in ((1, "m0"), (2, "m1")):  # iteration 1 compares with m0, as in CREAM's code
        pairs = read_jsonl(d / artifacts.pairs(t).path)
        assert pairs and all(0 <= p["consistency"] <= 1 for p in pairs)
        judged_prev = json.loads((d / artifacts.iteration_metrics(t, "judge_prev")).read_text())
        candidates = read_jsonl(d / artifacts.candidates(t).path)
        assert judged_prev["model"] == prev and judged_prev["candidates"] == len(candidates) > 0
        dpo = json.loads((d / artifacts.iteration_metrics(t, "dpo")).read_text())
        assert dpo["consistency_mean"] == pytest.approx(sum(p["consistency"] for p in pairs) / len(pairs))
    report = (d / "reports/report.md").read_text()
    assert "(CREAM)" in report and "consistency C" in report
    compared = run([sys.executable, "-m", "srlm.report", "compare", "samples2", "cream"], d).stdout
    assert "| method | srlm | cream |" in compared and (d / "reports/compare.md").is_file()
    # switching the consistency measure starts the rerun at pairs (dpo and the rest follow from its new
    # outputs), never at the judging
    params = d / "params.yaml"
    before = params.read_text()
    params.write_text(before.replace("consistency: kendall", "consistency: spearman"))
    dry = dvc(["repro", "--dry"], d)
    params.write_text(before)
    assert ran(dry.stdout) == {"pairs@1", "pairs@2"}


def test_meta_rewarding_reuses_the_generation_stages(project):
    """-S method=meta on top of the CREAM experiment: the meta-judge and the length-controlled pairs are new,
    the prompts, candidates and judgments of iteration 1 are reused."""
    d, _ = project
    switch_method(d, "meta", "method=meta", "pairs.length_rho=[0.0,0.3]")
    compared = spread = 0
    for t, rho in ((1, 0.0), (2, 0.3)):
        # the tiny judge's expected scores barely vary (a judgment that is only "Score: N" reads the same
        # expected score as any other), so few prompts, or none, have a candidate whose judgments differ: the
        # judge pairs themselves are tested in tests/test_judge_pairs.py, the verdicts on the tiny model too
        meta = json.loads((d / artifacts.iteration_metrics(t, "meta_judge")).read_text())
        judge_pairs = read_jsonl(d / artifacts.judge_pairs(t).path, allow_empty=True)
        assert meta["method"] == "meta" and meta["comparisons"] == 2 * meta["candidates_compared"]  # k = 2
        assert meta["candidates_compared"] + meta.get("dropped_no_spread", 0) == meta["prompts"] > 0
        differ = {  # prompts with a whole candidate whose judgments' expected scores differ: each gives one compared
            c["prompt_id"]
            for c in read_jsonl(d / artifacts.judgments(t).path)
            if c["finish_reason"] != "length" and len({x for x in c["expected_scores"] if x is not None}) > 1
        }
        assert meta["candidates_compared"] == len(differ)
        spread += len(differ)
        assert meta["judge_pairs"] == len(judge_pairs)
        compared += meta["comparisons"]
        assert all(p["kind"] == "judge" and p["chosen_score"] != p["rejected_score"] for p in judge_pairs)
        dpo = json.loads((d / artifacts.iteration_metrics(t, "dpo")).read_text())
        assert dpo["judge_pairs"] + dpo["judge_pairs_left_out"] == len(judge_pairs)
        assert dpo["judge_pairs"] <= dpo["actor_pairs"]  # meta.max_judge_share: 0.5
        assert json.loads((d / artifacts.iteration_metrics(t, "pairs")).read_text())["length_rho"] == rho
    assert compared > 0 or not spread  # the meta-judge read verdicts wherever it had judgments to compare
    report = (d / "reports/report.md").read_text()
    assert "(Meta-Rewarding)" in report and "## Meta-judge per iteration" in report
    # leaving the meta-judge's iterations reruns it (now a no-op) and the training, never the judging
    params = d / "params.yaml"
    before = params.read_text()
    changed = yaml.safe_load(before)
    assert changed["meta"]["judge_iterations"] == [1, 2] and changed["pairs"]["length_rho"] == [0.0, 0.3]
    changed["meta"]["judge_iterations"] = [1]
    params.write_text(yaml.safe_dump(changed, sort_keys=False))
    try:
        dry = dvc(["repro", "--dry"], d)
    finally:
        params.write_text(before)
    assert ran(dry.stdout) == {"meta_judge@1", "meta_judge@2"}, dry.stdout


@pytest.mark.parametrize("key", ["batch_size", "shard_size"])
def test_the_batching_params_rerun_every_generating_stage(project, key):
    """They decide which prompts share a batch and a seed (tests/test_determinism.py), so each is a param of
    every stage that generates, and of no other: a dry run (which does not follow changed outputs
    downstream) lists exactly those."""
    d, _ = project
    params = d / "params.yaml"
    before = params.read_text()
    p = yaml.safe_load(before)
    p["generation"][key] += 1
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    try:
        dry = dvc(["repro", "--dry"], d)
    finally:
        params.write_text(before)
    generating = {
        "build_eft",
        "gen_prompts",
        "sample",
        "judge",
        "judge_prev",
        "meta_judge",
        "eval_judge",
        "answer",
        "follow",
        "head_to_head",
    }
    assert ran(dry.stdout) == {s for s in ALL_STAGES if s.split("@")[0] in generating}, dry.stdout
