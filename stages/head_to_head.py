"""head_to_head@<a>_vs_<b>: the evaluation judge compares model a's and model b's responses to the
held-out prompts in both orders; disagreement is a tie. Win/tie/loss from a's side, and the
win rate with the length difference regressed out."""
from srlm import stage
from srlm.config import section_dict
from srlm.evaluation import head_to_head
from srlm.generation import SamplingParams
from srlm.io import DataError, read_jsonl, write_jsonl
from srlm.tracking import stage_run, write_metrics

RESPONSES = {"id": str, "instruction": str, "output": str}


def run(params, name, matchup):
    ev, gen = params.evaluation, params.generation
    out = stage.matchup_dir(name)
    tracked = {"matchup": matchup, "evaluation": {k: getattr(ev, k) for k in ("judge", "verdict", "temperature",
                                                                               "verdict_max_new_tokens")},
               "generation": section_dict(gen), "seed": params.seed}
    with stage_run("head_to_head", tracked, instance=name):
        x = read_jsonl(stage.eval_dir(matchup["a"]) / "responses.jsonl", RESPONSES)
        y = read_jsonl(stage.eval_dir(matchup["b"]) / "responses.jsonl", RESPONSES)
        generator = stage.generator(params, ev.judge, f"head_to_head@{name}")
        sampling = SamplingParams(n=1, temperature=ev.temperature, top_p=ev.top_p,
                                  max_new_tokens=ev.verdict_max_new_tokens, seed=params.seed + 303)
        try:
            rows, metrics = head_to_head(generator, x, y, ev.verdict, sampling)
        except ValueError as e:
            raise DataError(f"head_to_head@{name}: {e}") from None
        write_jsonl(out / "verdicts.jsonl", rows)
        write_metrics(out / "metrics.json", metrics | {"a": matchup["a"], "b": matchup["b"], "judge": ev.judge,
                                                       "verdict": ev.verdict})
        generator.clear()


if __name__ == "__main__":
    stage.main(run, needs="matchup")
