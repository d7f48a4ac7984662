import pandas as pd
import pytest

from workbench.tracking.data import DataError, fingerprint, load_dataset, make_churn


def test_churn_is_deterministic_realistic_and_learnable():
    a, b = make_churn(3000, seed=7), make_churn(3000, seed=7)
    pd.testing.assert_frame_equal(a, b)
    assert fingerprint(a) == fingerprint(b) != fingerprint(make_churn(3000, seed=8))
    assert 0.2 <= a["churn"].mean() <= 0.3
    assert a.isna().any().any(), "real tables have missing values"
    assert {"contract", "payment_method", "internet_service"} <= set(
        a.select_dtypes(exclude="number").columns
    )

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from workbench.tracking.data import make_pipeline

    split = load_dataset("churn", seed=7, n_rows=3000).split(seed=7)
    pipe = make_pipeline(LogisticRegression(max_iter=500), split.X_train).fit(
        split.X_train, split.y_train
    )
    auc = roc_auc_score(split.y_val, pipe.predict_proba(split.X_val)[:, 1])
    assert 0.72 < auc < 0.95, "a real signal, with noise"


def test_split_is_stratified_and_disjoint():
    ds = load_dataset("churn", seed=1, n_rows=1000)
    s = ds.split(seed=1, val_size=0.2, test_size=0.2)
    assert s.sizes() == {"train_size": 600, "val_size": 200, "test_size": 200}
    assert not set(s.X_train.index) & set(s.X_val.index)
    assert not set(s.X_val.index) & set(s.X_test.index)
    assert abs(s.y_train.mean() - s.y_test.mean()) < 0.03


def test_csv_with_named_target_and_string_labels(tmp_path):
    path = tmp_path / "mine.csv"
    pd.DataFrame({"x": range(10), "label": ["yes", "no"] * 4 + ["no", "no"]}).to_csv(
        path, index=False
    )
    ds = load_dataset(path, target="label")
    assert set(ds.y.unique()) == {0, 1} and ds.y.sum() == 4  # the rarer class is positive
    assert ds.source == str(path.resolve())


@pytest.mark.parametrize(
    ("content", "target", "message"),
    [
        (None, "y", "not found"),
        ("", "y", "empty"),
        ("a,b\n", "b", "no rows"),
        ("a,b\n1,0\n2,1\n", "c", "target column 'c' is not in"),
        ("a,b\n1,0\n2,1\n3,2\n", "b", "must be binary"),
        ("a,b\n1,0\n2,\n", "b", "missing values"),
    ],
)
def test_bad_input_is_named(tmp_path, content, target, message):
    path = tmp_path / "t.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_dataset(path, target=target)


def test_unknown_dataset_and_missing_target():
    with pytest.raises(DataError, match="neither 'churn' nor a CSV"):
        load_dataset("iris")
    with pytest.raises(DataError, match="target"):
        load_dataset("churn", target="label")
