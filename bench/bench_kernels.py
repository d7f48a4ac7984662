"""Batches on kernels forked from a pre-imported template, against plain papermill.

1. A batch of 8 short notebooks that import mlflow, pandas, scikit-learn and matplotlib, fit a
   small model and log one metric: ``workbench batch --jobs 2`` (the workers fork their
   kernels from one template that imported all that once) against plain ``papermill`` run
   8 times one after another (a fresh kernel and its imports each time).
2. 16 trivial notebooks, the same two ways.
3. The amortized per-notebook overhead of the 16-notebook batch: its wall time minus the
   cells' own time (papermill's per-cell durations in the executed notebooks, shared by the
   2 job slots), per notebook; the baseline is the same for papermill one after another. The
   8-notebook batch's is reported in its row's notes.
4. Memory: the template's RSS, and a forked kernel's PSS and USS (psutil's
   ``memory_full_info``) against a fresh kernel's after the same imports.

Rows 1-3: median of ``ROUNDS`` rounds, each running both batches both ways in turn, with the
machine's load noted. Both sides use the same fresh store (its schema created untimed first).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import Result, temp_store

BIN = Path(sys.executable).parent
SLOTS = 2
ROUNDS = 3
HEAVY_CELLS = [
    "experiment_name: str = 'bench-kernels'  # experiment\nseed: int = 0  # seed",
    "import matplotlib.pyplot as plt\nimport mlflow\nimport pandas as pd\n"
    "from sklearn.datasets import make_classification\n"
    "from sklearn.linear_model import LogisticRegression\n\nfrom workbench import tracking",
    "X, y = make_classification(n_samples=300, n_features=8, random_state=seed)\n"
    "frame = pd.DataFrame(X)\nscore = LogisticRegression().fit(frame, y).score(frame, y)",
    "with tracking.start_run(experiment_name, algorithm='logreg'):\n"
    "    mlflow.log_metric('score', score)",
]
TRIVIAL_CELLS = ["i: int = 0  # which one", "x = 1 + 1\nprint('x is', x, 'job', i)"]
IMPORTS = (
    "import matplotlib.pyplot, mlflow, pandas, sklearn.linear_model\nfrom workbench import tracking"
)


def _write_notebook(path: Path, cells: list[str]) -> Path:
    import nbformat

    v4 = nbformat.v4
    nb = v4.new_notebook(cells=[v4.new_code_cell(c) for c in cells])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "language": "python",
        "display_name": "Python 3",
    }
    nbformat.write(nb, str(path))
    return path


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    t = time.perf_counter()
    res = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
    return elapsed


def _cell_seconds(paths: list[Path]) -> float:
    """The cells' own time in executed notebooks (papermill's per-cell durations)."""
    total = 0.0
    for path in paths:
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            total += cell.get("metadata", {}).get("papermill", {}).get("duration") or 0.0
    return total


def _papermill(nb: Path, param: str, n: int, env, tmp: Path) -> tuple[float, float]:
    """``papermill`` n times one after another: (wall seconds, cells' seconds)."""
    outs = [tmp / f"pm-{nb.stem}-{i}.ipynb" for i in range(n)]
    t = time.perf_counter()
    for i, out in enumerate(outs):
        cmd = [str(BIN / "papermill"), "--no-progress-bar", str(nb), str(out), "-p", param, str(i)]
        _run(cmd, env, tmp)
    return time.perf_counter() - t, _cell_seconds(outs)


def _batch(nb: Path, param: str, n: int, env, tmp: Path, experiment: str) -> tuple[float, float]:
    """``workbench batch --jobs 2`` over n jobs: (wall seconds, cells' seconds)."""
    spec = tmp / f"{experiment}.yaml"
    spec.write_text(
        f"notebook: {nb}\nexperiment: {experiment}\ngrid: {{{param}: {list(range(n))}}}\n"
    )
    wall = _run([str(BIN / "workbench"), "batch", str(spec), "--jobs", str(SLOTS)], env, tmp)
    reports = sorted((tmp / "runs_reports" / experiment).glob("*.ipynb"))
    if len(reports) != n:
        raise RuntimeError(f"expected {n} reports for {experiment}, found {len(reports)}")
    return wall, _cell_seconds(reports)


def _load() -> float:
    return os.getloadavg()[0]


@dataclass
class _Case:
    """One batch measured both ways, over alternating rounds."""

    name: str
    cells: list[str]
    param: str
    n: int
    ours: list[tuple[float, float]] = field(default_factory=list)  # (wall, cells' time)
    base: list[tuple[float, float]] = field(default_factory=list)

    def round(self, tmp: Path, env: dict[str, str], i: int) -> None:
        nb = _write_notebook(tmp / f"{self.name}.ipynb", self.cells)
        self.base.append(_papermill(nb, self.param, self.n, env, tmp))
        self.ours.append(_batch(nb, self.param, self.n, env, tmp, f"bench-{self.name}-{i}"))

    def wall(self) -> tuple[float, float]:
        return _median(w for w, _ in self.ours), _median(w for w, _ in self.base)

    def overhead(self) -> tuple[float, float]:
        """Per notebook: wall minus the cells' own time (ours: shared by the slots)."""
        ours = _median((w - c / SLOTS) / self.n for w, c in self.ours)
        return ours, _median((w - c) / self.n for w, c in self.base)

    def walls(self) -> str:
        ours = ", ".join(f"{w:.1f}" for w, _ in self.ours)
        return f"ours {ours} s; papermill {', '.join(f'{w:.1f}' for w, _ in self.base)} s"

    def cells_per_notebook(self) -> str:
        ours = _median(c for _, c in self.ours) / self.n
        return f"cells {ours:.2f} s a notebook (papermill {_median(c for _, c in self.base) / self.n:.2f} s)"


def _median(values) -> float:
    return statistics.median(list(values))


def _batches(tmp: Path, env: dict[str, str]) -> list[Result]:
    heavy = _Case("heavy", HEAVY_CELLS, "seed", 8)
    trivial = _Case("trivial", TRIVIAL_CELLS, "i", 16)
    nb = _write_notebook(tmp / "warm.ipynb", HEAVY_CELLS)  # the store's schema, untimed
    _run(
        [str(BIN / "papermill"), "--no-progress-bar", str(nb), str(tmp / "warm-out.ipynb")],
        env,
        tmp,
    )
    loads = [_load()]
    for i in range(ROUNDS):
        heavy.round(tmp, env, i)
        trivial.round(tmp, env, i)
        loads.append(_load())
    where = (
        f"Median of {ROUNDS} alternating rounds ({{walls}}); 1-minute load average "
        f"{', '.join(f'{x:.1f}' for x in loads)} on {os.cpu_count()} cores between rounds"
    )
    how = (
        f"`workbench batch --jobs {SLOTS}` (the workers fork their kernels from one template "
        "that imported ipykernel and what the notebooks import, with what those load at "
        "their first call, once) vs `papermill in.ipynb out.ipynb -p NAME i` one after "
        "another, command to exit; every workbench run created, reported (notebook, HTML "
        "twin, artifacts) and ended."
    )
    rows = []
    for case, label, target, goal in (
        (heavy, "batch of 8 notebooks importing mlflow, pandas, sklearn, matplotlib", 4, ">= 4x"),
        (trivial, "batch of 16 trivial notebooks", 8, ">= 8x"),
    ):
        ours, base = case.wall()
        what = (
            " Each notebook fits a logistic regression on 300 rows and logs one metric "
            f"({case.cells_per_notebook()}; amortized overhead {case.overhead()[0]:.2f} s a "
            f"notebook against papermill's {case.overhead()[1]:.2f} s, most of it the "
            "template's one-time import of mlflow, pandas, scikit-learn and matplotlib, "
            "shared by 8 notebooks only)."
            if case is heavy
            else " Each notebook prints one line."
        )
        rows.append(
            Result(
                benchmark=label,
                ours=ours,
                baseline=base,
                target=f"{goal} faster than papermill one after another",
                passed=base / ours >= target,
                detail=f"{how}{what} {where.format(walls=case.walls())}.",
            )
        )
    for case in (trivial,):
        ours, base = case.overhead()
        rows.append(
            Result(
                benchmark=f"amortized overhead a notebook, batch of {case.n} ({case.name})",
                ours=ours,
                baseline=base,
                target="<= 0.5 s a notebook",
                passed=ours <= 0.5,
                detail=(
                    f"(batch wall - cells' own time / {SLOTS} slots) / {case.n}, papermill's "
                    "per-cell durations in the executed notebooks; baseline: papermill's wall "
                    f"minus its cells' time, per notebook ({case.cells_per_notebook()}: the "
                    "forked kernels' cells skip the imports). Ours includes the command's "
                    "start, the store, each run's creation, tags, reports and ending, and the "
                    f"template's boot. {where.format(walls=case.walls())}."
                ),
            )
        )
    return rows


def _memory() -> Result:
    """PSS/USS of a forked kernel and of a fresh one, after the same imports (MB)."""
    import psutil

    from workbench.core import jupyter_compat
    from workbench.run import kernels, provisioner

    template = kernels.Template()
    try:
        template.wait_ready()
        template_rss = psutil.Process(template.pid).memory_info().rss / 2**20
        forked = asyncio.run(_kernel_memory(provisioner.forked_kernel_manager(template), 2))
        fresh = asyncio.run(_kernel_memory(jupyter_compat.fast_exit_kernel_manager(), 1))
    finally:
        template.close()
    pss, uss = forked[-1]
    fresh_pss, fresh_uss = fresh[0]
    return Result(
        benchmark="memory of a kernel with mlflow, pandas, sklearn, matplotlib loaded (PSS)",
        ours=pss,
        baseline=fresh_pss,
        target="no more than a fresh kernel",
        passed=pss <= fresh_pss,
        unit="MB",
        detail=(
            f"psutil memory_full_info after `{IMPORTS.replace(chr(10), '; ')}` ran in the kernel, two forked kernels "
            f"alive at once: template RSS {template_rss:.0f} MB (paid once per batch); each "
            f"forked kernel USS {uss:.0f} MB (its own pages), PSS {pss:.0f} MB (shared pages "
            f"split among the template and its kernels); a fresh kernel USS {fresh_uss:.0f} MB, "
            f"PSS {fresh_pss:.0f} MB."
        ),
    )


async def _kernel_memory(km_class: type, count: int) -> list[tuple[float, float]]:
    """Start ``count`` kernels, run the imports in each, measure each (PSS, USS) in MB."""
    import psutil

    started = []
    try:
        for _ in range(count):
            km = km_class(kernel_name="python3")
            await km.start_kernel(env=dict(os.environ))
            kc = km.client()
            kc.start_channels()
            await kc.wait_for_ready(timeout=300)
            await kc.execute_interactive(IMPORTS, timeout=300)
            started.append((km, kc))
        sizes = []
        for km, _ in started:
            pid = getattr(km.provisioner, "forked", None) or km.provisioner.pid
            info = psutil.Process(pid).memory_full_info()
            sizes.append((info.pss / 2**20, info.uss / 2**20))
        return sizes
    finally:
        for km, kc in started:
            kc.stop_channels()
            await km.shutdown_kernel(now=True)


def run() -> list[Result]:
    with temp_store() as uri, tempfile.TemporaryDirectory(prefix="wb-bench-kernels-") as tmp:
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "WORKBENCH_PROJECT_DIR": tmp}
        env.pop("MPLBACKEND", None)
        return [*_batches(Path(tmp), env), _memory()]


if __name__ == "__main__":
    for r in run():
        print(
            f"{r.benchmark}: ours {r.ours:.3g} {r.unit}, baseline {r.baseline:.3g} {r.unit}, "
            f"{r.ratio:.1f}x ({r.target}: {'met' if r.passed else 'NOT met'})\n  {r.detail}"
        )
