"""Classification metrics and their artifacts, logged in one call.

``evaluate_classifier(model, X, y)`` computes accuracy, precision, recall, f1, roc_auc,
pr_auc and log_loss, and logs to the active run: the metrics (with a prefix such as
``val_``), a confusion matrix figure, ROC and precision-recall curves, the classification
report as text and the feature importances as a CSV table.

Example::

    metrics = evaluate_classifier(pipe, split.X_val, split.y_val, prefix="val_")
    assert metrics["val_roc_auc"] > 0.7
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def classification_metrics(y_true, y_pred, y_prob) -> dict[str, float]:
    """The canonical binary classification metrics (unprefixed)."""
    from sklearn import metrics as m

    y_prob = np.clip(np.asarray(y_prob, dtype=float), 1e-15, 1 - 1e-15)
    return {
        "accuracy": float(m.accuracy_score(y_true, y_pred)),
        "precision": float(m.precision_score(y_true, y_pred, zero_division=0)),
        "recall": float(m.recall_score(y_true, y_pred, zero_division=0)),
        "f1": float(m.f1_score(y_true, y_pred, zero_division=0)),
        "roc_auc": float(m.roc_auc_score(y_true, y_prob)),
        "pr_auc": float(m.average_precision_score(y_true, y_prob)),
        "log_loss": float(m.log_loss(y_true, y_prob, labels=[0, 1])),
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
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from sklearn import metrics as m

    cm = m.confusion_matrix(y_true, y_pred, labels=[0, 1])
    fig_cm, ax = plt.subplots(figsize=(3.6, 3.2), dpi=90)
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
    fig_cm.tight_layout()

    fpr, tpr, _ = m.roc_curve(y_true, y_prob)
    prec, rec, _ = m.precision_recall_curve(y_true, y_prob)
    fig_curves, (ax1, ax2) = plt.subplots(1, 2, figsize=(7.2, 3.2), dpi=90)
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
    fig_curves.tight_layout()
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
    y_prob = model.predict_proba(X)[:, 1]
    y_pred = (y_prob >= threshold).astype(int)
    metrics = {prefix + k: v for k, v in classification_metrics(y_true, y_pred, y_prob).items()}
    if not log:
        return metrics

    import mlflow
    from sklearn.metrics import classification_report

    mlflow.log_metrics(metrics)
    if artifacts:
        import matplotlib.pyplot as plt

        title = f" ({prefix.rstrip('_')})" if prefix else ""
        fig_cm, fig_curves = _figures(y_true, y_pred, y_prob, title)
        folder = "evaluation" + (f"/{prefix.rstrip('_')}" if prefix else "")
        mlflow.log_figure(fig_cm, f"{folder}/confusion_matrix.png")
        mlflow.log_figure(fig_curves, f"{folder}/roc_pr_curves.png")
        plt.close(fig_cm)
        plt.close(fig_curves)
        report = classification_report(
            y_true, y_pred, target_names=["negative (0)", "positive (1)"], digits=4, zero_division=0
        )
        mlflow.log_text(report, f"{folder}/classification_report.txt")
        table = feature_importance(model)
        if table is not None:
            mlflow.log_text(table.to_csv(index=False), f"{folder}/feature_importance.csv")
    return metrics


def log_learning_curves(model, X_train, y_train, X_val, y_val, *, every: int = 1) -> pd.DataFrame:
    """Log train/validation accuracy and log-loss after each boosting stage as step metrics
    named ``learning/<metric>`` (the MLflow UI groups them; final metrics keep plain names).

    Works for pipelines ending in an estimator with ``staged_predict_proba`` (gradient
    boosting). The preprocessing runs once, and the points go out through a buffered
    ``StepLogger`` (one ``log_batch`` per 1,000 values instead of a request per step).
    Returns the curves as a DataFrame indexed by step.
    """
    from workbench.tracking import StepLogger

    def log_loss(y, p):  # vectorised: sklearn's validates its input on each of hundreds of calls
        p = np.clip(p[:, 1], 1e-15, 1 - 1e-15)
        return -float(np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))

    head, estimator = (model[:-1], model[-1]) if hasattr(model, "steps") else (None, model)
    if not hasattr(estimator, "staged_predict_proba"):
        raise TypeError(
            f"{type(estimator).__name__} has no staged_predict_proba: learning curves need a boosting model"
        )
    Xt, Xv = (
        (head.transform(X_train), head.transform(X_val)) if head is not None else (X_train, X_val)
    )
    yt, yv = np.asarray(y_train).astype(int), np.asarray(y_val).astype(int)
    rows = []
    with StepLogger() as steps:
        stages = zip(
            estimator.staged_predict_proba(Xt), estimator.staged_predict_proba(Xv), strict=True
        )
        for step, (pt, pv) in enumerate(stages):
            if step % every:
                continue
            row = {
                "train_accuracy": float(np.mean((pt[:, 1] >= 0.5) == yt)),
                "val_accuracy": float(np.mean((pv[:, 1] >= 0.5) == yv)),
                "train_log_loss": log_loss(yt, pt),
                "val_log_loss": log_loss(yv, pv),
            }
            steps.log(step, **{f"learning/{k}": v for k, v in row.items()})
            rows.append({"step": step, **row})
    return pd.DataFrame(rows).set_index("step")
