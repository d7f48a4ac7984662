"""The notebooks teach MLflow itself, as one story (issue 12).

Each notebook makes enough distinct MLflow calls outside its check cells (01 at least 8, every
other at least 4), so the lesson cannot drift back behind the workbench helpers; and each has
the newcomer scaffolding: a ``parameters`` cell, the tracking URI printed in its first cells,
short code cells, a link to the glossary, a closing "What to look at in the MLflow UI" cell
whose links open the training view, and a "Try it yourself" cell.

Calls are found by walking each code cell's syntax tree (IPython magics are turned into
Python first): ``mlflow.xxx(...)`` and deeper (``mlflow.sklearn.log_model(...)``), names
imported from ``mlflow``, and methods of an ``MlflowClient`` (``MlflowClient().xxx(...)`` or
``client.xxx(...)`` where ``client = mlflow.MlflowClient()``). Cells tagged ``check`` are
left out: assertions are not the lesson.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
GLOSSARY = ROOT / "docs" / "glossary.md"
CHAPTERS = [f"{n:02d}" for n in range(1, 8)]  # 01-07: the story the issue asks for
MIN_CALLS = {"01": 8}
DEFAULT_MIN_CALLS = 4
MAX_CELL_LINES = 15  # code lines (blank and comment-only lines aside) of a cell, check and
# parameters cells aside
UI_VIEW = "workflowType=machine_learning"
UI_LINK = re.compile(r"#/experiments[^\s)\"'`<>]*")
GLOSSARY_TERMS = (
    "run", "experiment", "artifact", "signature", "pyfunc", "alias", "nested run", "pruning",
    "trusted types",
)  # fmt: skip
CLIENT_CLASSES = {
    "mlflow.MlflowClient",
    "mlflow.client.MlflowClient",
    "mlflow.tracking.MlflowClient",
}


# ------------------------------------------------------------------ reading notebooks


def _chapters() -> list[str]:
    found = {p.name[:2] for p in NOTEBOOKS.glob("[0-9][0-9]-*.ipynb")}
    return sorted(set(CHAPTERS) | found)


def _load(chapter: str) -> tuple[Path, dict]:
    """The notebook numbered ``chapter``; a chapter not written yet is skipped by name."""
    matches = sorted(NOTEBOOKS.glob(f"{chapter}-*.ipynb"))
    if not matches:
        pytest.skip(f"notebooks/{chapter}-*.ipynb does not exist yet")
    assert len(matches) == 1, f"several notebooks numbered {chapter}: {[p.name for p in matches]}"
    return matches[0], json.loads(matches[0].read_text())


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _tags(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def _code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


TIMING_MAGICS = ("time", "timeit")  # their statement is code the learner reads


def _python(source: str) -> ast.Module:
    """A code cell's syntax tree, its IPython magics (``%time``, ``!cmd``) made Python; the
    statement a timing magic runs (``%time mlflow.log_params(p)``) is parsed in as well."""
    from IPython.core.inputtransformer2 import TransformerManager

    tree = ast.parse(TransformerManager().transform_cell(source))
    timed = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("run_line_magic", "run_cell_magic")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value in TIMING_MAGICS
        ):
            text = node.args[-1].value if isinstance(node.args[-1], ast.Constant) else ""
            text = re.sub(r"^(\s*-\w+(\s+\d+)?)+\s", "", str(text))  # %timeit -n1 -r1 ...
            timed.append(ast.parse(text))
    tree.body += [stmt for module in timed for stmt in module.body]
    return tree


# ------------------------------------------------------------------ counting MLflow calls


def _dotted(node: ast.AST) -> tuple[str, list[str]] | None:
    """``a.b.c`` as (root name, [b, c]); None when the chain does not start at a name."""
    attrs: list[str] = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    return (node.id, attrs[::-1]) if isinstance(node, ast.Name) else None


def _imported_names(trees: list[ast.Module]) -> dict[str, str]:
    """Local names bound to MLflow by imports, mapped to their full dotted path."""
    names = {"mlflow": "mlflow"}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "mlflow":
                        if alias.asname:
                            names[alias.asname] = alias.name
                        else:
                            names["mlflow"] = "mlflow"
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mlflow":
                for alias in node.names:
                    names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _resolve(node: ast.AST, imported: dict[str, str]) -> str | None:
    chain = _dotted(node)
    if chain is None or chain[0] not in imported:
        return None
    return ".".join([imported[chain[0]], *chain[1]])


def _is_client(node: ast.AST, imported: dict[str, str]) -> bool:
    """True for an expression that builds an MlflowClient (``mlflow.MlflowClient(...)``)."""
    return isinstance(node, ast.Call) and _resolve(node.func, imported) in CLIENT_CLASSES


def _client_variables(trees: list[ast.Module], imported: dict[str, str]) -> set[str]:
    names: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and _is_client(node.value, imported):
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def _call_name(call: ast.Call, imported: dict[str, str], clients: set[str]) -> str | None:
    """``mlflow.log_params``, ``MlflowClient.search_runs``...; None for any other call."""
    func = call.func
    if isinstance(func, ast.Attribute) and (
        _is_client(func.value, imported)
        or (isinstance(func.value, ast.Name) and func.value.id in clients)
    ):
        return f"MlflowClient.{func.attr}"
    name = _resolve(func, imported)
    if name is None or name in CLIENT_CLASSES:  # building a client teaches nothing yet
        return None
    return name


def mlflow_calls(nb: dict) -> set[str]:
    """The distinct MLflow calls a notebook's code cells make, check cells left out."""
    cells = _code_cells(nb)
    trees = [_python(_source(c)) for c in cells]
    imported = _imported_names(trees)
    clients = _client_variables(trees, imported)
    found: set[str] = set()
    for cell, tree in zip(cells, trees, strict=True):
        if "check" in _tags(cell):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and (name := _call_name(node, imported, clients)):
                found.add(name)
    return found


def test_the_counter_reads_what_a_learner_reads():
    """The counter itself, on a small notebook: module calls, imported names, client methods
    (on a variable or a fresh client), magics; constructors and check cells do not count."""

    def cell(src: str, *tags: str) -> dict:
        return {"cell_type": "code", "metadata": {"tags": list(tags)}, "source": src}

    nb = {
        "cells": [
            cell(
                "import mlflow\nfrom mlflow.models import infer_signature\nimport mlflow.sklearn as msk"
            ),
            cell("%time mlflow.log_params({'a': 1})\nclient = mlflow.MlflowClient()\n!ls"),
            cell("%%timeit -n1 -r1\nmlflow.log_metrics({'a': 1}, step=0)"),
            cell("with mlflow.start_run(run_name='x'):\n    msk.log_model(m, name='model')"),
            cell(
                "infer_signature(x)\nclient.search_runs(['1'])\nmlflow.MlflowClient().get_run('r')"
            ),
            cell("print(len(x))\nrun.info.run_id"),
            cell("mlflow.get_run('r')\nclient.get_metric_history('r', 'm')", "check"),
            {"cell_type": "markdown", "metadata": {}, "source": "mlflow.log_metric('no', 1)"},
        ]
    }
    assert mlflow_calls(nb) == {
        "mlflow.log_params",
        "mlflow.log_metrics",
        "mlflow.start_run",
        "mlflow.sklearn.log_model",
        "mlflow.models.infer_signature",
        "MlflowClient.search_runs",
        "MlflowClient.get_run",
    }


# ------------------------------------------------------------------ the notebooks


@pytest.mark.parametrize("chapter", _chapters())
def test_notebook_teaches_mlflow_itself(chapter):
    path, nb = _load(chapter)
    calls = mlflow_calls(nb)
    need = MIN_CALLS.get(chapter, DEFAULT_MIN_CALLS)
    assert len(calls) >= need, (
        f"{path.name} makes {len(calls)} distinct MLflow calls outside its check cells, "
        f"needs at least {need}: {sorted(calls)}"
    )


@pytest.mark.parametrize("chapter", _chapters())
def test_notebook_has_the_newcomer_scaffolding(chapter):
    path, nb = _load(chapter)
    code = _code_cells(nb)
    markdown = [_source(c) for c in nb["cells"] if c["cell_type"] == "markdown"]
    assert any("parameters" in _tags(c) for c in code), f"{path.name}: no cell tagged parameters"
    first = {"cells": [c for c in code[:3] if "check" not in _tags(c)]}
    assert "mlflow.get_tracking_uri" in mlflow_calls(first), (
        f"{path.name}: its first code cells should print mlflow.get_tracking_uri()"
    )
    assert any("Try it yourself" in m for m in markdown), f"{path.name}: no 'Try it yourself' cell"
    glossary = [
        (path.parent / link).resolve()
        for m in markdown
        for link in re.findall(r"\]\(([^)\s]*glossary\.md)[^)]*\)", m)
    ]
    assert glossary, f"{path.name}: no markdown link to the glossary (docs/glossary.md)"
    assert all(g == GLOSSARY for g in glossary), f"{path.name}: glossary links {glossary}"
    for cell in code:
        lines = [
            ln
            for ln in _source(cell).splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")
        ]
        if not {"check", "parameters"} & set(_tags(cell)):
            assert len(lines) <= MAX_CELL_LINES, (
                f"{path.name}: a code cell of {len(lines)} lines (at most {MAX_CELL_LINES} "
                f"outside check cells), starting {lines[0]!r}"
            )


@pytest.mark.parametrize("chapter", _chapters())
def test_notebook_links_open_the_training_view(chapter):
    """MLflow 3 opens an experiment in its GenAI view unless the link asks for the runs."""
    path, nb = _load(chapter)
    closing = [
        c for c in nb["cells"]
        if c["cell_type"] == "markdown" and "What to look at in the MLflow UI" in _source(c)
    ]  # fmt: skip
    assert closing, f"{path.name}: no 'What to look at in the MLflow UI' cell"
    assert any(UI_VIEW in _source(c) for c in closing), (
        f"{path.name}: the 'What to look at' cell has no link with ?{UI_VIEW}"
    )
    links = [
        (link, i)
        for i, c in enumerate(nb["cells"])
        for link in UI_LINK.findall(_source(c))
    ]  # fmt: skip
    bare = [f"cell {i}: {link}" for link, i in links if UI_VIEW not in link]
    assert links and not bare, f"{path.name}: UI links without ?{UI_VIEW}: {bare or 'none at all'}"


def test_glossary_defines_the_terms_the_notebooks_use():
    text = GLOSSARY.read_text().lower()
    for term in GLOSSARY_TERMS:
        assert f"**{term}" in text, f"docs/glossary.md does not define {term!r}"
        entry = text.split(f"**{term}", 1)[1].split("\n\n", 1)[0]
        assert "mlflow" in entry or "`" in entry, f"glossary entry {term!r} names no call"
