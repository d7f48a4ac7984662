"""The churn dataset, a loader for your own table, splits, fingerprints and dataset logging.

``load_dataset("churn")`` generates a telco-style customer table deterministically from a
seed: mixed numeric and categorical columns, a few missing values, a churn rate near 25%,
and a real (noisy) signal. ``load_dataset("path/to/file.csv", target="label")`` loads a
user's own table instead. Either way the problems a user can cause (bad path, missing
target, non-binary target, empty table) are reported before any run is created.

Example::

    ds = load_dataset("churn", seed=42)
    split = ds.split(seed=42)
    pipe = make_pipeline(estimator, split.X_train)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from workbench.core import mlflow_compat

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

CHURN = "churn"
CHURN_TARGET = "churn"
SCHEMA_SAMPLE_ROWS = 1000


class DataError(ValueError):
    """The dataset cannot be used as asked; the message names the problem and the fix."""


@dataclass(frozen=True)
class Split:
    """Train, validation and test parts of a dataset (features and target apart)."""

    X_train: pd.DataFrame
    X_val: pd.DataFrame
    X_test: pd.DataFrame
    y_train: pd.Series
    y_val: pd.Series
    y_test: pd.Series

    def sizes(self) -> dict[str, int]:
        return {
            "train_size": len(self.y_train),
            "val_size": len(self.y_val),
            "test_size": len(self.y_test),
        }


@dataclass(frozen=True)
class Dataset:
    """A table with a binary target, and where it came from."""

    frame: pd.DataFrame
    target: str
    name: str
    source: str
    fingerprint: str = field(default="")

    @property
    def X(self) -> pd.DataFrame:
        return self.frame.drop(columns=[self.target])

    @property
    def y(self) -> pd.Series:
        return self.frame[self.target]

    @property
    def positive_rate(self) -> float:
        return float(self.y.mean())

    def profile(self) -> dict[str, float | int | str]:
        """Facts worth logging as parameters: size, shape and class balance."""
        return {
            "dataset": self.name,
            "n_rows": len(self.frame),
            "n_features": self.frame.shape[1] - 1,
            "target_positive_rate": round(self.positive_rate, 4),
            "dataset_fingerprint": self.fingerprint,
        }

    def split(self, seed: int = 0, val_size: float = 0.2, test_size: float = 0.2) -> Split:
        """Stratified train/validation/test split, reproducible from ``seed``."""
        from sklearn.model_selection import train_test_split

        if not 0 < val_size < 1 or not 0 < test_size < 1 or val_size + test_size >= 1:
            raise DataError(
                f"val_size={val_size} and test_size={test_size} must each be in (0, 1) and "
                "sum to less than 1, e.g. val_size=0.2, test_size=0.2"
            )
        X, y = self.X, self.y
        X_rest, X_test, y_rest, y_test = train_test_split(
            X, y, test_size=test_size, random_state=seed, stratify=y
        )
        X_train, X_val, y_train, y_val = train_test_split(
            X_rest, y_rest, test_size=val_size / (1 - test_size), random_state=seed, stratify=y_rest
        )
        return Split(X_train, X_val, X_test, y_train, y_val, y_test)


def fingerprint(frame: pd.DataFrame) -> str:
    """A short content hash: same rows, columns and dtypes give the same fingerprint."""
    h = hashlib.sha256()
    h.update("|".join(f"{c}:{t}" for c, t in frame.dtypes.astype(str).items()).encode())
    h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def make_churn(n_rows: int = 5000, seed: int = 0) -> pd.DataFrame:
    """Generate the synthetic telco churn table (deterministic for a given seed)."""
    if n_rows < 50:
        raise DataError(
            f"n_rows={n_rows} is too small for train/validation/test splits; use at least 50"
        )
    rng = np.random.default_rng(seed)  # one generator, drawn from in a fixed order below
    columns = _churn_customers(rng, n_rows)
    columns[CHURN_TARGET] = _churn_outcome(rng, columns)
    return _with_holes(pd.DataFrame(columns), rng)


def _churn_customers(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """The customers' features: contract, services, billing and support calls."""
    tenure = rng.integers(0, 73, n)
    contract = rng.choice(["Month-to-month", "One year", "Two year"], n, p=[0.55, 0.25, 0.20])
    internet = rng.choice(["DSL", "Fiber optic", "No"], n, p=[0.35, 0.45, 0.20])
    payment = rng.choice(
        ["Electronic check", "Mailed check", "Bank transfer", "Credit card"],
        n,
        p=[0.35, 0.2, 0.22, 0.23],
    )
    tech_support = np.where(
        internet == "No", "No internet", rng.choice(["Yes", "No"], n, p=[0.4, 0.6])
    )
    senior = (rng.random(n) < 0.16).astype(int)
    paperless = rng.choice(["Yes", "No"], n, p=[0.6, 0.4])
    base_charge = {"DSL": 55.0, "Fiber optic": 85.0, "No": 22.0}
    monthly = np.array([base_charge[i] for i in internet]) + rng.normal(0, 12, n)
    monthly = np.clip(monthly, 18.0, 120.0).round(2)
    total = (monthly * np.maximum(tenure, 1) * rng.normal(1.0, 0.05, n)).round(2)
    support_calls = rng.poisson(1.0 + 1.5 * (internet == "Fiber optic") * (tech_support == "No"), n)
    return {
        "tenure_months": tenure,
        "contract": contract,
        "internet_service": internet,
        "tech_support": tech_support,
        "payment_method": payment,
        "paperless_billing": paperless,
        "senior_citizen": senior,
        "monthly_charges": monthly,
        "total_charges": total,
        "support_calls": support_calls,
    }


def _churn_outcome(rng: np.random.Generator, c: dict[str, np.ndarray]) -> np.ndarray:
    """Who churns: a logistic model of the features plus noise no feature explains."""
    n = len(c["tenure_months"])
    logit = (
        -2.05
        + 1.3 * (c["contract"] == "Month-to-month")
        - 0.9 * (c["contract"] == "Two year")
        - 0.035 * c["tenure_months"]
        + 0.55 * (c["internet_service"] == "Fiber optic")
        + 0.5 * (c["payment_method"] == "Electronic check")
        + 0.38 * c["support_calls"]
        + 0.45 * (c["tech_support"] == "No")
        + 0.015 * (c["monthly_charges"] - 65)
        + 0.3 * c["senior_citizen"]
        + 0.2 * (c["paperless_billing"] == "Yes")
        + rng.normal(0, 0.6, n)  # what no feature explains
    )
    return (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)


def _with_holes(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Real tables have holes: new customers without a total yet, and a few unrecorded fields."""
    n = len(frame)
    new_customer = frame["tenure_months"].to_numpy() == 0
    frame.loc[new_customer | (rng.random(n) < 0.02), "total_charges"] = np.nan
    frame.loc[rng.random(n) < 0.03, "tech_support"] = np.nan
    frame.loc[rng.random(n) < 0.02, "support_calls"] = np.nan
    return frame


def load_dataset(
    dataset: str | Path = CHURN, target: str | None = None, *, seed: int = 0, n_rows: int = 5000
) -> Dataset:
    """Load ``"churn"`` (generated) or a CSV file with a binary ``target`` column."""
    if str(dataset) == CHURN:
        if target not in (None, "", CHURN_TARGET):
            raise DataError(f"the churn dataset's target is {CHURN_TARGET!r}, not {target!r}")
        frame = make_churn(n_rows=n_rows, seed=seed)
        return _checked(
            frame,
            CHURN_TARGET,
            name=f"churn-synthetic-{n_rows}-seed{seed}",
            source="workbench.data.make_churn",
        )
    path = Path(dataset).expanduser()
    if path.suffix.lower() not in (".csv", ".gz", ".txt") and not path.exists():
        raise DataError(f"dataset {str(dataset)!r} is neither 'churn' nor a CSV file path")
    if not path.is_file():
        raise DataError(
            f"dataset file not found: {path}\nfix: pass dataset='churn' or the path of an existing CSV file"
        )
    if not target:
        raise DataError(f"dataset {path.name} needs a target column: pass target='<column name>'")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"dataset file {path} is empty: it has no header and no rows") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"dataset file {path} is not a readable CSV file: {exc}") from exc
    return _checked(frame, target, name=path.stem, source=str(path.resolve()))


def _checked(frame: pd.DataFrame, target: str, *, name: str, source: str) -> Dataset:
    if frame.empty:
        raise DataError(f"dataset {name!r} has no rows")
    if target not in frame.columns:
        raise DataError(
            f"target column {target!r} is not in dataset {name!r}; its columns are: "
            + ", ".join(map(str, frame.columns))
        )
    y = frame[target]
    if y.isna().any():
        raise DataError(
            f"target column {target!r} has {int(y.isna().sum())} missing values; drop or fill those rows"
        )
    values = sorted(pd.unique(y).tolist(), key=str)
    if len(values) != 2:
        raise DataError(
            f"target column {target!r} must be binary (two distinct values), found {len(values)}: "
            + ", ".join(map(str, values[:10]))
            + (" ..." if len(values) > 10 else "")
        )
    if set(values) != {0, 1}:
        # Map any two labels to 0/1, the rarer class being the positive one.
        positive = y.value_counts().idxmin()
        frame = frame.assign(**{target: (y == positive).astype(int)})
    if frame.shape[1] < 2:
        raise DataError(f"dataset {name!r} has no feature columns besides the target {target!r}")
    return Dataset(frame, target, name, source, fingerprint(frame))


def make_preprocessor(X: pd.DataFrame):
    """Impute, scale numeric columns and one-hot encode the categorical ones."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = X.select_dtypes(include="number").columns.tolist()
    categorical = [c for c in X.columns if c not in numeric]
    return ColumnTransformer(
        [
            (
                "num",
                Pipeline(
                    [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
                ),
                numeric,
            ),
            (
                "cat",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="most_frequent")),
                        ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
                    ]
                ),
                categorical,
            ),
        ],
        verbose_feature_names_out=False,
    )


def make_pipeline(estimator, X: pd.DataFrame) -> Pipeline:
    """A pipeline that takes raw rows (the dataset's own columns) and ends in ``estimator``."""
    from sklearn.pipeline import Pipeline

    return Pipeline([("preprocess", make_preprocessor(X)), ("model", estimator)])


def log_input(ds: Dataset, context: str = "training", *, run_id: str | None = None) -> None:
    """Log the dataset as an MLflow dataset input of the active run (or of ``run_id``, from
    any thread), and tag its fingerprint."""
    import warnings

    import mlflow

    generated = ds.source.startswith("workbench.")
    with warnings.catch_warnings():
        # MLflow registers the local-file source twice and warns that a path is ambiguous, and
        # hints about integer columns in a schema that only describes the data here.
        warnings.simplefilter("ignore", UserWarning)
        mlflow_ds = mlflow.data.from_pandas(
            ds.frame,
            source=None if generated else ds.source,
            targets=ds.target,
            name=ds.name,
            digest=ds.fingerprint,
        )
        # MLflow infers the schema by looking at every value of every column (seconds for a
        # large table); the first rows give the same column types in a fraction of the time.
        mlflow_compat.set_dataset_schema(mlflow_ds, ds.frame.head(SCHEMA_SAMPLE_ROWS))
        if run_id is None:
            mlflow.log_input(mlflow_ds, context=context)
            mlflow.set_tag("workbench.dataset.fingerprint", ds.fingerprint)
            return
        client = mlflow.MlflowClient()
        client.log_inputs(run_id, datasets=[_dataset_input(mlflow_ds, context)])
        client.set_tag(run_id, "workbench.dataset.fingerprint", ds.fingerprint)


def _dataset_input(mlflow_ds, context: str):
    """What ``mlflow.log_input(mlflow_ds, context=context)`` logs, for a named run."""
    from mlflow.entities import Dataset as DatasetEntity
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    fields = mlflow_ds.to_dict()
    entity = DatasetEntity(
        name=fields["name"],
        digest=fields["digest"],
        source_type=fields["source_type"],
        source=fields["source"],
        schema=fields.get("schema"),
        profile=fields.get("profile"),
    )
    return DatasetInput(dataset=entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
