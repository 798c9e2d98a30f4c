"""report: reports/report.md with the paper's Table 2 and Figure 3 for every model, what each
iteration did, and the figures; CSV tables in reports/plots/ for `dvc plots`."""

from srlm import artifacts, stage
from srlm.report import write_report
from srlm.tracking import log_artifact, stage_run

# The params.yaml keys this stage reads: its `params:` in dvc.yaml (tests/test_dvc_graph.py checks).
PARAMS = ["method", "judge.scoring", "evaluation", "iterations", "model.base"]


def run(params):
    with stage_run("report", stage.tracked(params, PARAMS)):
        write_report(params)
        log_artifact(artifacts.REPORT)


if __name__ == "__main__":
    stage.main(run)
