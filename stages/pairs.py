"""pairs@t: highest vs lowest scored candidate per prompt (prompts whose candidates all tie are
dropped unless pairs.tie_break says otherwise; a candidate cut off by the token limit is never
chosen), or the positive-only variant's responses scored 5. With method=cream each pair also gets the consistency C
between M_t's and M_{t-1}'s rankings of its prompt's candidates."""

from statistics import mean

from srlm import artifacts, stage
from srlm.io import DataError
from srlm.metrics import longer_wins_rate
from srlm.pairing import attach_consistency, rho_for, select_pairs, select_positives
from srlm.tracking import log_artifact, stage_run, write_metrics

# The params.yaml keys this stage reads: its `params:` in dvc.yaml (tests/test_dvc_graph.py checks).
PARAMS = ["pairs", "method", "cream.consistency", "judge.scoring"]


def _check_scores(rows, path):
    for i, r in enumerate(rows, 1):
        for k in ("score", "sampled_score", "expected_score"):
            if r.get(k) is not None and (isinstance(r[k], bool) or not isinstance(r[k], (int, float))):
                raise DataError(f"{path}:{i}: {k} must be a number or null, got {r[k]!r}")


def run(params, key, it):
    cfg = params.pairs
    source, source_prev, out = artifacts.judgments(key), artifacts.judgments_prev(key), artifacts.pairs(key)
    with stage_run("pairs", stage.tracked(params, PARAMS), iteration=key):
        judged = source.read()
        _check_scores(judged, source.path)
        rho = rho_for(cfg.length_rho, key) if cfg.mode == "preference" else None
        if cfg.mode == "preference":
            # tie_break: other_readout lets the readout not used for `score` decide ties (opt-in).
            other = "sampled_score" if params.judge.scoring == "expected" else "expected_score"
            rows, counts = select_pairs(
                judged,
                cfg.min_valid,
                other if cfg.tie_break == "other_readout" else None,
                rho,
                cfg.truncated_chosen,
            )
        else:
            rows, counts = select_positives(judged, params.judge.scoring, truncated=cfg.truncated_chosen)
        scored_rate = sum(r.get("score") is not None for r in judged) / len(judged)
        if not rows:
            raise DataError(
                f"pairs@{key}: no usable training data from {len(judged)} judged candidates "
                f"({dict(counts)}; {scored_rate:.0%} of candidates got a valid score). "
                f"Check {source.path}: the judge may not be producing 'Score: N'."
            )
        metrics = dict(counts) | {"mode": cfg.mode, "scored_rate": scored_rate, "method": params.method}
        metrics["length_rho"] = rho
        if cfg.mode == "preference":
            metrics |= {
                "chosen_chars_mean": mean(len(r["chosen"]) for r in rows),
                "rejected_chars_mean": mean(len(r["rejected"]) for r in rows),
                "longer_chosen_rate": longer_wins_rate(
                    [(r["chosen_score"], r["rejected_score"], len(r["chosen"]), len(r["rejected"])) for r in rows]
                ),
            }
            if params.method == "cream":
                prev = source_prev.read()
                _check_scores(prev, source_prev.path)
                rows, c_counts = attach_consistency(rows, judged, prev, params.cream.consistency)
                cs = sorted(r["consistency"] for r in rows)
                metrics |= dict(c_counts) | {
                    "consistency_mean": mean(cs),
                    "consistency_min": cs[0],
                    "consistency_median": cs[len(cs) // 2],
                    "consistency_max": cs[-1],
                }
        out.write([r | {"kind": cfg.mode} for r in rows])
        log_artifact(out.path)
        write_metrics(artifacts.iteration_metrics(key, "pairs"), metrics)


if __name__ == "__main__":
    stage.main(run, needs_iteration=True)
