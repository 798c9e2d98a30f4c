"""Seed data: IFT (instruction -> response), ranked response sets, gold judgments.

Three sources, one output schema:
- builtin: the files under data/builtin, written for this project;
- oasst1: OpenAssistant conversations through `datasets` (English first turns; the rank-0
  reply for IFT; prompts not used for IFT with >= 2 ranked replies for the judge data);
- jsonl: the user's own files in the builtin schema.
"""
from __future__ import annotations

import os
import random
from collections import defaultdict
from pathlib import Path

from .io import DataError, read_jsonl
from .judging import parse_score

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "data" / "builtin"
IFT_SCHEMA = {"id": str, "instruction": str, "response": str}
RANKED_SCHEMA = {"id": str, "instruction": str, "responses": list}
GOLD_SCHEMA = {"id": str, "instruction": str, "response": str, "judgment": str, "score": int}


def load_ift(path) -> list[dict]:
    return [{k: r[k] for k in IFT_SCHEMA} | {"category": r.get("category", "")} for r in read_jsonl(path, IFT_SCHEMA)]


def load_ranked(path) -> list[dict]:
    out = []
    for i, r in enumerate(read_jsonl(path, RANKED_SCHEMA), 1):
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
        out.append({"id": r["id"], "instruction": r["instruction"], "category": r.get("category", ""),
                    "responses": [{"text": x["text"], "rank": x["rank"]} for x in resps]})
    return out


def load_gold(path) -> list[dict]:
    out = []
    for i, r in enumerate(read_jsonl(path, GOLD_SCHEMA), 1):
        parsed = parse_score(r["judgment"])
        if parsed.score != r["score"]:
            raise DataError(f"{path}: record {i} (id {r['id']!r}): judgment must end with 'Score: {r['score']}' "
                            f"matching the score field (parsed: {parsed.status}, {parsed.score})")
        out.append({k: r[k] for k in GOLD_SCHEMA})
    return out


def load_oasst1(name_or_path: str, max_ift: int = 0) -> tuple[list[dict], list[dict]]:
    """IFT and ranked sets from OpenAssistant oasst1 messages (hub id, or a local JSON/JSONL file
    of messages in the same schema)."""
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
    firsts = [r for r in rows if r["parent_id"] is None and r["role"] == "prompter" and r["lang"] == "en"
              and not r.get("deleted", False)]
    firsts.sort(key=lambda r: r["message_id"])
    ift, ranked = [], []
    for p in firsts:
        ranked_replies = sorted((x for x in replies[p["message_id"]] if x.get("rank") is not None),
                                key=lambda x: x["rank"])
        if not ranked_replies:
            continue
        best = ranked_replies[0]
        if best["rank"] == 0 and (not max_ift or len(ift) < max_ift):
            ift.append({"id": f"oasst-{p['message_id']}", "instruction": p["text"], "response": best["text"],
                        "category": ""})
        elif len(ranked_replies) >= 2:
            # Prompts used for IFT are kept out of the judge data, as in the paper.
            ranked.append({"id": f"oasst-{p['message_id']}", "instruction": p["text"], "category": "",
                           "responses": [{"text": x["text"], "rank": int(x["rank"])} for x in ranked_replies]})
    if not ift:
        raise DataError(f"{name_or_path}: no English first-turn prompt with a rank-0 reply")
    return ift, ranked


def split(records: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded split, independent of file order (records are sorted by id first)."""
    recs = sorted(records, key=lambda r: r["id"])
    random.Random(seed).shuffle(recs)
    n_eval = round(len(recs) * eval_fraction)
    if eval_fraction > 0 and len(recs) >= 2:
        n_eval = max(1, min(n_eval, len(recs) - 1))
    return recs[n_eval:], recs[:n_eval]


def limit(records: list[dict], n: int, seed: int) -> list[dict]:
    if not n or n >= len(records):
        return records
    return sorted(random.Random(seed).sample(records, n), key=lambda r: r["id"])
