"""Judge-free instruction following: prompts whose instructions a program can check (word and sentence
limits, required or forbidden words, JSON, bullets, paragraphs ...), checked by lm-evaluation-harness's
IFEval instruction checkers, scored as IFEval does: prompt-level (all of a prompt's instructions followed)
and instruction-level, strict (the response as it is) and loose (also with the first or last line, or
markdown emphasis, removed). Unlike the judge's numbers, these do not depend on a model's opinion."""

from __future__ import annotations

import importlib.metadata

import langdetect
import nltk

from .io import DataError


def _bundled_nltk_data() -> str:
    """The checkers tokenize with NLTK's punkt_tab, which NLTK downloads on first use. Nothing is
    downloaded here: the llama-index-core wheel ships that data (installed without its dependencies and
    never imported; requirements.lock pins it)."""
    try:
        dist = importlib.metadata.distribution("llama-index-core")
    except importlib.metadata.PackageNotFoundError:
        raise DataError(
            "the IFEval checkers need NLTK's punkt_tab data, shipped in the llama-index-core wheel: "
            "`make setup` installs it (pip install --no-deps llama-index-core)"
        ) from None
    path = dist.locate_file("llama_index/core/_static/nltk_cache")
    if not (path / "tokenizers" / "punkt_tab").is_dir():
        raise DataError(f"{path}: no tokenizers/punkt_tab in the installed llama-index-core")
    return str(path)


nltk.data.path.insert(0, _bundled_nltk_data())  # before lm_eval's import, which downloads what it misses
# The language checks (response language, all capitals in English ...) call langdetect, which is random
# unless seeded: the same response could pass in one run and fail in the next.
langdetect.DetectorFactory.seed = 0

from lm_eval.tasks.ifeval import instructions_registry  # noqa: E402
from lm_eval.tasks.ifeval.utils import (  # noqa: E402
    InputExample,
    test_instruction_following_loose,
    test_instruction_following_strict,
)


def validate(records: list[dict], path) -> list[dict]:
    """Every instruction id known to the checkers, with every argument its checker needs: a checker
    given no value for an argument draws one at random, which would make the score change between runs."""
    for i, r in enumerate(records, 1):
        where = f"{path}: record {i} (id {r['id']!r})"
        for iid, kw in zip(r["instruction_id_list"], r["kwargs"]):
            if iid not in instructions_registry.INSTRUCTION_DICT:
                raise DataError(f"{where}: unknown instruction id {iid!r}")
            checker = instructions_registry.INSTRUCTION_DICT[iid](iid)
            missing = [k for k in checker.get_instruction_args_keys() if k != "prompt" and not kw.get(k)]
            if missing:
                raise DataError(f"{where}: {iid} needs {missing} in its kwargs (given {kw})")
            try:
                checker.build_description(**kw)
            except (ValueError, TypeError) as e:
                raise DataError(f"{where}: {iid} kwargs {kw}: {e}") from None
    return records


def check(record: dict, response: str) -> tuple[list[bool], list[bool]]:
    """For each of the record's instructions, whether `response` follows it: strict, loose."""
    example = InputExample(
        key=0,
        instruction_id_list=record["instruction_id_list"],
        prompt=record["instruction"],
        kwargs=record["kwargs"],
    )
    strict = test_instruction_following_strict(example, response).follow_instruction_list
    loose = test_instruction_following_loose(example, response).follow_instruction_list
    return [bool(x) for x in strict], [bool(x) for x in loose]
