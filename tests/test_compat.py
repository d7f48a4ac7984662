"""The private third-party names fenced in ``workbench.core.*_compat``, checked against the
installed libraries: each test fails with the library's name and version when the private
thing underneath moves or changes shape, so an upgrade says what to fix."""

from __future__ import annotations

import importlib.metadata as md
import inspect
import io
import json
import os
import zipfile

import numpy as np
import pandas as pd
import pytest

from workbench.core import jupyter_compat, mlflow_compat, optuna_compat, skops_compat

# MLflow's hint about integer columns in inferred schemas is beside the point here.
pytestmark = pytest.mark.filterwarnings("ignore:Hint. Inferred schema:UserWarning")


def lib(name: str) -> str:
    """``name version`` of an installed distribution, for assertion messages."""
    return f"{name} {md.version(name)}"


def params_of(func) -> list[str]:
    return list(inspect.signature(func).parameters)


def private(module: str, name: str, dist: str):
    """``module.name``, or a failure naming the library version that dropped it."""
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"{lib(dist)}: {module}.{name} is gone ({exc}); update workbench.core's compat")


# ------------------------------------------------------------------ MLflow


def test_mlflow_tracking_store_is_the_clients_cached_sql_store(tracking_uri, experiment_name):
    import mlflow
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    get_store = private("mlflow.tracking._tracking_service.utils", "_get_store", "mlflow")
    assert params_of(get_store)[:1] == ["store_uri"], f"{lib('mlflow')}: _get_store signature"
    exp_id = mlflow.MlflowClient(tracking_uri).create_experiment(experiment_name)
    store = mlflow_compat.tracking_store(tracking_uri)
    assert isinstance(store, SqlAlchemyStore), f"{lib('mlflow')}: _get_store gave {type(store)}"
    assert mlflow_compat.tracking_store(tracking_uri) is store, (
        f"{lib('mlflow')}: _get_store no longer caches one store per URI"
    )
    assert store.get_experiment_by_name(experiment_name).experiment_id == exp_id
    assert callable(getattr(store, "ManagedSessionMaker", None)), (
        f"{lib('mlflow')}: SqlAlchemyStore.ManagedSessionMaker is gone"
    )


def _runs_for_search(experiment_name: str) -> str:
    """Three runs: scores 0.1/0.9/0.5; the first two read dataset 'd1'."""
    import mlflow

    exp_id = mlflow.MlflowClient().create_experiment(experiment_name)
    frame = pd.DataFrame({"x": [1.0, 2.0], "y": [0, 1]})
    for i, score in enumerate((0.1, 0.9, 0.5)):
        with mlflow.start_run(experiment_id=exp_id, run_name=f"r{i}"):
            mlflow.log_metric("score", score)
            if i < 2:
                mlflow.log_input(mlflow.data.from_pandas(frame, name="d1"), context="training")
    return exp_id


@pytest.mark.parametrize(
    "filter_string",
    ["metrics.score > 0.2", "dataset.name = 'd1'", "dataset.name = 'd1' and metrics.score < 0.5"],
)
def test_mlflow_sql_clauses_select_what_search_runs_selects(
    tracking_uri, experiment_name, filter_string
):
    import mlflow
    from mlflow.store.tracking import sqlalchemy_store as sas
    from mlflow.store.tracking.dbmodels.models import SqlRun
    from mlflow.utils.search_utils import SearchUtils
    from sqlalchemy import select

    orderby = private("mlflow.store.tracking.sqlalchemy_store", "_get_orderby_clauses", "mlflow")
    filters = private(
        "mlflow.store.tracking.sqlalchemy_store", "_get_sqlalchemy_filter_clauses", "mlflow"
    )
    assert params_of(orderby) == ["order_by_list", "session"], f"{lib('mlflow')}: {orderby}"
    assert params_of(filters) == ["parsed", "session", "dialect"], f"{lib('mlflow')}: {filters}"
    assert params_of(sas.SqlAlchemyStore._get_dialect) == ["self"], (
        f"{lib('mlflow')}: SqlAlchemyStore._get_dialect changed"
    )
    exp_id = _runs_for_search(experiment_name)
    order_by = ["metrics.score DESC"]
    store = mlflow_compat.tracking_store(tracking_uri)
    parsed = SearchUtils.parse_search_filter(filter_string)
    with store.ManagedSessionMaker() as session:
        cases, ordering, joins = mlflow_compat.orderby_clauses(order_by, session)
        attr, non_attr, datasets = mlflow_compat.filter_clauses(store, parsed, session)
        stmt = select(SqlRun.run_uuid, *cases)
        for sub in non_attr:
            stmt = stmt.join(sub)
        for sub in datasets:
            stmt = stmt.join(sub, SqlRun.run_uuid == sub.c.destination_id)
        for sub in joins:
            stmt = stmt.outerjoin(sub)
        stmt = stmt.distinct().filter(SqlRun.experiment_id == int(exp_id), *attr)
        ours = [row[0] for row in session.execute(stmt.order_by(*ordering))]
    expected = mlflow.search_runs([exp_id], filter_string, order_by=order_by, output_format="list")
    assert ours == [r.info.run_id for r in expected], (
        f"{lib('mlflow')}: the private SQL clauses no longer select like search_runs"
    )
    assert ours, "the filter matches some runs"


def test_mlflow_engine_cache_holds_the_stores_engine(tracking_uri):
    import mlflow
    from mlflow.store.model_registry import sqlalchemy_store as registry_store
    from mlflow.store.tracking import sqlalchemy_store as tracking_store

    for module in (tracking_store, registry_store):
        assert isinstance(getattr(module.SqlAlchemyStore, "_engine_map", None), dict), (
            f"{lib('mlflow')}: {module.__name__}.SqlAlchemyStore._engine_map is gone"
        )
    mlflow.MlflowClient(tracking_uri).search_experiments()  # opens (and caches) the engine
    engines = mlflow_compat.cached_engines()
    db = tracking_uri.removeprefix("sqlite:///")
    assert any(str(e.url.database) == db for e in engines), (
        f"{lib('mlflow')}: the store's engine is not in SqlAlchemyStore._engine_map"
    )
    for engine in engines:
        engine.dispose(close=False)  # what a forked batch worker does
    assert mlflow.MlflowClient(tracking_uri).search_experiments(), "the store still works"


def test_mlflow_engine_cache_gone_raises_instead_of_skipping(monkeypatch):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from workbench.run import workers

    monkeypatch.delattr(SqlAlchemyStore, "_engine_map")  # what a future MLflow may do
    with pytest.raises(mlflow_compat.MlflowChangedError, match=r"MLflow .*_engine_map"):
        mlflow_compat.cached_engines()
    with pytest.raises(mlflow_compat.MlflowChangedError):
        workers.forget_inherited_connections()  # the forked worker's reset refuses too


def test_mlflow_dataset_schema_comes_from_the_sample():
    import functools

    import mlflow
    from mlflow.data.pandas_dataset import PandasDataset

    infer = private("mlflow.types.utils", "_infer_schema", "mlflow")
    assert params_of(infer) == ["data"], f"{lib('mlflow')}: _infer_schema signature changed"
    assert isinstance(inspect.getattr_static(PandasDataset, "schema"), functools.cached_property), (
        f"{lib('mlflow')}: PandasDataset.schema is no longer a cached_property"
    )
    frame = pd.DataFrame({"a": np.arange(50), "b": ["x", "y"] * 25, "t": [0, 1] * 25})
    full = mlflow.data.from_pandas(frame, targets="t", name="f").schema
    ds = mlflow.data.from_pandas(frame, targets="t", name="f")
    mlflow_compat.set_dataset_schema(ds, frame.head(10))
    assert ds.schema == full, f"{lib('mlflow')}: the sample's schema differs from the table's"
    narrow = mlflow.data.from_pandas(frame, targets="t", name="f")
    mlflow_compat.set_dataset_schema(narrow, frame[["a"]].head(5))
    assert narrow.schema.input_names() == ["a"], (
        f"{lib('mlflow')}: PandasDataset ignores the schema set on it"
    )
    assert json.loads(narrow.to_dict()["schema"])["mlflow_colspec"][0]["name"] == "a"


# ------------------------------------------------------------------ skops


@pytest.fixture(scope="module")
def small_model():
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    X = pd.DataFrame(np.random.default_rng(0).normal(size=(60, 3)), columns=list("abc"))
    y = (X["a"] + X["b"] > 0).astype(int)
    return make_pipeline(StandardScaler(), DecisionTreeClassifier(random_state=0)).fit(X, y), X


def _without_ids(node):
    """A skops schema with object ids and array file names (memory addresses) left out."""
    if isinstance(node, dict):
        return {k: _without_ids(v) for k, v in node.items() if k not in ("__id__", "file")}
    if isinstance(node, list):
        return [_without_ids(v) for v in node]
    return node


def test_skops_archive_is_what_skops_dumps_writes(small_model):
    import skops.io as sio

    save_context = private("skops.io._persist", "SaveContext", "skops")
    get_state = private("skops.io._persist", "get_state", "skops")
    assert params_of(save_context)[:2] == ["zip_file", "protocol"], f"{lib('skops')}: SaveContext"
    assert callable(getattr(save_context, "clear_memo", None)), f"{lib('skops')}: clear_memo"
    assert params_of(get_state) == ["value", "save_context"], f"{lib('skops')}: get_state"
    model, X = small_model
    payload, schema = skops_compat.archive(model)
    public = sio.dumps(model)
    theirs = zipfile.ZipFile(io.BytesIO(public)).read("schema.json").decode()
    assert _without_ids(json.loads(schema)) == _without_ids(json.loads(theirs)), (
        f"{lib('skops')}: our archive's schema differs from skops.io.dumps'"
    )
    back = sio.loads(payload, trusted=sio.get_untrusted_types(data=payload))
    np.testing.assert_array_equal(back.predict(X), model.predict(X))


def test_skops_schema_audit_is_skops_own(small_model):
    import skops.io as sio

    get_tree = private("skops.io._audit", "get_tree", "skops")
    load_context = private("skops.io._utils", "LoadContext", "skops")
    assert params_of(get_tree) == ["state", "load_context", "trusted"], f"{lib('skops')}: get_tree"
    assert params_of(load_context)[:2] == ["src", "protocol"], f"{lib('skops')}: LoadContext"
    model, _ = small_model
    payload, schema = skops_compat.archive(model)
    public = sorted(sio.get_untrusted_types(data=payload))
    assert skops_compat.untrusted_in_schema(schema) == public, (
        f"{lib('skops')}: the schema-only audit disagrees with get_untrusted_types"
    )
    assert skops_compat.untrusted_types(payload, schema) == public == ["sklearn.tree._tree.Tree"]


def test_skops_swap_is_used_by_mlflow_save(small_model, tmp_path, monkeypatch):
    import mlflow.sklearn
    import skops.io as sio

    assert params_of(sio.dump)[:2] == ["obj", "file"], f"{lib('skops')}: skops.io.dump signature"
    assert params_of(sio.load)[:2] == ["file", "trusted"], f"{lib('skops')}: skops.io.load"
    model, X = small_model
    payload, schema = skops_compat.archive(model)
    trusted = skops_compat.untrusted_types(payload, schema)
    before = (sio.dump, sio.load)
    with skops_compat.serialize_once(model, payload, trusted) as served:
        mlflow.sklearn.save_model(
            model,
            str(tmp_path / "m"),
            serialization_format="skops",
            skops_trusted_types=trusted,
            input_example=X.head(3),
            pip_requirements=["scikit-learn"],
        )
    assert (sio.dump, sio.load) == before, "skops.io is restored"
    assert served.dumped == 1 and served.loaded >= 1, (
        f"{lib('mlflow')} / {lib('skops')}: mlflow.sklearn no longer saves through "
        f"skops.io.dump/load ({served}): the archive is written and parsed twice"
    )
    assert (tmp_path / "m" / "model.skops").read_bytes() == payload
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    back = mlflow.sklearn.load_model(str(tmp_path / "m"))
    np.testing.assert_array_equal(back.predict(X), model.predict(X))


# ------------------------------------------------------------------ Optuna


def test_optuna_journal_study_trial_is_failed_through_its_storage(tmp_path):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    journal = JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))
    study = optuna.create_study(study_name="compat", storage=journal)
    assert getattr(study, "_storage", None) is journal, f"{lib('optuna')}: Study._storage moved"
    assert optuna_compat.uses_journal_storage(study)
    assert not optuna_compat.uses_journal_storage(optuna.create_study())
    study.ask()  # a RUNNING trial, as a worker that died would leave it
    (running,) = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert isinstance(getattr(running, "_trial_id", None), int), (
        f"{lib('optuna')}: FrozenTrial._trial_id is gone"
    )
    assert optuna_compat.fail_trial(study, running), f"{lib('optuna')}: the trial was not failed"
    reread = optuna.load_study(study_name="compat", storage=journal)
    assert [t.state for t in reread.get_trials()] == [TrialState.FAIL]
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        optuna_compat.fail_trial(study, running)


# ------------------------------------------------------------------ jupyter_client


async def _ready_kernel(km_class: type, then=None):
    """Start a python3 kernel with ``km_class``, wait until its client is ready, await
    ``then(km, client)`` (if given), and shut the kernel down as nbclient does; its result."""
    km = km_class(kernel_name="python3")
    await km.start_kernel()
    try:
        client = km.client()
        client.start_channels()
        await client.wait_for_ready(timeout=60)
        result = await then(km, client) if then is not None else None
        client.stop_channels()
        return result
    finally:
        await km.shutdown_kernel(now=False)


def test_jupyter_kernel_manager_polls_shutdown_through_async_wait():
    import asyncio

    from jupyter_client import AsyncKernelManager

    wait = getattr(AsyncKernelManager, "_async_wait", None)
    assert wait is not None and inspect.iscoroutinefunction(wait), (
        f"{lib('jupyter_client')}: AsyncKernelManager._async_wait is gone"
    )
    sig = inspect.signature(wait)
    assert list(sig.parameters) == ["self", "pollinterval"], f"{lib('jupyter_client')}: {sig}"
    fast = jupyter_compat.fast_exit_kernel_manager()
    assert issubclass(fast, AsyncKernelManager) and "_async_wait" in vars(fast)
    assert jupyter_compat.fast_exit_kernel_manager() is fast, "built once per process"
    asked: list[float] = []

    class Recording(fast):
        async def _async_wait(self, pollinterval: float = 0.1) -> None:
            asked.append(pollinterval)
            await super()._async_wait(pollinterval=pollinterval)

    asyncio.run(_ready_kernel(Recording))
    assert asked, (
        f"{lib('jupyter_client')}: a kernel's shutdown no longer waits through _async_wait, "
        "so jupyter_compat's faster exit poll does nothing"
    )


def test_jupyter_fast_ready_client_connects_fast_and_adapts_the_protocol():
    """The kernel manager's and client's sockets reconnect every RECONNECT_MS, and the client
    still learns the kernel's protocol through jupyter_client's private hook."""
    import asyncio

    import zmq
    from jupyter_client.asynchronous import AsyncKernelClient

    handle = getattr(AsyncKernelClient, "_handle_kernel_info_reply", None)
    assert callable(handle), f"{lib('jupyter_client')}: _handle_kernel_info_reply is gone"
    fast = jupyter_compat.fast_exit_kernel_manager()

    async def facts(km, client) -> tuple:
        reply = await client.kernel_info(reply=True, timeout=30)
        return (
            type(client).__name__,
            km.context.getsockopt(zmq.RECONNECT_IVL),
            client.context.getsockopt(zmq.RECONNECT_IVL),
            reply["content"]["status"],
        )

    name, manager_ivl, client_ivl, status = asyncio.run(_ready_kernel(fast, facts))
    assert name == "FastReadyClient"
    assert manager_ivl == client_ivl == jupyter_compat.RECONNECT_MS
    assert status == "ok"


# ------------------------------------------------------------------ MLflow: the run hand-over


def test_mlflow_implicit_run_start_goes_through_start_run_homes(tracking_uri, monkeypatch):
    """``tracking.handover`` replaces ``start_run`` in ``start_run_homes``: ``mlflow.log_*``
    with no active run must start its run through one of them, not a private path."""
    import mlflow

    calls: list[dict] = []
    original = mlflow.start_run

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    homes = mlflow_compat.start_run_homes(mlflow)
    assert mlflow in homes and len(homes) == 2, f"{lib('mlflow')}: start_run lives in {homes}"
    for home in homes:
        monkeypatch.setattr(home, "start_run", recording)
    mlflow.log_param("implicit", 1)
    run = mlflow.active_run()
    mlflow.end_run()
    assert calls, f"{lib('mlflow')}: mlflow.log_param started its run without start_run"
    assert mlflow.get_run(run.info.run_id).data.params == {"implicit": "1"}


def test_mlflow_resumes_and_forgets_mlflow_run_id(tracking_uri, experiment_name, monkeypatch):
    """MLflow's own convention the runner relies on (MLflow Projects): the first
    ``start_run()`` resumes ``$MLFLOW_RUN_ID`` and removes it; ``set_experiment`` exports
    ``$MLFLOW_EXPERIMENT_ID`` (how ``handover`` sees a notebook's own experiment)."""
    import mlflow

    exp_id = mlflow.MlflowClient().create_experiment(experiment_name)
    run_id = mlflow.MlflowClient().create_run(exp_id).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    with mlflow.start_run() as run:
        assert run.info.run_id == run_id, f"{lib('mlflow')}: $MLFLOW_RUN_ID was not resumed"
    assert "MLFLOW_RUN_ID" not in os.environ, f"{lib('mlflow')}: $MLFLOW_RUN_ID kept"
    from mlflow.tracking import fluent

    # the fluent API's active experiment is process-wide: put it back after the test
    monkeypatch.setattr(fluent, "_active_experiment_id", fluent._active_experiment_id)
    mlflow.set_experiment(experiment_id=exp_id)
    assert os.environ.get("MLFLOW_EXPERIMENT_ID") == exp_id, (
        f"{lib('mlflow')}: set_experiment no longer sets $MLFLOW_EXPERIMENT_ID"
    )
