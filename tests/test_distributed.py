"""Training stages on several processes. With `distributed.num_processes: 2` a stage reruns itself under
`accelerate launch`; here on 2 CPU processes: DDP over gloo (what accelerate runs on a CPU), and FSDP2
through a test-only shim that lets accelerate shard on CPU. Either must train what one process with the
same global batch trains, and only rank 0 writes the model, the metrics and the MLflow run."""

import json
import math
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from srlm import launch, slurm, training
from srlm.config import ConfigError, DistributedConfig, DpoConfig, LoraConfig, SftConfig, derive_seed, parse_params
from srlm.modeling import load_model, resolve_dtype
from srlm.training import dpo_examples, sft_examples, train_dpo, train_sft

ROOT = Path(__file__).resolve().parent.parent
FSDP_YAML = str(ROOT / "configs/accelerate/fsdp.yaml")
LORA = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}
# Process layouts are compared at fp32, where float sums are the only difference between them.
FP32 = {"precision": "fp32"}

# accelerate turns FSDP on for GPUs only; this makes it take the CPU with gloo as if it were one, in the
# launched processes only. FSDP2's sharding, gathering and saving then run for real.
FSDP_ON_CPU = """
import os
if "LOCAL_RANK" in os.environ:
    import torch
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    PartialState._prepare_backend = lambda self, *a, **kw: ("gloo", DistributedType.MULTI_GPU)
    _init = PartialState.__init__
    PartialState.__init__ = lambda self, cpu=False, **kw: _init(self, cpu=False, **kw)

    def _cpu(self):
        self.device = self.device or torch.device("cpu")
    PartialState.set_device = _cpu
"""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("dist") / "model", train_steps=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def project(d: Path, model_dir: Path, model: str, params: dict) -> Path:
    (d / "models").mkdir(parents=True)
    (d / "models" / model).symlink_to(model_dir)
    params = {
        "distributed": {"num_processes": 2, "config_file": FSDP_YAML, "main_process_port": free_port()},
        "iterations": {"1": {"prev": "m0", "model": "m1", "next": "m2"}},
        "evaluation": {"models": ["sft_baseline", "m2"], "matchups": {}},
    } | params  # one iteration: to m2
    (d / "params.yaml").write_text(yaml.safe_dump(params))
    return d


def run_stage(d: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SRLM_TRACKING="off", HF_HUB_OFFLINE="1", TQDM_DISABLE="1") | env
    env.pop("SRLM_THREADS", None)
    p = subprocess.run([sys.executable, *args], cwd=d, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-6000:]
    return p


def max_diff(a: Path, b: Path) -> float:
    x, y = load_model(a)[0].state_dict(), load_model(b)[0].state_dict()  # a LoRA model is stored as its adapter
    assert x.keys() == y.keys()
    return max((x[k] - y[k]).abs().max().item() for k in x)


def generates(model_dir: Path) -> str:
    model, tok = load_model(model_dir)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    return tok.decode(out[0, ids.shape[1] :])


def test_sft_with_lora_on_two_processes_equals_one_process_with_the_double_batch(model_dir, tmp_path):
    rows = [json.loads(line) for line in (ROOT / "data/builtin/ift.jsonl").read_text().splitlines()[:8]]
    d = project(
        tmp_path / "p",
        model_dir,
        "m0",
        {"sft": {"batch_size": 2, "grad_accum": 1, "max_length": 64, "learning_rate": 1e-3, "lora": LORA, **FP32}},
    )
    (d / "data/seed").mkdir(parents=True)
    (d / "data/seed/ift_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    p = run_stage(
        d, str(ROOT / "stages/sft_baseline.py"), SRLM_TRACKING="on", MLFLOW_TRACKING_URI=f"sqlite:///{d}/mlflow.db"
    )
    assert "launching 2 processes" in p.stderr and "training on 2 processes: MULTI_CPU" in p.stderr
    metrics = json.loads((d / "metrics/sft_baseline.json").read_text())
    assert metrics["steps"] == 2 and math.isfinite(metrics["train_loss"])
    with sqlite3.connect(d / "mlflow.db") as db:  # one MLflow run per stage execution, rank 0's
        assert db.execute("select name from runs").fetchall() == [("sft_baseline",)]
    assert not any((d / ".srlm/progress/sft_baseline").glob("*")), "checkpoints are removed after success"
    assert (d / "models/sft_baseline/adapter_model.safetensors").is_file()  # LoRA: the adapter alone is stored
    assert not (d / "models/sft_baseline/model.safetensors").exists()
    generates(d / "models/sft_baseline")

    # One process with batch 4 sees the same 4 examples per step: the same loss and, up to float sums, weights.
    cfg = SftConfig(batch_size=4, grad_accum=1, max_length=64, learning_rate=1e-3, lora=LoraConfig(**LORA), **FP32)
    examples = sft_examples([(r["instruction"], r["response"]) for r in rows])
    one = train_sft(model_dir, tmp_path / "one", examples, cfg, seed=derive_seed(1234, "sft"), work_dir=tmp_path / "w")
    assert metrics["first_loss"] == pytest.approx(one["first_loss"], abs=1e-5)
    assert metrics["final_loss"] == pytest.approx(one["final_loss"], abs=1e-5)
    assert 1e-4 < max_diff(tmp_path / "one", model_dir)  # training moved the weights
    assert max_diff(d / "models/sft_baseline", tmp_path / "one") < 1e-6


def test_cream_dpo_under_fsdp2_equals_one_process_with_the_double_batch(model_dir, tmp_path):
    """Full weights, so a separate reference model is sharded too, and the final weights are gathered."""
    pairs = [
        {
            "id": f"p{i}",
            "kind": "preference",
            "prompt": f"item {i}",
            "chosen": "yes " * (1 + 2 * i),
            "rejected": "no " * (9 - i),
            "consistency": (i + 1) / 9,
        }
        for i in range(8)
    ]
    d = project(
        tmp_path / "p",
        model_dir,
        "m1",
        {
            "method": "cream",
            "dpo": {
                "epochs": 1,
                "batch_size": 2,
                "grad_accum": 1,
                "max_length": 64,
                "learning_rate": 1e-3,
                "lora": {"enabled": False},
                **FP32,
            },
        },
    )
    (d / "data/it1").mkdir(parents=True)
    (d / "data/it1/pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    (tmp_path / "shim").mkdir()
    (tmp_path / "shim/sitecustomize.py").write_text(FSDP_ON_CPU)

    p = run_stage(d, str(ROOT / "stages/dpo.py"), "--iteration", "1", PYTHONPATH=str(tmp_path / "shim"))
    assert "training on 2 processes: FSDP" in p.stderr
    assert "pytorch_model_fsdp_0" in p.stderr  # the Trainer's checkpoints: one shard per process
    metrics = json.loads((d / "data/it1/metrics/dpo.json").read_text())
    assert metrics["steps"] == 2 and metrics["consistency_mean"] == pytest.approx(0.5)
    # At the first step the policy is its reference on every process: ln 2 whatever C is.
    assert metrics["first_loss"] == pytest.approx(math.log(2), abs=1e-6)
    generates(d / "models/m2")

    cfg = DpoConfig(
        epochs=1, batch_size=4, grad_accum=1, max_length=64, learning_rate=1e-3, lora=LoraConfig(enabled=False), **FP32
    )
    one = train_dpo(
        model_dir,
        tmp_path / "one",
        dpo_examples(pairs),
        cfg,
        seed=derive_seed(1234, "dpo", 1),
        work_dir=tmp_path / "w",
        consistency="dynamic",
    )
    assert metrics["final_loss"] == pytest.approx(one["final_loss"], abs=1e-5)
    assert 1e-4 < max_diff(tmp_path / "one", model_dir)
    assert max_diff(d / "models/m2", tmp_path / "one") < 1e-5


# --- the launch itself, without launching -------------------------------------------------------------------


def test_shipped_accelerate_configs_parse(monkeypatch):
    """DeepSpeed is not installed here: its config is checked as far as accelerate goes without it, from the
    file through `accelerate launch`'s environment to the DeepSpeed config the Trainer completes."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    fsdp = load_config_from_file(FSDP_YAML)
    assert fsdp.distributed_type == "FSDP" and fsdp.fsdp_config["fsdp_version"] == 2
    assert fsdp.fsdp_config["fsdp_cpu_ram_efficient_loading"] is False  # see the file: DPO's reference model
    ds_yaml = str(ROOT / "configs/accelerate/deepspeed_zero3.yaml")
    assert load_config_from_file(ds_yaml).distributed_type == "DEEPSPEED"
    args = launch_command_parser().parse_args(
        [
            "--config_file",
            ds_yaml,
            "--num_processes",
            "16",
            "--num_machines",
            "2",
            "--machine_rank",
            "1",
            "--main_process_ip",
            "10.0.0.1",
            "--main_process_port",
            "29500",
            "stages/sft.py",
        ]
    )
    args, defaults, _ = _validate_launch_command(args)
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    cmd, env = prepare_deepspeed_cmd_env(args)
    assert cmd is None and (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", 1, "8")  # torchrun per node
    for k, v in env.items():
        if k.startswith("ACCELERATE_"):
            monkeypatch.setenv(k, v)
    config = DeepSpeedPlugin().deepspeed_config
    assert config["zero_optimization"]["stage"] == 3
    assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert config["gradient_accumulation_steps"] == config["train_micro_batch_size_per_gpu"] == "auto"


@pytest.fixture
def launched(monkeypatch, tmp_path):
    """distribute() up to the exec: the command it would become."""
    calls = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "execve", lambda path, cmd, env: calls.append((cmd, env)))
    monkeypatch.setattr(sys, "argv", ["stages/dpo.py", "--iteration", "2"])
    for var in ("LOCAL_RANK", "RANK", "SRLM_THREADS", slurm.STEP_ENV, "SLURM_NODEID", "SLURM_JOB_ID", "SLURM_STEP_ID"):
        monkeypatch.delenv(var, raising=False)
    return calls


def accelerate_args(cmd: list[str]) -> dict:
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    return dict(zip(cmd[3:-3:2], cmd[4:-3:2]))


def test_one_process_is_not_relaunched(launched):
    launch.distribute(DistributedConfig(), "dpo@2")
    assert launched == []


def test_a_stage_relaunches_itself_under_accelerate(launched):
    launch.distribute(DistributedConfig(num_processes=8, config_file="configs/accelerate/deepspeed_zero3.yaml"), "x")
    ((cmd, env),) = launched
    assert accelerate_args(cmd) == {
        "--config_file": "configs/accelerate/deepspeed_zero3.yaml",
        "--num_processes": "8",
        "--num_machines": "1",
        "--machine_rank": "0",
        "--main_process_port": "29500",
    }
    assert cmd[-3:] == ["stages/dpo.py", "--iteration", "2"]
    if not torch.cuda.is_available():  # 8 processes share the cores instead of each taking them all
        assert env["SRLM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 8))


def test_launched_processes_other_than_rank_0_do_not_track(launched, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("SRLM_TRACKING", "on")
    launch.distribute(DistributedConfig(num_processes=4), "x")
    assert launched == [] and os.environ["SRLM_TRACKING"] == "off" and not launch.is_main_process()


def test_under_slurm_a_stage_becomes_a_step_whose_tasks_launch_their_node_with_its_rank(launched, monkeypatch):
    """The stage process runs itself as a step of one task per node and exits when the step succeeds; in a
    task, accelerate is launched with the node's rank, the step's first node as the main process and a port
    offset by the job and step ids. (tests/test_slurm.py runs this on a real Slurm.)"""
    dist = DistributedConfig(num_processes=16, num_machines=2, launcher="slurm", srun_args=["--gpus-per-node=8"])
    steps = []
    monkeypatch.setattr(launch.slurm, "run_step", lambda *a: steps.append(a))
    with pytest.raises(SystemExit) as stop:
        launch.distribute(dist, "dpo@2")
    assert stop.value.code == 0 and launched == []
    assert steps == [([sys.executable, "stages/dpo.py", "--iteration", "2"], "dpo@2", 2, 1, ["--gpus-per-node=8"])]

    env = {slurm.STEP_ENV: "dpo@2", "SLURM_NODEID": "1", "SLURM_JOB_ID": "4321", "SLURM_STEP_ID": "3"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(launch.slurm, "first_node", lambda: "gpu-a17")
    launch.distribute(dist, "dpo@2")
    ((cmd, _),) = launched
    assert accelerate_args(cmd) | {"--config_file": None} == {
        "--config_file": None,
        "--num_processes": "16",
        "--num_machines": "2",
        "--main_process_ip": "gpu-a17",
        "--machine_rank": "1",
        "--main_process_port": str(29500 + (4321 * 7 + 3) % 10000),
    }


def test_slurm_failures_are_reported_in_the_schedulers_words():
    """srun's and slurmstepd's own lines, as a cancelled and a failed step printed them on the test cluster."""
    cancelled = [
        "slurmstepd-vm: error: *** STEP 2.0 ON vm CANCELLED AT 2026-12-02T13:21:47 ***",
        "srun: Job step aborted: Waiting up to 7 seconds for job step to finish.",
        "srun: error: vm: task 0: Terminated",
    ]
    text = slurm._reason("sft", 143, cancelled)
    assert "Slurm step sft was cancelled" in text and "srun exit code 143" in text and cancelled[0] in text
    failed = ["srun: error: vm: task 1: Exited with exit code 3"]
    assert "Slurm step judge@1 failed" in slurm._reason("judge@1", 3, failed)
    assert "Rerun `dvc repro`" in slurm._reason("x", 1, [])


def test_slurm_without_srun_says_so(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(slurm.SlurmError, match="no `srun` on PATH"):
        slurm.run_step(["true"], "sft", 1, 1)


@pytest.mark.parametrize(
    "dist, needle",
    [
        (
            {"num_processes": 3, "num_machines": 2, "launcher": "slurm"},
            "must be a multiple of distributed.num_machines",
        ),
        ({"num_processes": 4, "num_machines": 2}, "needs distributed.launcher: slurm"),
        ({"launcher": "slurm", "srun_args": ["gpu"]}, "a list of srun options"),
        ({"launcher": "slurm", "main_process_port": 60000}, "at most 55535"),
        ({"launcher": "pbs"}, "launcher"),
        ({"num_processes": 2, "config_file": "configs/accelerate/nope.yaml"}, "no such file"),
        ({"num_processes": 0}, "must be > 0"),
        ({"main_process_port": 70000}, "is not a port"),
    ],
)
def test_bad_distributed_params_name_the_key(dist, needle, monkeypatch):
    monkeypatch.chdir(ROOT)
    generation = {"dtype": "float32"}
    with pytest.raises(ConfigError, match=needle):
        parse_params({"distributed": dist, "generation": generation})


def test_slurm_needs_an_explicit_generation_dtype(monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ConfigError, match="generation.dtype = 'auto' resolves on the machine"):
        parse_params({"distributed": {"launcher": "slurm"}})
    parse_params({"distributed": {"launcher": "slurm"}, "generation": {"dtype": "bfloat16"}})


@pytest.mark.parametrize("amx, avx512_bf16, auto", [(True, True, True), (False, True, True), (False, False, False)])
def test_precision_auto_is_bf16_where_the_cpu_has_bf16_units_and_fp16_needs_a_gpu(monkeypatch, amx, avx512_bf16, auto):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert training._precision("auto") == {"bf16": auto, "fp16": False}
    assert resolve_dtype("auto") == ("bfloat16" if auto else "float32")
    assert training._precision("bf16") == {"bf16": True, "fp16": False}
    assert training._precision("fp32") == {"bf16": False, "fp16": False}
    assert resolve_dtype("float32") == "float32" and resolve_dtype("bfloat16") == "bfloat16"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        training._precision("fp16")


@pytest.mark.parametrize("bf16", [True, False])
def test_precision_auto_on_a_gpu_follows_its_bf16_support(monkeypatch, bf16):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    assert training._precision("auto") == {"bf16": bf16, "fp16": False}
    assert resolve_dtype("auto") == ("bfloat16" if bf16 else "float32")
    assert training._precision("fp16") == {"bf16": False, "fp16": True}


def test_negative_save_steps_is_refused():
    with pytest.raises(ConfigError, match="save_steps = -1 must be >= 0"):
        parse_params({"dpo": {"save_steps": -1}})


@pytest.mark.parametrize(
    "visible, per_node, local, share",
    [
        ("0,1,2,3,4,5,6,7", "8", "3", "3"),
        ("0,1,2,3,4,5,6,7", "4", "1", "2,3"),
        ("5", "8", "2", None),
        ("0,1", "1", "0", None),
    ],
)
def test_generation_tasks_on_a_node_split_its_gpus(monkeypatch, visible, per_node, local, share):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", per_node)
    monkeypatch.setenv("SLURM_LOCALID", local)
    assert slurm.gpu_share() == share
