"""Wall time per stage of the latest run of each stage, read back from MLflow.

python bench/stage_times.py [--tracking-uri sqlite:///mlflow.db]
"""

import argparse
import os

import mlflow


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    ap.add_argument("--experiment", default=os.environ.get("SRLM_MLFLOW_EXPERIMENT", "self-rewarding"))
    args = ap.parse_args()
    mlflow.set_tracking_uri(args.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[args.experiment], order_by=["start_time ASC"])
    latest = {}
    for _, r in runs.iterrows():
        if r["status"] == "FINISHED" and "metrics.wall_time_s" in r:
            latest[r["tags.mlflow.runName"]] = r["metrics.wall_time_s"]
    total = 0.0
    print("| stage | wall time |\n|---|---|")
    for name, secs in latest.items():
        total += secs
        print(f"| `{name}` | {secs / 60:.1f} min ({secs:.0f} s) |")
    print(f"| **total (stage bodies, without process start-up)** | **{total / 60:.1f} min** |")


if __name__ == "__main__":
    main()
