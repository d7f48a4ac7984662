"""Comparison table for 10,000 runs: ``workbench.compare.runs_frame`` against the article's
``mlflow.search_runs``, on the same embedded SQLite store, in the same process.

The 10,000 runs are inserted with SQL straight into MLflow's tables (one real run created
through MLflow first, so the schema and conventions are MLflow's own); logging them through
the API would take minutes and is not what is measured here.
"""

from __future__ import annotations

import random
import sqlite3
import time
import uuid

from bench.common import Result, temp_store, timed

N_RUNS = 10_000
N_PARAMS = 6
N_METRICS = 6
TARGET_S = 3.0


def _fill(db: str, exp_id: str, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    runs, params, metrics, tags = [], [], [], []
    for i in range(n):
        rid = uuid.UUID(int=rng.getrandbits(128)).hex
        start = now - (n - i) * 1000
        name = f"gbm-lr{rng.choice([0.05, 0.1, 0.2])}-{i}"
        runs.append(
            (
                rid,
                name,
                "LOCAL",
                "",
                "",
                "bench",
                "FINISHED",
                start,
                start + 500,
                None,
                "",
                "active",
                f"file:///tmp/{rid}",
                int(exp_id),
            )
        )
        params += [(f"p{j}", str(rng.choice([1, 2, 3, 0.1, 0.5])), rid) for j in range(N_PARAMS)]
        for j in range(N_METRICS):
            v = rng.random()
            metrics.append((f"m{j}", v, start, rid, 0, 0))
        tags += [("mlflow.runName", name, rid), ("mlflow.user", "bench", rid), ("team", "ml", rid)]
    with sqlite3.connect(db) as con:
        con.executemany(
            "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status, start_time, end_time, deleted_time, source_version, lifecycle_stage, artifact_uri, experiment_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            runs,
        )
        con.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?,?,?)", params)
        con.executemany(
            "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?,?,?,?,?,?)",
            metrics,
        )
        con.executemany(
            "INSERT INTO latest_metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?,?,?,?,?,?)",
            metrics,
        )
        con.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?,?,?)", tags)


def run() -> list[Result]:
    import mlflow

    from workbench import compare
    from workbench.core import store

    with temp_store() as uri:
        client = store.connect()
        exp_id = store.experiment_id("bench-compare")
        with mlflow.start_run(experiment_id=exp_id):  # one real run: MLflow's own conventions
            mlflow.log_params({f"p{j}": 1 for j in range(N_PARAMS)})
            mlflow.log_metrics({f"m{j}": 0.5 for j in range(N_METRICS)})
        _fill(uri.removeprefix("sqlite:///"), exp_id, N_RUNS - 1)

        frame = compare.runs_frame("bench-compare", client=client)  # warm-up (imports)
        plain = mlflow.search_runs(experiment_names=["bench-compare"])
        assert len(frame) == len(plain) == N_RUNS, (len(frame), len(plain))
        ours = timed(lambda: compare.runs_frame("bench-compare", client=client), repeat=3)
        baseline = timed(lambda: mlflow.search_runs(experiment_names=["bench-compare"]), repeat=1)
        ours_f = timed(
            lambda: compare.runs_frame(
                "bench-compare", "metrics.m0 > 0.5", ["metrics.m1 DESC"], client=client
            ),
            repeat=3,
        )
        base_f = timed(
            lambda: mlflow.search_runs(
                experiment_names=["bench-compare"],
                filter_string="metrics.m0 > 0.5",
                order_by=["metrics.m1 DESC"],
            ),
            repeat=1,
        )
    detail = (
        f"{N_RUNS:,} runs x {N_PARAMS} params, {N_METRICS} metrics, 3 tags in one experiment; "
        "ours = compare.runs_frame (SQL path: MLflow's filter/order clauses pick the ids, one "
        "query per table; typed params, duration, parent flag), median of 3; baseline = "
        "mlflow.search_runs over the same runs, 1 call."
    )
    return [
        Result(
            f"runs table, {N_RUNS:,} runs",
            ours,
            baseline,
            f"<= {TARGET_S:g} s",
            ours <= TARGET_S,
            detail=detail,
        ),
        Result(
            f"runs table, {N_RUNS:,} runs, filter + order_by",
            ours_f,
            base_f,
            f"<= {TARGET_S:g} s",
            ours_f <= TARGET_S,
            detail="filter 'metrics.m0 > 0.5', order_by ['metrics.m1 DESC'] (about half the runs)",
        ),
    ]
