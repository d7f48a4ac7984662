"""Classification metrics and their artifacts, logged in one call.

``evaluate_classifier(model, X, y)`` computes accuracy, precision, recall, f1, roc_auc,
pr_auc and log_loss, and logs to the active run: the metrics (with a prefix such as
``val_``), a confusion matrix figure, ROC and precision-recall curves, the classification
report as text and the feature importances as a CSV table. ``log_learning_curves``
(``tracking.curves``) is re-exported here.

Example::

    metrics = evaluate_classifier(pipe, split.X_val, split.y_val, prefix="val_")
    assert metrics["val_roc_auc"] > 0.7
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from workbench.core import collector
from workbench.tracking.curves import (  # noqa: F401  (re-exported: notebooks use evaluation.*)
    log_learning_curves,
    remembered_proba,
    staged_positive_proba,
)


def _settle() -> None:
    """Wait for the current run's background work (``tracking.runs.settle``)."""
    from workbench.tracking.runs import settle

    settle()


def classification_metrics(y_true, y_pred, y_prob) -> dict[str, float]:
    """The canonical binary classification metrics (unprefixed)."""
    from sklearn import metrics as m

    y_prob = np.clip(np.asarray(y_prob, dtype=float), 1e-15, 1 - 1e-15)
    return {
        **_counted(y_true, y_pred),
        "roc_auc": float(m.roc_auc_score(y_true, y_prob)),
        "pr_auc": float(m.average_precision_score(y_true, y_prob)),
        "log_loss": float(m.log_loss(y_true, y_prob, labels=[0, 1])),
    }


def _counted(y_true, y_pred) -> dict[str, float]:
    """Accuracy, precision, recall and f1 (0 where undefined) from the confusion counts of
    0/1 labels: the divisions scikit-learn makes, without validating and counting the labels
    four times over. Other labels go to scikit-learn."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if not all(np.isin(y, (0, 1)).all() for y in (y_true, y_pred)) or len(y_true) != len(y_pred):
        from sklearn import metrics as m

        return {
            "accuracy": float(m.accuracy_score(y_true, y_pred)),
            "precision": float(m.precision_score(y_true, y_pred, zero_division=0)),
            "recall": float(m.recall_score(y_true, y_pred, zero_division=0)),
            "f1": float(m.f1_score(y_true, y_pred, zero_division=0)),
        }
    positive, predicted = y_true == 1, y_pred == 1
    tp = int(np.count_nonzero(positive & predicted))
    fp, fn = int(np.count_nonzero(predicted)) - tp, int(np.count_nonzero(positive)) - tp
    return {
        "accuracy": float(np.mean(positive == predicted)),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
    }


def feature_importance(model, feature_names: list[str] | None = None) -> pd.DataFrame | None:
    """Importances of a fitted model or pipeline (``feature_importances_`` or ``|coef_|``),
    named after the pipeline's output features; None when the model has neither."""
    estimator = model.steps[-1][1] if hasattr(model, "steps") else model
    if hasattr(estimator, "feature_importances_"):
        values = np.asarray(estimator.feature_importances_, dtype=float)
    elif hasattr(estimator, "coef_"):
        values = np.abs(np.asarray(estimator.coef_, dtype=float)).ravel()
    else:
        return None
    if feature_names is None:
        try:
            feature_names = (
                list(model[:-1].get_feature_names_out()) if hasattr(model, "steps") else None
            )
        except (AttributeError, ValueError):
            feature_names = None
    if feature_names is None or len(feature_names) != len(values):
        feature_names = [f"f{i}" for i in range(len(values))]
    table = pd.DataFrame({"feature": feature_names, "importance": values})
    return table.sort_values("importance", ascending=False, ignore_index=True)


def _figures(y_true, y_pred, y_prob, title: str):
    """Confusion matrix, and ROC + precision-recall side by side.

    Plain ``Figure`` objects (no pyplot state to leak or close) with fixed margins:
    ``tight_layout`` would draw each figure once more just to measure its labels. The curve
    axes span 0 to 1 with fixed ticks, so figures of different runs compare at a glance
    (and matplotlib need not work out and draw a tick locator's choice).
    """
    from matplotlib.figure import Figure
    from sklearn import metrics as m

    cm = m.confusion_matrix(y_true, y_pred, labels=[0, 1])
    fig_cm = Figure(figsize=(3.6, 3.2), dpi=90)
    fig_cm.subplots_adjust(left=0.2, right=0.95, bottom=0.16, top=0.9)
    ax = fig_cm.add_subplot()
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(
            j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black"
        )
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xlabel="predicted",
        ylabel="actual",
        title=f"Confusion matrix{title}",
    )

    fpr, tpr, _ = m.roc_curve(y_true, y_prob)
    prec, rec, _ = m.precision_recall_curve(y_true, y_prob)
    fig_curves = Figure(figsize=(7.2, 3.2), dpi=90)
    fig_curves.subplots_adjust(left=0.09, right=0.98, bottom=0.16, top=0.9, wspace=0.3)
    ax1, ax2 = fig_curves.subplots(1, 2)
    ax1.plot(fpr, tpr, lw=1.5)
    ax1.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
    ax1.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=f"ROC (AUC {m.auc(fpr, tpr):.3f})",
    )
    ax2.plot(rec, prec, lw=1.5)
    ax2.axhline(float(np.mean(y_true)), ls="--", lw=0.8, color="grey")
    ax2.set(xlabel="recall", ylabel="precision", title="Precision-recall")
    ticks = [0, 0.25, 0.5, 0.75, 1]
    for axis in (ax1, ax2):
        axis.set(xticks=ticks, yticks=ticks, xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    return fig_cm, fig_curves


def evaluate_classifier(
    model,
    X: pd.DataFrame,
    y,
    *,
    prefix: str = "val_",
    log: bool = True,
    artifacts: bool = True,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Score ``model`` on ``(X, y)``; log metrics and artifacts to the active run.

    Returns the metrics with ``prefix`` applied (e.g. ``val_roc_auc``).
    """
    y_true = np.asarray(y).astype(int)
    if log:
        _settle()
    y_prob = remembered_proba(model, X)  # the learning curves' last stage on these rows
    if y_prob is None:
        y_prob = model.predict_proba(X)[:, 1]
    y_pred = (y_prob >= threshold).astype(int)
    metrics = {prefix + k: v for k, v in classification_metrics(y_true, y_pred, y_prob).items()}
    if not log:
        return metrics

    import mlflow

    mlflow.log_metrics(metrics)
    if artifacts:
        _log_artifacts(model, y_true, y_pred, y_prob, prefix)
    return metrics


def _log_artifacts(model, y_true, y_pred, y_prob, prefix: str) -> None:
    """The two figures, the classification report and the feature importances, written
    as ``mlflow.log_figure`` and ``mlflow.log_text`` write them, in one upload (not four)."""
    import tempfile
    from pathlib import Path

    import mlflow
    from sklearn.metrics import classification_report

    name = prefix.rstrip("_")
    with tempfile.TemporaryDirectory(prefix="wb-eval-") as tmp:
        files = Path(tmp)
        pngs = _figure_pngs(y_true, y_pred, y_prob, f" ({name})" if prefix else "")
        (files / "confusion_matrix.png").write_bytes(pngs[0])
        (files / "roc_pr_curves.png").write_bytes(pngs[1])
        report = classification_report(
            y_true, y_pred, target_names=["negative (0)", "positive (1)"], digits=4, zero_division=0
        )
        (files / "classification_report.txt").write_text(report, encoding="utf-8")
        table = feature_importance(model)
        if table is not None:
            (files / "feature_importance.csv").write_text(table.to_csv(index=False), "utf-8")
        mlflow.log_artifacts(tmp, "evaluation" + (f"/{name}" if prefix else ""))


def _figure_pngs(y_true, y_pred, y_prob, title: str) -> tuple[bytes, bytes]:
    """The confusion matrix and the ROC + precision-recall figure as PNG files' bytes (what
    ``mlflow.log_figure`` writes: ``savefig`` to a ``.png``).

    Drawn with the cyclic garbage collector paused (``workbench.core.collector``): a figure
    is thousands of objects in reference cycles, garbage once saved, which the next young
    collection frees instead of promoting them (6,000 a call otherwise) to the old
    generation, where only a full collection of the whole process frees them.
    """
    import io

    pngs = []
    with collector.paused():
        for figure in _figures(y_true, y_pred, y_prob, title):
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png")
            pngs.append(buffer.getvalue())
    return pngs[0], pngs[1]
