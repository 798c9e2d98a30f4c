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
