"""Inputs too long for the model or for `max_length`: refused or dropped with a message, never a crash
deep inside the model or TRL, and never a silent loss of training data."""

from types import SimpleNamespace

import pytest

from srlm.config import ConfigError
from srlm.generation import TransformersGenerator, encode_prompts
from srlm.io import DataError
from srlm.modeling import ModelError, context_length
from srlm.sampling import SamplingParams
from srlm.training import dpo_examples, fit_to_max_length, sft_examples


def test_context_length_comes_from_the_config(tiny):
    model, _ = tiny
    assert context_length(model.config) == 4096
    assert context_length(SimpleNamespace(n_positions=1024)) == 1024
    assert context_length(SimpleNamespace()) is None


def test_examples_whose_prompt_fills_max_length_are_dropped_and_counted(tiny, caplog):
    model, tok = tiny
    examples = sft_examples([("Say hi.", "Hi."), ("word " * 200, "ok"), ("Say hi.", "hello " * 200)])
    kept, counts = fit_to_max_length(examples, tok, model.config, 64, "sft")
    assert kept == [examples[0], examples[2]]
    assert counts == {"dropped_too_long": 1, "truncated": 1}
    assert "1 of 3 examples dropped: their prompt alone fills sft.max_length = 64" in caplog.text
    assert "1 of 3 examples are longer than sft.max_length = 64" in caplog.text
    assert "raise sft.max_length (the model's context is 4096 tokens)" in caplog.text


def test_a_long_rejected_response_counts_as_truncated(tiny):
    model, tok = tiny
    pairs = [{"prompt": "Say hi.", "chosen": "Hi.", "rejected": "hello " * 200}]
    kept, counts = fit_to_max_length(dpo_examples(pairs), tok, model.config, 64, "dpo")
    assert len(kept) == 1 and counts == {"dropped_too_long": 0, "truncated": 1}


def test_nothing_left_to_train_on_is_an_error_with_the_fix(tiny):
    model, tok = tiny
    pairs = [{"prompt": "word " * 200, "chosen": "a", "rejected": "b"}] * 2
    with pytest.raises(
        DataError,
        match=r"every one of the 2 training examples has a prompt of at least "
        r"dpo.max_length = 64 tokens \(the longest is \d+\).*raise dpo.max_length",
    ):
        fit_to_max_length(dpo_examples(pairs), tok, model.config, 64, "dpo")


def test_max_length_beyond_the_models_context_is_a_params_error(tiny):
    model, tok = tiny
    with pytest.raises(
        ConfigError,
        match="sft.max_length = 5000 is longer than the model's context of 4096 tokens; "
        "set sft.max_length to 4096 or less",
    ):
        fit_to_max_length(sft_examples([("Say hi.", "Hi.")]), tok, model.config, 5000, "sft")


def test_a_prompt_that_leaves_no_room_for_the_answer_is_refused(tiny):
    model, tok = tiny
    text = "water sun " * 3000
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    assert n > 4096
    with pytest.raises(
        ModelError,
        match=f"sample: a prompt of {n} tokens plus 8 new tokens is longer than the model's context of 4096 tokens",
    ):
        TransformersGenerator(model, tok, progress=False).generate(
            ["Hi", text], SamplingParams(max_new_tokens=8), desc="sample"
        )
    # the new tokens count too: a prompt that fits alone is refused when the answer would not fit
    short = len(tok("water sun water", add_special_tokens=False)["input_ids"])
    with pytest.raises(ModelError, match=f"judge: a prompt of {short} tokens plus 8 new tokens"):
        encode_prompts(tok, ["water sun water"], 8, short + 7, "judge")
    assert encode_prompts(tok, ["water sun water"], 8, short + 8, "judge")
    assert encode_prompts(tok, ["Hi"], 8, 4096, "judge") == [tok("Hi", add_special_tokens=False)["input_ids"]]
