"""Wall time per stage of a pipeline run (the latest by default), read back from MLflow. Stages DVC
reused from its cache are left out: they cost that run nothing.

python bench/stage_times.py [--tracking-uri sqlite:///mlflow.db] [--run NAME]
"""

import argparse
import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
import mlflow  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    ap.add_argument("--experiment", default=os.environ.get("SRLM_MLFLOW_EXPERIMENT", "self-rewarding"))
    ap.add_argument("--run", help="the pipeline run's name (a DVC experiment, or repro-<commit>); default: latest")
    args = ap.parse_args()
    mlflow.set_tracking_uri(args.tracking_uri)
    kind = "tags.`srlm.kind` = 'pipeline'"
    where = kind + (f" AND attributes.run_name = '{args.run}'" if args.run else "")
    parents = mlflow.search_runs(
        experiment_names=[args.experiment], filter_string=where, order_by=["start_time DESC"], max_results=1
    )
    if parents.empty:
        raise SystemExit(f"no pipeline run{' named ' + args.run if args.run else ''} in {args.tracking_uri}")
    parent = parents.iloc[0]
    runs = mlflow.search_runs(
        experiment_names=[args.experiment],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent['run_id']}'",
        order_by=["start_time ASC"],
    )
    total = 0.0
    print(f"pipeline run {parent['tags.mlflow.runName']} ({parent['run_id']})\n")
    print("| stage | wall time |\n|---|---|")
    for _, r in runs.iterrows():
        if r.get("tags.srlm.cached") == "true" or r["status"] != "FINISHED":
            continue
        secs = r["metrics.wall_time_s"]
        total += secs
        print(f"| `{r['tags.mlflow.runName']}` | {secs / 60:.1f} min ({secs:.0f} s) |")
    print(f"| **total (stage bodies, without process start-up)** | **{total / 60:.1f} min** |")


if __name__ == "__main__":
    main()
