"""sft_baseline: M0 fine-tuned on seed IFT only (the paper's SFT baseline)."""

from srlm import artifacts, seed, stage
from srlm.config import derive_seed
from srlm.launch import distribute, is_main_process
from srlm.tracking import data_hashes, record_model, stage_run, write_metrics
from srlm.training import checkpoint_dir, sft_examples, train_sft

# The params.yaml keys this stage reads: its `params:` in dvc.yaml (tests/test_dvc_graph.py checks).
PARAMS = [
    "seed",
    "sft.epochs",
    "sft.learning_rate",
    "sft.final_learning_rate",
    "sft.batch_size",
    "sft.grad_accum",
    "sft.max_length",
    "sft.warmup_ratio",
    "sft.max_ift_examples",
    "sft.gradient_checkpointing",
    "sft.precision",
    "sft.save_steps",
    "sft.lora",
    "distributed.num_processes",
    "distributed.num_machines",
    "distributed.config_file",
    "model.trust_remote_code",
]


def run(params):
    distribute(params.distributed, "sft_baseline")  # reruns this script under `accelerate launch` or as a Slurm step
    cfg = params.sft
    tracked = stage.tracked(params, PARAMS)
    with stage_run("sft_baseline", tracked):
        ift = seed.limit(seed.load_ift(artifacts.IFT_TRAIN), cfg.max_ift_examples, derive_seed(params.seed, "subset"))
        examples = sft_examples([(r["instruction"], r["response"]) for r in ift])
        m0 = artifacts.model_dir("m0")
        metrics = train_sft(
            m0,
            artifacts.model_dir("sft_baseline"),
            examples,
            cfg,
            derive_seed(params.seed, "sft"),
            work_dir=checkpoint_dir("sft_baseline", tracked, m0, examples, params.distributed),
            trust_remote_code=params.model.trust_remote_code,
        )
        if is_main_process():
            write_metrics(artifacts.metrics("sft_baseline"), metrics)
            record_model(
                "sft_baseline",
                artifacts.model_dir("sft_baseline"),
                {"iteration": "baseline", "parent": "m0", "data": data_hashes(artifacts.IFT_TRAIN)},
            )


if __name__ == "__main__":
    stage.main(run)
