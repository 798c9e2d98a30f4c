"""Models trained with LoRA are stored as their adapter on the full checkpoint they started from, each iteration's
update stacked on the last along the rank; loading merges them in fp32, to exactly the start model plus the updates."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from srlm.config import DpoConfig, LoraConfig, SftConfig
from srlm.modeling import (
    ADAPTER_WEIGHTS,
    ModelError,
    adapter_base,
    is_adapter,
    load_model,
    merged_checkpoint,
    save_adapter,
    stacked_adapter,
)
from srlm.training import dpo_examples, sft_examples, train_dpo, train_sft

ROOT = Path(__file__).resolve().parent.parent
LORA = LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0)
COMMON = dict(batch_size=4, grad_accum=1, max_length=96, learning_rate=1e-2, precision="fp32", save_steps=0)


def lines(name: str, n: int) -> list[dict]:
    return [json.loads(x) for x in (ROOT / "data/builtin" / name).read_text().splitlines()[:n]]


@pytest.fixture(scope="module")
def chain(tiny_model_dir, tmp_path_factory, monkeypatch_module):
    """M1 = tiny + SFT LoRA; M2 = M1 + DPO LoRA (stored on tiny, rank 8); M2f = M1 + full-fine-tuned DPO."""
    monkeypatch_module.setenv("SRLM_TRACKING", "off")
    d = tmp_path_factory.mktemp("chain")
    ift = sft_examples([(r["instruction"], r["response"]) for r in lines("ift.jsonl", 8)])
    train_sft(tiny_model_dir, d / "m1", ift, SftConfig(**COMMON, lora=LORA), seed=1, work_dir=d / "w1")
    pairs = dpo_examples(
        [
            {"prompt": s["instruction"], "chosen": s["responses"][0]["text"], "rejected": s["responses"][-1]["text"]}
            for s in lines("ranked.jsonl", 4)
        ]
    )
    train_dpo(d / "m1", d / "m2", pairs, DpoConfig(**COMMON, lora=LORA), seed=2, work_dir=d / "w2")
    full = DpoConfig(**COMMON | {"learning_rate": 1e-4}, lora=LoraConfig(enabled=False))
    train_dpo(d / "m1", d / "m2f", pairs, full, seed=2, work_dir=d / "w3")
    return d


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_a_lora_model_is_stored_as_its_adapter_and_an_iteration_stacks_on_the_last(chain, tiny_model_dir):
    m1, m2 = chain / "m1", chain / "m2"
    assert is_adapter(m1) and is_adapter(m2) and not (m2 / "model.safetensors").exists()
    assert adapter_base(m1) == adapter_base(m2) == Path(tiny_model_dir)  # both on the full start checkpoint
    c1, c2 = (json.loads((m / "adapter_config.json").read_text()) for m in (m1, m2))
    assert (c1["r"], c1["lora_alpha"], c2["r"], c2["lora_alpha"]) == (4, 4, 8, 8)  # scale 1: B carries alpha / r
    a1, a2 = load_file(m1 / ADAPTER_WEIGHTS), load_file(m2 / ADAPTER_WEIGHTS)
    assert set(a1) == set(a2)
    for k in a1:  # M1's update is kept exactly in M2's first rank rows / columns
        kept = a2[k][:4] if ".lora_A." in k else a2[k][:, :4]
        assert torch.equal(kept, a1[k])
    # a fully fine-tuned model is a full checkpoint
    assert not is_adapter(chain / "m2f") and (chain / "m2f" / "model.safetensors").is_file()


def test_loading_merges_in_fp32_to_the_start_model_plus_each_update(chain, tiny_model_dir):
    base = load_model(tiny_model_dir)[0].state_dict()
    m1, m2 = (load_model(chain / m)[0].state_dict() for m in ("m1", "m2"))
    a1, a2 = load_file(chain / "m1" / ADAPTER_WEIGHTS), load_file(chain / "m2" / ADAPTER_WEIGHTS)
    touched = 0
    for k, w in base.items():
        prefix = "base_model.model." + k.removesuffix(".weight")
        if f"{prefix}.lora_A.weight" not in a1:
            assert torch.equal(m1[k], w) and torch.equal(m2[k], w)  # LoRA never touched it: bit-identical
            continue
        touched += 1
        d1 = a1[f"{prefix}.lora_B.weight"] @ a1[f"{prefix}.lora_A.weight"]
        d2 = a2[f"{prefix}.lora_B.weight"][:, 4:] @ a2[f"{prefix}.lora_A.weight"][4:]  # the DPO update alone
        assert torch.allclose(m1[k], w + d1, atol=1e-6)
        assert torch.allclose(m2[k], w + d1 + d2, atol=1e-6)
    assert touched and any(not torch.equal(m2[k], m1[k]) for k in base)  # DPO moved the model
    assert load_model(chain / "m2", dtype="bfloat16")[0].dtype == torch.bfloat16


def test_vllm_reads_an_adapter_as_a_merged_checkpoint_written_once(chain, tmp_path):
    out = merged_checkpoint(chain / "m2", cache=tmp_path)
    assert (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file()
    merged, direct = load_model(out)[0].state_dict(), load_model(chain / "m2")[0].state_dict()
    assert all(torch.equal(merged[k], direct[k]) for k in direct)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert (
        merged_checkpoint(chain / "m2", cache=tmp_path) == out
        and (out / "model.safetensors").stat().st_mtime_ns == stamp
    )
    assert merged_checkpoint(chain / "m2f", cache=tmp_path) == chain / "m2f"  # a full checkpoint as it is


def test_adapters_on_other_modules_or_a_missing_base_are_clear_errors(chain, tmp_path):
    a = load_file(chain / "m1" / ADAPTER_WEIGHTS)
    fewer = {k: v for k, v in a.items() if "q_proj" not in k}
    with pytest.raises(ModelError, match="covers other modules"):
        stacked_adapter(chain / "m1", fewer, 1.0)
    tensors, fields = stacked_adapter(chain / "m1", a, 1.0)
    (tmp_path / "lost").mkdir()
    save_adapter(tmp_path / "lost", tensors, fields | {"base": tmp_path / "gone"})
    assert json.loads((tmp_path / "lost/adapter_config.json").read_text())["base_model_name_or_path"] == "../gone"
    with pytest.raises(ModelError, match="which is not a model checkpoint"):
        load_model(tmp_path / "lost")


def test_merge_writes_a_plain_checkpoint_for_other_tools(chain, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "m2-full"
    p = subprocess.run(
        [sys.executable, "-m", "srlm.modeling", "merge", str(chain / "m2"), str(out), "--dtype", "bfloat16"],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # the adapter finds its base relative to itself, from any working directory
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "merged adapter" in p.stdout and not is_adapter(out)
    model = load_model(out, dtype="bfloat16")[0]
    direct = load_model(chain / "m2", dtype="bfloat16")[0].state_dict()
    assert all(torch.equal(v, direct[k]) for k, v in model.state_dict().items())
    bad = subprocess.run(
        [sys.executable, "-m", "srlm.modeling", "merge", str(tmp_path), str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "not a model checkpoint (no config.json)" in bad.stderr


def test_the_adapter_files_are_the_same_whatever_the_hash_seed(chain, tmp_path):
    """DVC compares outputs by hash across runs: peft's set of target modules must not leak hash order."""
    import subprocess
    import sys

    code = (
        "import sys; from safetensors.torch import load_file; from srlm.modeling import save_adapter, stacked_adapter;"
        "t, f = stacked_adapter(sys.argv[1], load_file(sys.argv[1] + '/adapter_model.safetensors'), 1.0);"
        "save_adapter(sys.argv[2], t, f)"
    )
    texts = set()
    for seed in ("1", "2", "3"):
        out = tmp_path / seed
        out.mkdir()
        env = {"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}
        subprocess.run([sys.executable, "-c", code, str(chain / "m1"), str(out)], check=True, env=env)
        texts.add((out / "adapter_config.json").read_text() + str((out / ADAPTER_WEIGHTS).read_bytes().__hash__()))
    assert len(texts) == 1
