import random

from srlm.prompts import JUDGE_TEMPLATE, PromptFilter, fewshot_prompt, judge_prompt, parse_generated_tasks, pick_shots


def test_judge_prompt_is_the_papers_figure_2():
    p = judge_prompt("What is 2+2?", "4")
    assert p.startswith("Review the user’s question and the corresponding response using the additive 5-point")
    assert "User: What is 2+2?\n<response>4</response>" in p
    assert "Conclude with the score using the format: “Score: <total points>”" in p
    assert "<INSTRUCTION_HERE>" not in p and "<RESPONSE_HERE>" not in p
    assert JUDGE_TEMPLATE.count("point") >= 5


def test_fewshot_prompt_is_open_at_the_next_task():
    p = fewshot_prompt(["Say hi.", "Two\nlines"])
    assert p.endswith("Task 1: Say hi.\nTask 2: Two lines\nTask 3:")


def test_parse_generated_tasks():
    tasks, cut = parse_generated_tasks(" Name three rivers.\nTask 4: Explain rain.\nTask 5: Write a po", False)
    assert tasks == ["Name three rivers.", "Explain rain."] and cut == 1
    tasks, cut = parse_generated_tasks(" Explain tides.\n\nSome unrelated chatter", True)
    assert tasks == ["Explain tides."] and cut == 0


def test_filter_drops_and_counts():
    seeds = ["Explain how rainbows form.", "Write a haiku about autumn leaves."]
    f = PromptFilter(seeds, min_words=3, max_words=10)
    assert f.add("Describe how volcanoes erupt and why.")
    assert not f.add("describe how volcanoes erupt and why")  # duplicate after normalisation
    assert not f.add("Explain how rainbows form.")  # a seed
    assert not f.add("Explain how the rainbows form.")  # near copy of a seed
    assert not f.add("")
    assert not f.add("Hi")
    assert not f.add("word " * 11)
    assert not f.add("Task 3: list things")
    assert f.counts == {
        "kept": 1,
        "empty": 1,
        "too_short": 1,
        "too_long": 1,
        "bad_format": 1,
        "duplicate_of_seed": 1,
        "seed_leak": 1,
        "duplicate": 1,
    }


def test_pick_shots_is_seeded_and_respects_length():
    seeds = [f"task number {i}" for i in range(20)] + ["long " * 100]
    a = pick_shots(seeds, 8, random.Random(3), max_words=10)
    assert a == pick_shots(seeds, 8, random.Random(3), max_words=10)
    assert len(set(a)) == 8 and all(len(s.split()) <= 10 for s in a)


def test_filter_drops_evaluation_instructions_and_earlier_iterations_prompts():
    seeds = ["Explain how rainbows form.", "Write a haiku about autumn leaves."]
    reserved = {
        "eval_leak": ["Give three tips for sleeping better at night."],
        "earlier_iteration": ["List four uses of baking soda at home."],
    }
    f = PromptFilter(seeds, min_words=3, max_words=20, reserved=reserved)
    assert not f.add("Give three tips for sleeping better at night.")  # an evaluation instruction
    assert not f.add("Give 3 tips for sleeping better at night")  # nearly one
    assert not f.add("List four uses of baking soda in the home.")  # an earlier iteration's prompt
    assert f.add("Describe the water cycle for a ten-year-old.")
    assert not f.add("Describe the water cycle for a ten year old child.")  # near copy of a kept one
    assert f.add("Suggest a name for a bakery that sells only bread.")
    assert f.counts["eval_leak"] == 2 and f.counts["earlier_iteration"] == 1
    assert f.counts["duplicate"] == 1 and f.counts["kept"] == 2


def test_near_duplicate_index_agrees_with_the_full_comparison():
    """The bigram screen must not miss what comparing every pair finds (on the built-in instructions)."""
    import difflib
    import json
    from pathlib import Path

    from srlm.prompts import NEAR_DUPLICATE, NearDuplicates, normalize

    root = Path(__file__).resolve().parent.parent / "data" / "builtin"
    texts = [
        json.loads(line)["instruction"]
        for name in ("ift.jsonl", "ranked.jsonl", "gold_judgments.jsonl")
        for line in (root / name).read_text().splitlines()
    ]
    texts += ["Explain how rainbows form.", "explain how the rainbows form", "Explain rainbows."]
    idx = NearDuplicates()
    for i, t in enumerate(texts):
        idx.add(t, i)
    norm = [normalize(t) for t in texts]
    for i, t in enumerate(texts):
        full = [
            j
            for j in range(len(texts))
            if norm[j] == norm[i] or difflib.SequenceMatcher(None, norm[j], norm[i]).ratio() >= NEAR_DUPLICATE
        ]
        assert idx.matches(t) == full, t
