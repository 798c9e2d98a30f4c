"""The README's paper-scale command, end to end on the tiny model and a 60-tree oasst1-shaped fixture:
every switch of the profile is kept, only the model, the dataset and the counts are scaled down."""

import json
import re
from pathlib import Path

import pytest

from e2e_project import ROOT, dvc, make_project
from leakage import assert_project_has_no_leak

pytestmark = pytest.mark.e2e
TREES = Path(__file__).parent / "fixtures" / "oasst1_trees.jsonl"


def profile() -> dict[str, str]:
    """The `-S key=value` settings of the README's paper-scale command."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"### Paper-scale profile.*?```bash\n(.*?)```", text, re.S).group(1)
    return dict(s.split("=", 1) for s in re.findall(r"-S (\S+)", block))


def test_the_profile_keeps_the_papers_switches():
    p = profile()
    assert p["seed_data.source"] == "oasst1" and p["judge.scoring"] == "sampled"
    assert (p["sft.learning_rate"], p["sft.final_learning_rate"]) == ("5.5e-6", "1.1e-6")
    assert (p["dpo.learning_rate"], p["dpo.final_learning_rate"]) == ("1e-6", "1e-7")


def test_the_paper_scale_command_runs_end_to_end(tmp_path, tiny_model_dir):
    scaled = {
        "model.base": str(tiny_model_dir),
        "seed_data.max_ift": "20",
        "gen_prompts.num_prompts": "3",
        "sample.max_new_tokens": "12",
        "judge.max_new_tokens": "12",
        "sft.batch_size": "4",
        "dpo.batch_size": "2",
    }
    settings = profile() | scaled | {"seed_data.oasst_dataset": str(TREES)}
    d = make_project(tmp_path, tiny_model_dir)
    dvc(["exp", "run", *[a for k, v in settings.items() for a in ("-S", f"{k}={v}")]], d)
    counts = json.loads((d / "metrics/prepare_seed.json").read_text())
    assert (counts["ift_train"], counts["ift_eval"]) == (16, 4)
    assert counts["ranked_train"] + counts["ranked_eval"] >= 30 and counts["ranked_eval"] >= 6
    assert counts["gold_train"] == counts["gold_eval"] == 0
    ids = {
        split: {json.loads(line)["id"] for line in (d / f"data/seed/{split}.jsonl").read_text().splitlines()}
        for split in ("ift_train", "ift_eval", "ranked_train", "ranked_eval")
    }
    assert not (ids["ift_train"] | ids["ift_eval"]) & (ids["ranked_train"] | ids["ranked_eval"])
    eft = json.loads((d / "metrics/build_eft.json").read_text())
    assert eft["ranked_sets"] == counts["ranked_train"] and eft["eft_gold"] == 0  # eft.max_sets=0: all
    for t in (1, 2):
        judge = json.loads((d / f"data/it{t}/metrics/judge.json").read_text())
        assert judge["scoring"] == "sampled" and judge["parse_rate"] > 0
        assert (d / f"data/it{t}/pairs.jsonl").read_text().strip()
    assert (d / "models/m3/model.safetensors").is_file() and (d / "reports/report.md").is_file()
    assert_project_has_no_leak(d)  # seed, EFT and generated prompts against every evaluation file
    assert not list((d / "models/m3").glob("adapter_*"))  # lora.enabled=false: full weights
