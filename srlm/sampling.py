"""What generating means to the stages, without any model code: the sampling parameters, a completion,
the interface every generation backend implements (srlm.generation), a chat turn's rendering, and the
sample stage's N candidates per prompt."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 128
    seed: int = 0

    @classmethod
    def of(cls, section, n: int = 1, seed: int = 0, max_new_tokens: int | None = None) -> SamplingParams:
        """From a params.yaml section's temperature, top_p and max_new_tokens (judge, sample, eft, ...)."""
        return cls(
            n=n,
            temperature=section.temperature,
            top_p=section.top_p,
            seed=seed,
            max_new_tokens=section.max_new_tokens if max_new_tokens is None else max_new_tokens,
        )


@dataclass(frozen=True)
class Completion:
    text: str
    num_tokens: int
    finish_reason: str  # "stop" (end-of-turn token) or "length" (hit max_new_tokens)


class Generator(ABC):
    """What the stages need of a model: srlm.generation's backends implement it, srlm.resume wraps one."""

    tokenizer: object  # renders chat templates for the prompts given to `generate`

    @abstractmethod
    def generate(self, prompts: list[str], params: SamplingParams, desc: str = "generate") -> list[list[Completion]]:
        """Return `params.n` completions for each prompt, in the order of `prompts`."""

    @abstractmethod
    def next_token_probs(
        self, prompts: list[str], continuations: list[list[str]], token_ids: list[int], desc: str = "score"
    ) -> list:
        """For each prompt and each of its continuations (the same number per prompt, none empty), the
        probabilities of `token_ids` as the next token after prompt + continuation: one tensor of shape
        (continuations, len(token_ids)) per prompt. The judge's expected score reads them."""

    @abstractmethod
    def continuation_logprobs(
        self, prompts: list[str], continuations: list[str], desc: str = "log-probability"
    ) -> list:
        """For each prompt and its one continuation (not empty), the log-probability of each token of the
        continuation given the prompt and the tokens before it: a list of floats per prompt."""


def chat_prompt(tokenizer, user_text: str) -> str:
    """Render a single user turn with the model's chat template, ready for the assistant's reply."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True
    )


def sample_responses(generator: Generator, prompts: list[dict], sampling: SamplingParams) -> list[dict]:
    """N candidate responses per prompt record ({id, prompt}); candidate ids are `<prompt id>-c<j>`."""
    rendered = [chat_prompt(generator.tokenizer, p["prompt"]) for p in prompts]
    outs = generator.generate(rendered, sampling, desc="sample")
    rows = []
    for p, comps in zip(prompts, outs):
        for j, c in enumerate(comps):
            rows.append(
                {
                    "prompt_id": p["id"],
                    "candidate_id": f"{p['id']}-c{j}",
                    "prompt": p["prompt"],
                    "response": c.text,
                    "num_tokens": c.num_tokens,
                    "finish_reason": c.finish_reason,
                }
            )
    return rows
