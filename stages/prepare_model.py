"""prepare_model: resolve model.base to a trainable checkpoint in models/m0."""

from srlm import artifacts, stage
from srlm.io import atomic_dir
from srlm.modeling import prepare_base_model
from srlm.tracking import record_model, stage_run, write_metrics

# The params.yaml keys this stage reads: its `params:` in dvc.yaml (tests/test_dvc_graph.py checks).
PARAMS = ["model"]


def run(params):
    cfg = params.model
    with stage_run("prepare_model", stage.tracked(params, PARAMS)):
        with atomic_dir(artifacts.model_dir("m0")) as tmp:
            info = prepare_base_model(cfg.base, tmp, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
        write_metrics(artifacts.metrics("prepare_model"), {"parameters": info["parameters"]})
        record_model("m0", artifacts.model_dir("m0"), {"iteration": 0, "base": cfg.base, **info})


if __name__ == "__main__":
    stage.main(run)
