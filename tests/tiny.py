"""A tiny Llama with a locally trained tokenizer: the stand-in model for fast pipeline tests.

A randomly initialised model never writes `Score: N`, so the pipeline would stop at `pairs`.
The checkpoint is therefore taught for a few hundred steps to answer any chat turn with a few
words and a final `Score: N` (N random), which is all the stages need to run for real.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ROOT = Path(__file__).resolve().parent.parent


def _corpus() -> list[str]:
    # The judge's endings, so that " 0" .. " 5" (and " A", " B") are one token each as in real tokenizers:
    # the readouts refuse a tokenizer that writes some labels with more tokens than others.
    texts = [(ROOT / "srlm/templates/judge_additive.txt").read_text()] + [
        f"Score: {d}\nWinner: {w}" for d in range(6) for w in "AB"
    ] * 20
    # The first records of each file only: the tests' expectations of this model were set on them, and new
    # built-in data must not change the test model.
    for name, n in (("ift.jsonl", 160), ("gold_judgments.jsonl", 72)):
        for line in (ROOT / "data/builtin" / name).read_text().splitlines()[:n]:
            rec = json.loads(line)
            texts += [rec["instruction"], rec["response"]]
    return texts


def build_tokenizer(out_dir: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=768, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(_corpus(), trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tok.chat_template = CHATML
    tok.save_pretrained(out_dir)
    return tok


def tiny_config(tok, **overrides):
    """The tiny Llama's shape, for `tok` (build_tokenizer's); `overrides`: LlamaConfig fields."""
    from transformers import LlamaConfig

    fields = (
        dict(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        | overrides
    )
    return LlamaConfig(**fields)


def build_tiny_model(out_dir: str | Path, seed: int = 0, train_steps: int = 300) -> Path:
    from transformers import LlamaForCausalLM

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tok = build_tokenizer(out_dir)
    model = LlamaForCausalLM(tiny_config(tok))
    words = "the a answer is good short clear list of ideas water sun code data yes no".split()
    prompts = [t[:120] for t in _corpus()[1:200]]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(train_steps):
        batch = []
        for _ in range(8):
            reply = " ".join(rng.choices(words, k=rng.randint(2, 6))) + f"\nScore: {rng.randint(0, 5)}"
            text = tok.apply_chat_template(
                [{"role": "user", "content": rng.choice(prompts)}, {"role": "assistant", "content": reply}],
                tokenize=False,
            )
            batch.append(text)
        enc = tok(batch, return_tensors="pt", padding=True)
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        loss = model(**enc, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":
    import sys

    build_tiny_model(sys.argv[1])
