"""report: reports/report.md with the paper's Table 2 and Figure 3 for every model, what each
iteration did, and the figures; CSV tables in reports/plots/ for `dvc plots`. Under `dvc repro` or
`dvc exp run` it also completes the pipeline run in MLflow and registers its models (srlm.registry)."""

from srlm import artifacts, stage
from srlm.config import section_dict
from srlm.registry import finish_pipeline, headline_metrics
from srlm.report import write_report
from srlm.tracking import log_artifact, stage_run

# The params.yaml keys this stage reads: its `params:` in dvc.yaml (tests/test_dvc_graph.py checks).
PARAMS = ["method", "judge.scoring", "evaluation", "iterations", "model.base"]


def run(params):
    with stage_run("report", stage.tracked(params, PARAMS)) as tracked:
        write_report(params)
        log_artifact(artifacts.REPORT)
        if tracked is not None:
            iterations = [str(it["next"]) for it in params.iterations.values()]
            headline = headline_metrics(
                list(params.evaluation.models), list(params.evaluation.matchups), params.judge.scoring, artifacts
            )
            finish_pipeline(
                section_dict(params),  # the parent run's params: all of them, as this run read them
                headline,
                artifacts.REPORT,
                models=["m0", "sft_baseline", "m1", *iterations],
                last=iterations[-1] if iterations else "m1",
                method=params.method,
            )


if __name__ == "__main__":
    stage.main(run)
