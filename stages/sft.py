"""sft: M0 fine-tuned on seed IFT + EFT data -> M1."""

from srlm import artifacts, seed, stage
from srlm.config import derive_seed
from srlm.launch import distribute, is_main_process
from srlm.tracking import data_hashes, record_model, stage_run, write_metrics
from srlm.training import checkpoint_dir, sft_examples, train_sft

# The params.yaml keys this stage reads: its `params:` in dvc.yaml (tests/test_dvc_graph.py checks).
PARAMS = [
    "seed",
    "sft",
    "distributed.num_processes",
    "distributed.num_machines",
    "distributed.config_file",
    "model.trust_remote_code",
]


def run(params):
    distribute(params.distributed, "sft")  # reruns this script under `accelerate launch` or as a Slurm step
    cfg = params.sft
    tracked = stage.tracked(params, PARAMS)
    with stage_run("sft", tracked):
        pairs, counts = seed.sft_pairs(
            artifacts.IFT_TRAIN,
            artifacts.EFT_TRAIN,
            cfg.max_ift_examples,
            cfg.max_eft_examples,
            derive_seed(params.seed, "subset"),
        )
        examples, m0 = sft_examples(pairs), artifacts.model_dir("m0")
        metrics = train_sft(
            m0,
            artifacts.model_dir("m1"),
            examples,
            cfg,
            derive_seed(params.seed, "sft"),
            work_dir=checkpoint_dir("sft", tracked, m0, examples, params.distributed),
            trust_remote_code=params.model.trust_remote_code,
        )
        if is_main_process():
            write_metrics(artifacts.metrics("sft"), metrics | counts)
            record_model(
                "m1",
                artifacts.model_dir("m1"),
                {"iteration": 1, "parent": "m0", "data": data_hashes(artifacts.IFT_TRAIN, artifacts.EFT_TRAIN)},
            )


if __name__ == "__main__":
    stage.main(run)
