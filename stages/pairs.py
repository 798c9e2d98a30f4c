"""pairs@t: highest vs lowest scored candidate per prompt (ties dropped), or the positive-only variant."""
from srlm import stage
from srlm.config import section_dict
from srlm.io import DataError, read_jsonl, write_jsonl
from srlm.pairing import select_pairs, select_positives
from srlm.tracking import log_artifact, stage_run, write_metrics


def run(params, key, it):
    cfg = params.pairs
    d = stage.iteration_dir(key)
    with stage_run("pairs", {"pairs": section_dict(cfg)}, iteration=key):
        judged = read_jsonl(d / "judgments.jsonl", {"prompt_id": str, "candidate_id": str, "prompt": str})
        for i, r in enumerate(judged, 1):
            if r.get("score") is not None and not isinstance(r["score"], (int, float)):
                raise DataError(f"{d / 'judgments.jsonl'}:{i}: score must be a number or null")
        if cfg.mode == "preference":
            rows, counts = select_pairs(judged, cfg.min_valid)
        else:
            rows, counts = select_positives(judged, cfg.positive_score)
        parse_rate = sum(r.get("score") is not None for r in judged) / len(judged)
        if not rows:
            raise DataError(f"pairs@{key}: no usable training data from {len(judged)} judged candidates "
                            f"({dict(counts)}; {parse_rate:.0%} of candidates got a valid score). "
                            f"Check {d / 'judgments.jsonl'}: the judge may not be producing 'Score: N'.")
        write_jsonl(d / "pairs.jsonl", [r | {"kind": cfg.mode} for r in rows])
        log_artifact(d / "pairs.jsonl")
        write_metrics(d / "metrics" / "pairs.json", dict(counts) | {"mode": cfg.mode, "scored_rate": parse_rate})


if __name__ == "__main__":
    stage.main(run, needs_iteration=True)
