"""workbench.compare on a real SQLite store with runs written by plain MLflow code."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from workbench import compare


def test_runs_frame_reads_plain_mlflow_runs(plain_runs):
    exp, ids = plain_runs
    runs = compare.runs_frame(exp)
    assert list(runs.columns[: len(compare.BASE_COLUMNS)]) == compare.BASE_COLUMNS
    assert set(runs["run_id"]) == set(ids.values())  # the deleted run is not there
    by_name = runs.set_index("run_name")
    assert runs["params.learning_rate"].dtype == "float64"
    assert str(runs["params.max_depth"].dtype) == "Int64"  # ints, with gaps where not logged
    assert str(runs["params.use_smote"].dtype) == "boolean"
    assert (
        by_name.at["gbm-lr0.05", "params.use_smote"] is True
        or by_name.at["gbm-lr0.05", "params.use_smote"]
    )
    assert runs["params.model"].dtype == object
    assert math.isnan(by_name.at["logreg-nan", "metrics.auc_roc"])
    assert math.isnan(by_name.at["no-metrics", "metrics.auc_roc"])
    assert (
        by_name.at["trial-0", "is_child"]
        and by_name.at["trial-0", "parent_run_id"] == ids["search-parent"]
    )
    assert not by_name.at["search-parent", "is_child"]
    assert by_name.at["trial-1", "metrics.auc_roc"] == pytest.approx(0.821)  # the latest step
    assert (runs["duration_s"] >= 0).all() and (runs["status"] == "FINISHED").all()
    assert set(runs["experiment"]) == {exp}
    assert runs["tags.environment"].notna().sum() == 6
    # MLflow's default order: newest first
    assert runs["start_time"].is_monotonic_decreasing


@pytest.mark.parametrize(
    ("filter_string", "order_by"),
    [
        ("", None),
        ("metrics.auc_roc > 0.9", ["metrics.auc_roc DESC"]),
        ("metrics.auc_roc != 0.93", ["metrics.auc_roc ASC", "params.model DESC"]),
        ("params.model = 'gbm' and tags.`mlflow.parentRunId` IS NOT NULL", None),
        ("params.C IS NULL", ["params.learning_rate"]),
        ("attributes.run_name LIKE 'gbm%'", ["attributes.run_name DESC"]),
        (
            "run_name ILIKE 'GBM%' and tags.environment = 'dev'",
            ["tags.environment", "start_time ASC"],
        ),
        ("metrics.f1_score < 0.6 and status = 'FINISHED'", ["metrics.f1_score"]),
    ],
)
def test_sql_and_api_engines_give_the_same_frame(plain_runs, filter_string, order_by):
    exp, _ = plain_runs
    fast = compare.runs_frame(exp, filter_string, order_by, engine="sql")
    slow = compare.runs_frame(exp, filter_string, order_by, engine="api")
    pd.testing.assert_frame_equal(fast, slow)
    baseline = __import__("mlflow").search_runs(
        experiment_names=[exp], filter_string=filter_string, order_by=order_by
    )
    assert fast["run_id"].tolist() == baseline["run_id"].tolist()


def test_several_experiments_in_one_frame(plain_runs):
    import mlflow

    exp, _ = plain_runs
    other = exp + "-other-" + __import__("uuid").uuid4().hex[:6]
    mlflow.set_experiment(other)
    with mlflow.start_run(run_name="elsewhere"):
        mlflow.log_metric("auc_roc", 0.5)
    runs = compare.runs_frame([exp, other])
    assert set(runs["experiment"]) == {exp, other}
    assert runs.set_index("run_name").at["elsewhere", "experiment"] == other


def test_bad_input_gives_clear_errors(plain_runs):
    exp, _ = plain_runs
    with pytest.raises(
        compare.CompareError, match=rf"'no-such-exp'.*Existing experiments: .*{exp}"
    ):
        compare.runs_frame("no-such-exp")
    with pytest.raises(
        compare.CompareError, match=r"(?s)MLflow rejected.*Valid filter example: metrics\."
    ):
        compare.runs_frame(exp, "metrics.auc_roc >> 1")
    with pytest.raises(
        compare.CompareError, match=r"'nope'.*Metrics that exist: auc_roc, f1_score"
    ):
        compare.runs_frame(exp, order_by=["metrics.nope DESC"])
    runs = compare.runs_frame(exp)
    with pytest.raises(compare.CompareError, match=r"'nope'.*auc_roc, f1_score"):
        compare.best_run(runs, "nope")


def test_best_run_ties_missing_and_modes(plain_runs):
    exp, ids = plain_runs
    runs = compare.runs_frame(exp)
    # gbm-lr0.1 and gbm-lr0.2 both have 0.93: the one that started first wins, every time.
    assert compare.best_run(runs, "auc_roc")["run_id"] == ids["gbm-lr0.1"]
    assert compare.best_run(exp, "metrics.auc_roc")["run_id"] == ids["gbm-lr0.1"]
    assert compare.best_run(runs, "auc_roc", mode="min")["run_id"] == ids["trial-0"]  # NaN ignored
    without = runs[runs["run_name"].isin(["logreg-nan", "no-metrics"])]
    with pytest.raises(compare.CompareError, match="none of the 2 runs"):
        compare.best_run(without, "auc_roc")


def test_ranking_flags_runs_within_noise():
    frame = pd.DataFrame(
        {
            "run_id": ["a", "b", "c", "d"],
            "run_name": ["a", "b", "c", "d"],
            "experiment": "e",
            "start_time": pd.to_datetime([1, 2, 3, 4], unit="s", utc=True),
            "metrics.cv_auc_mean": [0.90, 0.89, 0.80, None],
            "metrics.cv_auc_std": [0.01, 0.01, 0.01, None],
        }
    )
    table = compare.ranking(frame, "cv_auc_mean")
    assert table["run_id"].tolist() == ["a", "b", "c"]
    assert table["within_noise"].tolist() == [True, True, False]
    assert table["gap"].tolist() == pytest.approx([0.0, 0.01, 0.10])
    plain = compare.ranking(frame.drop(columns="metrics.cv_auc_std"), "cv_auc_mean")
    assert not plain["within_noise"].any() and plain["std"].isna().all()


def test_diff_runs_lists_only_what_differs(plain_runs):
    exp, ids = plain_runs
    runs = compare.runs_frame(exp)
    diff = compare.diff_runs(runs, ids["gbm-lr0.05"], ids["gbm-lr0.1"]).set_index("key")
    assert set(diff.index) == {"learning_rate", "max_depth", "use_smote", "auc_roc", "f1_score"}
    assert diff.at["auc_roc", "delta"] == pytest.approx(0.02)
    assert diff.at["learning_rate", "kind"] == "param"
    assert compare.diff_runs(runs, ids["gbm-lr0.1"], ids["gbm-lr0.1"]).empty
    with pytest.raises(compare.CompareError, match="not in this runs table"):
        compare.diff_runs(runs, "x", ids["gbm-lr0.1"])


def test_figures_and_logged_comparison(plain_runs):
    from mlflow import MlflowClient

    exp, ids = plain_runs
    runs = compare.runs_frame(exp)
    overlay = compare.history_overlay(runs, "auc_roc", k=3)
    assert len(overlay.axes[0].lines) == 3
    children = compare.history_overlay(runs, "auc_roc", run_ids=[ids["trial-0"], ids["trial-1"]])
    assert [len(line.get_xdata()) for line in children.axes[0].lines] == [3, 3]
    parallel = compare.parallel_coordinates(runs, "auc_roc")
    assert len(parallel.axes[0].lines) == runs["metrics.auc_roc"].notna().sum()
    run_id = compare.log_comparison(
        runs,
        figures={"overlay": overlay, "parallel": parallel},
        tables={"ranking": compare.ranking(runs, "auc_roc")},
        experiment=exp + "-cmp",
    )
    client = MlflowClient()
    logged = {a.path for a in client.list_artifacts(run_id, "comparison")}
    assert logged == {
        f"comparison/{n}"
        for n in ("runs.csv", "runs.html", "ranking.csv", "overlay.png", "parallel.png")
    }
    run = client.get_run(run_id)
    assert run.data.tags["workbench.kind"] == "comparison" and run.info.status == "FINISHED"


def test_ensure_runs_creates_quick_runs_once(tracking_uri, experiment_name):
    assert compare.ensure_runs(experiment_name, min_runs=3, seed=1) == 3
    assert compare.ensure_runs(experiment_name, min_runs=3, seed=1) == 0
    runs = compare.runs_frame(experiment_name)
    assert {"metrics.cv_roc_auc_mean", "metrics.cv_roc_auc_std", "metrics.val_roc_auc"} <= set(
        runs.columns
    )
    ranked = compare.ranking(runs, "cv_roc_auc_mean")
    assert ranked["std"].notna().all() and ranked.iloc[0]["within_noise"]
    assert len(compare.metric_histories(runs["run_id"], "val_roc_auc")) > 3 * 2
