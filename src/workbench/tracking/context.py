"""Every run a notebook starts says which notebook it came from.

MLflow tags a run it creates with ``mlflow.source.name`` = the program's ``sys.argv[0]``:
for a run started in a Jupyter kernel, that is ``ipykernel_launcher.py``. The parent run a
notebook execution gets from the runner carries the notebook's path, but the runs the
notebook starts itself (``start_run(nested=True)``, autolog's children, the candidates of
notebook 05) would not. This MLflow run-context provider (registered through the
``mlflow.run_context_provider`` entry point in pyproject.toml, so MLflow loads it after its
own providers) gives each new run the notebook's path whenever it is known.
"""

from __future__ import annotations

from mlflow.tracking.context.abstract_context import RunContextProvider


class NotebookRunContext(RunContextProvider):
    """``mlflow.source.name`` = the notebook's path, ``mlflow.source.type`` = NOTEBOOK."""

    def in_context(self) -> bool:
        from workbench.tracking.runs import notebook_path

        return bool(notebook_path())

    def tags(self) -> dict[str, str]:
        from mlflow.utils.mlflow_tags import MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE

        from workbench.tracking.runs import notebook_path

        path = notebook_path()
        return {MLFLOW_SOURCE_NAME: path, MLFLOW_SOURCE_TYPE: "NOTEBOOK"} if path else {}
