import pytest
import yaml

from srlm.config import ConfigError, judge_conflict, lineage, load_params, parse_params


def test_shipped_params_parse_with_paper_defaults():
    p = load_params("params.yaml")
    assert (p.sample.n, p.sample.temperature, p.sample.top_p) == (4, 0.7, 0.9)
    assert p.judge.samples == 3 and p.dpo.beta == 0.1 and p.gen_prompts.shots == 8
    assert list(p.iterations) == ["1", "2"] and p.iterations["2"] == {"prev": "m1", "model": "m2", "next": "m3"}
    assert p.method == "srlm" and "m3_vs_m2" in p.evaluation.matchups
    assert p.iterations["1"]["prev"] == "m0"  # CREAM's code: M1's predecessor
    assert p.pairs.tie_break == "none" and not p.pairs.truncated_chosen  # the paper drops ties
    # the default head-to-head judge is no side of any matchup and trained from none of them
    assert p.evaluation.judge == "models/m0"
    assert all(
        judge_conflict(p.evaluation.judge, m["a"], m["b"], p.iterations) is None for m in p.evaluation.matchups.values()
    )


@pytest.mark.parametrize(
    "data,needle",
    [
        ({"judge": {"sampels": 3}}, "did you mean 'samples'"),
        ({"judgee": {}}, "did you mean 'judge'"),
        ({"judge": {"samples": 0}}, "judge.samples = 0 must be > 0"),
        ({"judge": {"samples": 2.5}}, "judge.samples should be an integer"),
        ({"sample": {"top_p": 1.5}}, "between 0 and 1"),
        ({"pairs": {"mode": "pairwise"}}, "choose one of 'preference', 'positive'"),
        ({"model": {"trust_remote_code": "yes"}}, "true or false"),
        ({"iterations": {"1": {"prev": "m0", "model": "m2", "next": "m3"}}}, "iterations.1 should have model: m1"),
        ({"iterations": {"2": {"prev": "m0", "model": "m1", "next": "m2"}}}, "keys must be 1, 2"),
        ({"iterations": {"1": {"model": "m1", "next": "m2"}}}, "exactly the keys prev, model and next"),
        ({"iterations": {"1": {"prev": "m2", "model": "m1", "next": "m2"}}}, "use m0 or sft_baseline"),
        (
            {
                "iterations": {
                    "1": {"prev": "m0", "model": "m1", "next": "m2"},
                    "2": {"prev": "m0", "model": "m2", "next": "m3"},
                }
            },
            "iterations.2.prev = 'm0'; use m1",
        ),
        ({"method": "rlhf"}, "choose one of 'srlm', 'cream'"),
        ({"cream": {"loss": "mean"}}, "choose one of 'dynamic', 'average'"),
        ({"evaluation": {"models": ["m0", "m5"]}}, "evaluation.models = 'm5' is not a model"),
        ({"evaluation": {"judge": "models/sft_basline"}}, "neither a model of this pipeline"),
        ({"evaluation": {"judge": "../judge"}}, "evaluation.judge = '../judge' points outside"),
        ({"sft": {"learning_rate": 1e-6, "final_learning_rate": 1e-5}}, "sft.final_learning_rate = 1e-05 is above"),
        ({"pairs": {"tie_break": "expected"}}, "choose one of 'none', 'other_readout'"),
        ({"cream": {"consistency": "top_bottom"}}, "choose one of 'kendall', 'spearman'"),
        (
            {"evaluation": {"models": ["m0", "m1"], "matchups": {"x": {"a": "m1", "b": "sft_baseline"}}}},
            "matchups.x.b = 'sft_baseline' is not in evaluation.models",
        ),
        ({"evaluation": {"matchups": {"x": {"a": "m1"}}}}, "exactly the keys a and b"),
        ({"evaluation": {"models": "m1"}}, "should be a list of names"),
        ({"evaluation": {"prompts": -1}}, "must be >= 0"),
        ({"seed_data": {"ift_path": "../../etc/passwd"}}, "seed_data.ift_path = '../../etc/passwd' points outside"),
        ({"model": {"base": "../other-project/model"}}, "model.base = '../other-project/model' points outside"),
        ({"gen_prompts": {"model": "../m0"}}, "gen_prompts.model = '../m0' is not a model"),
    ],
)
def test_bad_params_name_the_key(data, needle):
    with pytest.raises(ConfigError, match=None) as e:
        parse_params(data)
    assert needle in str(e.value)


def test_load_params_reports_bad_yaml(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("judge: [1,\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_params(f)


def test_overrides_keep_other_defaults(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump({"judge": {"samples": 5}}))
    p = load_params(f)
    assert p.judge.samples == 5 and p.judge.temperature == 0.7


def test_paths_inside_the_project_or_absolute_are_accepted():
    p = parse_params(
        {
            "seed_data": {"ift_path": "data/mine/../mine/ift.jsonl", "ranked_path": "/abs/ranked.jsonl"},
            "model": {"base": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        }
    )
    assert p.seed_data.ranked_path == "/abs/ranked.jsonl"


def test_a_judge_that_is_a_side_of_its_matchup_or_descends_from_one_is_flagged():
    its = load_params("params.yaml").iterations
    assert lineage("m3", its) == ["m3", "m2", "m1", "m0"] and lineage("sft_baseline", its) == ["sft_baseline", "m0"]
    assert judge_conflict("models/m3", "m3", "m2", its) == "the judge is m3 itself"
    assert judge_conflict("models/m2", "m1", "sft_baseline", its) == "the judge (m2) is trained from m1"
    assert judge_conflict("models/sft_baseline", "m2", "m1", its) is None
    assert judge_conflict("models/m0", "m3", "sft_baseline", its) is None
    assert judge_conflict("judges/outside", "m3", "m2", its) is None  # an outside judge
    assert parse_params({"evaluation": {"judge": "/abs/judge"}}).evaluation.judge == "/abs/judge"


def test_floats_in_dvcs_yaml_1_2_spelling_are_read_as_floats(tmp_path):
    """`dvc exp run -S dpo.learning_rate=1e-6` writes `1e-06`, which PyYAML reads as a string."""
    f = tmp_path / "params.yaml"
    f.write_text("dpo:\n  learning_rate: 1e-06\n  final_learning_rate: 1E-7\n")
    p = load_params(f)
    assert p.dpo.learning_rate == 1e-6 and p.dpo.final_learning_rate == 1e-7
    with pytest.raises(ConfigError, match="should be a number"):
        parse_params({"dpo": {"learning_rate": "fast"}})


def test_params_yaml_and_the_code_hold_the_same_defaults():
    """One source of truth: the dataclass defaults are the shipped params.yaml (an omitted key means
    the shipped value), so neither can drift from the other."""
    from srlm.config import Params

    assert load_params("params.yaml") == Params()


def test_bounds_are_declared_per_field_not_by_leaf_name():
    # `n` and `r` were positive wherever they appeared; now each field says what it allows
    assert parse_params({"sample": {"n": 2}}).sample.n == 2
    with pytest.raises(ConfigError, match="sft.lora.r = 0 must be > 0"):
        parse_params({"sft": {"lora": {"r": 0}}})
    with pytest.raises(ConfigError, match="generation.gpu_memory_utilization = 0.0 must be > 0"):
        parse_params({"generation": {"gpu_memory_utilization": 0.0}})


def test_derive_seed_is_stable_distinct_and_in_range():
    from srlm.config import derive_seed

    assert derive_seed(1234, "judge", "1") == derive_seed(1234, "judge", 1)  # keys are names
    seeds = {derive_seed(s, stage, t) for s in (0, 1234) for stage in ("sample", "judge", "dpo") for t in (1, 2)}
    assert len(seeds) == 12 and all(0 <= x < 2**31 for x in seeds)
    assert derive_seed(1234, "sample", 1) != derive_seed(1235, "sample", 1)


def test_eval_fraction_is_one_share_or_one_per_list():
    from srlm.config import EvalFractions

    assert parse_params({"seed_data": {"eval_fraction": 0.2}}).seed_data.eval_fraction == EvalFractions(0.2, 0.2, 0.2)
    assert parse_params({"seed_data": {"eval_fraction": {"ift": 0.3}}}).seed_data.eval_fraction == EvalFractions(
        0.3, 0.7, 0.1
    )
    with pytest.raises(ConfigError, match=r"seed_data.eval_fraction.ift = 1.5 must be between 0 and 1"):
        parse_params({"seed_data": {"eval_fraction": 1.5}})
