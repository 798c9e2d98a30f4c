"""Seed data: IFT (instruction -> response), ranked response sets, gold judgments.

Three sources, one output schema:
- builtin: the files under data/builtin, written for this project;
- oasst1: OpenAssistant conversations through `datasets` (English first turns; `max_ift` of the
  prompts with a rank-0 reply for IFT; the other prompts with >= 2 ranked replies for the judge
  data and its evaluation);
- jsonl: the user's own files in the builtin schema.
"""

from __future__ import annotations

import os
import random
from collections import Counter, defaultdict
from pathlib import Path

from .artifacts import EFT, GOLD, IFT, RANKED, VERIFIABLE
from .io import DataError, read_jsonl
from .prompts import NearDuplicates, judge_prompt
from .scores import parse_score

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "data" / "builtin"


def load_ift(path) -> list[dict]:
    return [{k: r[k] for k in IFT} | {"category": r.get("category", "")} for r in read_jsonl(path, IFT)]


def load_ranked(path) -> list[dict]:
    out = []
    for i, r in enumerate(read_jsonl(path, RANKED), 1):
        where = f"{path}: record {i} (id {r['id']!r})"
        resps = r["responses"]
        if not 2 <= len(resps) <= 16:
            raise DataError(f"{where}: needs 2 to 16 responses, has {len(resps)}")
        ranks = []
        for j, x in enumerate(resps):
            if not isinstance(x, dict) or not isinstance(x.get("text"), str) or not x["text"].strip():
                raise DataError(f"{where}: responses[{j}] needs a non-empty 'text'")
            if not isinstance(x.get("rank"), int) or isinstance(x.get("rank"), bool) or x["rank"] < 0:
                raise DataError(f"{where}: responses[{j}].rank must be an integer >= 0, got {x.get('rank')!r}")
            ranks.append(x["rank"])
        if len(set(ranks)) < 2:
            raise DataError(f"{where}: all responses have the same rank; nothing to learn from")
        out.append(
            {
                "id": r["id"],
                "instruction": r["instruction"],
                "category": r.get("category", ""),
                "responses": [{"text": x["text"], "rank": x["rank"]} for x in resps],
            }
        )
    return out


def load_verifiable(path) -> list[dict]:
    """Prompts whose instructions a program checks (lm-eval's IFEval checkers, `srlm.verifiable`):
    {id, instruction, instruction_id_list, kwargs}, one kwargs mapping per instruction id."""
    out = []
    for i, r in enumerate(read_jsonl(path, VERIFIABLE), 1):
        where = f"{path}: record {i} (id {r['id']!r})"
        ids, kwargs = r["instruction_id_list"], r["kwargs"]
        if not ids or len(ids) != len(kwargs):
            raise DataError(f"{where}: instruction_id_list and kwargs must be non-empty lists of equal length")
        if not all(isinstance(x, str) for x in ids) or not all(isinstance(k, dict) for k in kwargs):
            raise DataError(f"{where}: instruction_id_list holds strings and kwargs mappings")
        out.append({k: r[k] for k in VERIFIABLE} | {"category": r.get("category", "")})
    return out


def load_gold(path, allow_empty: bool = False) -> list[dict]:
    out = []
    for i, r in enumerate(read_jsonl(path, GOLD, allow_empty=allow_empty), 1):
        parsed = parse_score(r["judgment"])
        if parsed.score != r["score"]:
            raise DataError(
                f"{path}: record {i} (id {r['id']!r}): judgment must end with 'Score: {r['score']}' "
                f"matching the score field (parsed: {parsed.status}, {parsed.score})"
            )
        out.append({k: r[k] for k in GOLD})
    return out


def load_oasst1(name_or_path: str) -> tuple[list[dict], list[dict]]:
    """The English first-turn prompts of OpenAssistant oasst1 (hub id, or a local JSON/JSONL file of
    messages in the same schema), as two pools: `ift`, every prompt with a rank-0 reply, as that
    reply (the paper's IFT candidates); `ranked`, every prompt with at least 2 ranked replies, in
    rank order (the EFT and evaluation candidates). A prompt is usually in both: `oasst1_split`
    decides which role it plays."""
    import datasets

    if os.path.isfile(name_or_path):
        ds = datasets.load_dataset("json", data_files=name_or_path, split="train")
        rows = list(ds)
    else:
        dd = datasets.load_dataset(name_or_path)
        rows = [r for split in dd.values() for r in split]
    for col in ("message_id", "parent_id", "text", "role", "lang", "rank"):
        if rows and col not in rows[0]:
            raise DataError(f"{name_or_path}: not in oasst1's schema (no {col!r} column)")
    by_id = {r["message_id"]: r for r in rows}
    replies = defaultdict(list)
    for r in rows:
        if r["role"] == "assistant" and r["parent_id"] in by_id and not r.get("deleted", False):
            replies[r["parent_id"]].append(r)
    firsts = [
        r
        for r in rows
        if r["parent_id"] is None and r["role"] == "prompter" and r["lang"] == "en" and not r.get("deleted", False)
    ]
    firsts.sort(key=lambda r: r["message_id"])
    ift, ranked = [], []
    for p in firsts:
        ranked_replies = sorted(
            (x for x in replies[p["message_id"]] if x.get("rank") is not None), key=lambda x: x["rank"]
        )
        rid = f"oasst-{p['message_id']}"
        if ranked_replies and ranked_replies[0]["rank"] == 0:
            ift.append({"id": rid, "instruction": p["text"], "response": ranked_replies[0]["text"], "category": ""})
        if len(ranked_replies) >= 2 and len({x["rank"] for x in ranked_replies}) >= 2:
            ranked.append(
                {
                    "id": rid,
                    "instruction": p["text"],
                    "category": "",
                    "responses": [{"text": x["text"], "rank": int(x["rank"])} for x in ranked_replies],
                }
            )
    if not ift:
        raise DataError(f"{name_or_path}: no English first-turn prompt with a rank-0 reply")
    return ift, ranked


def oasst1_split(ift: list[dict], ranked: list[dict], max_ift: int, seed: int) -> tuple[list[dict], list[dict]]:
    """The paper's roles for oasst1's prompts: `max_ift` prompts with a rank-0 reply, drawn at random
    (seeded), become IFT data (0 = all of them, which leaves ranked sets only from prompts without a
    rank-0 reply); every other prompt with ranked replies becomes a ranked set. The two never share a
    prompt ("which do not overlap with the IFT data")."""
    chosen = limit(ift, max_ift, seed)
    taken = {r["id"] for r in chosen}
    return chosen, [r for r in ranked if r["id"] not in taken]


def sft_pairs(ift_path, eft_path, max_ift: int, max_eft: int, seed: int) -> tuple[list[tuple[str, str]], dict]:
    """M1's supervised data, as (prompt, target): seed IFT examples and EFT judge examples (the judge
    prompt of Figure 2 -> the judgment), each subset seeded, shuffled together; and their counts.
    The positive-only variant adds its curated examples to exactly this."""
    ift = limit(load_ift(ift_path), max_ift, seed)
    eft = limit(read_jsonl(eft_path, EFT, allow_empty=True), max_eft, seed)
    pairs = [(r["instruction"], r["response"]) for r in ift]
    pairs += [(judge_prompt(r["instruction"], r["response"]), r["judgment"]) for r in eft]
    random.Random(seed).shuffle(pairs)
    return pairs, {"ift_examples": len(ift), "eft_examples": len(eft)}


def split(
    sources: dict[str, list[dict]], eval_fraction: float | dict[str, float], seed: int
) -> dict[str, tuple[list[dict], list[dict]]]:
    """Seeded train/eval splits of several record lists at once, e.g. {"ift": ..., "ranked": ...,
    "gold": ...}, independent of file order, such that no evaluation instruction is equal or nearly
    equal (`srlm.prompts.NearDuplicates`) to a training instruction of any list.

    `eval_fraction` is one share for every list or one per list; a list with share 1 is evaluation
    only (the verifiable prompts). Records whose instructions are (nearly) the same, in any list, form
    a group that goes to one side whole. Groups touching an evaluation-only list go to the eval side
    first, whatever they take from the other lists' quotas; the others are visited in a seeded order
    and put on the eval side while every list they touch stays within its quota, round(n * share)
    (at least 1 of n >= 2, at most n - 1)."""
    share = eval_fraction if isinstance(eval_fraction, dict) else {name: eval_fraction for name in sources}
    recs = [(name, r) for name, rs in sources.items() for r in sorted(rs, key=lambda r: r["id"])]
    parent = list(range(len(recs)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    index = NearDuplicates()
    for i, (_, r) in enumerate(recs):
        for j in index.matches(r["instruction"]):
            parent[root(j)] = root(i)
        index.add(r["instruction"], i)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(recs)):
        groups[root(i)].append(i)
    order = sorted(groups.values(), key=lambda g: (recs[g[0]][0], recs[g[0]][1]["id"]))
    random.Random(seed).shuffle(order)
    eval_only = {name for name in sources if share[name] >= 1}
    order.sort(key=lambda g: not any(recs[i][0] in eval_only for i in g))  # stable: seeded order kept within

    def quota(name):
        n, f = len(sources[name]), share[name]
        if f >= 1:
            return n
        q = round(n * f)
        return max(1, min(q, n - 1)) if f > 0 and n >= 2 else q

    room = {name: quota(name) for name in sources}
    in_eval = set()
    for g in order:
        need = Counter(recs[i][0] for i in g)
        forced = any(name in eval_only for name in need)
        if forced or all(room[name] >= k for name, k in need.items()):
            for name, k in need.items():
                room[name] -= k
            in_eval.update(g)
    out = {}
    for name in sources:
        idx = [i for i in range(len(recs)) if recs[i][0] == name]
        out[name] = ([recs[i][1] for i in idx if i not in in_eval], [recs[i][1] for i in idx if i in in_eval])
    return out


def limit(records: list[dict], n: int, seed: int) -> list[dict]:
    if not n or n >= len(records):
        return records
    return sorted(random.Random(seed).sample(records, n), key=lambda r: r["id"])
