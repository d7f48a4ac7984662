"""Run the benchmarks and write BENCHMARKS.md: ``python -m bench [NAME ...]``."""

from __future__ import annotations

import datetime as dt
import importlib
import os
import platform
import sys
import traceback
from pathlib import Path

from bench.common import Result

ROOT = Path(__file__).resolve().parents[1]


def discover(names: list[str]) -> list[str]:
    found = sorted(p.stem for p in (ROOT / "bench").glob("bench_*.py"))
    if names:
        wanted = [n if n.startswith("bench_") else f"bench_{n}" for n in names]
        missing = sorted(set(wanted) - set(found))
        if missing:
            sys.exit(f"unknown benchmark(s): {', '.join(missing)}; known: {', '.join(found)}")
        return wanted
    return found


def render(results: dict[str, list[Result] | str]) -> str:
    import importlib.metadata as md

    lines = [
        "# Benchmarks",
        "",
        "Each row measures the workbench against the plain-MLflow pattern of the article, both",
        "in the same run on the same machine. Ratio = baseline / ours (higher is better).",
        "",
        f"Measured {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} on {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, MLflow {md.version('mlflow')}.",
        "Reproduce: `make bench` (all) or `.venv/bin/python -m bench NAME` (one module).",
        "",
        "| module | benchmark | ours | baseline | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for module, rows in results.items():
        if isinstance(rows, str):
            lines.append(f"| {module} | failed to run | | | | | no |")
            notes.append(f"- **{module}** failed: `{rows.strip().splitlines()[-1]}`")
            continue
        for r in rows:
            lines.append(
                f"| {module} | {r.benchmark} | {r.ours:.3g} {r.unit} | {r.baseline:.3g} {r.unit} | "
                f"{r.ratio:.1f}x | {r.target} | {'yes' if r.passed else '**no**'} |"
            )
            if r.detail:
                notes.append(f"- **{r.benchmark}**: {r.detail}")
    explained = ROOT / "bench" / "explained.md"  # how the measured machinery works, by hand
    extra = ["", explained.read_text().rstrip()] if explained.exists() else []
    return "\n".join([*lines, "", "## Notes", "", *notes, *extra, ""])


def main(argv: list[str]) -> int:
    """Run the named modules (default: all), keep each module's rows in bench/results/, and
    render BENCHMARKS.md from the latest rows of every module, so one module can be rerun
    on its own without losing the others' numbers."""
    import dataclasses
    import json

    cache = ROOT / "bench" / "results"
    cache.mkdir(exist_ok=True)
    for name in discover(argv):
        print(f"== {name}", flush=True)
        try:
            rows = importlib.import_module(f"bench.{name}").run()
            for r in rows:
                print(
                    f"   {r.benchmark}: ours {r.ours:.3g}{r.unit}, baseline {r.baseline:.3g}{r.unit}, "
                    f"{r.ratio:.1f}x ({r.target}: {'met' if r.passed else 'NOT met'})"
                )
            payload: object = [dataclasses.asdict(r) for r in rows]
        except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others
            payload = traceback.format_exc()
            print(payload, file=sys.stderr)
        (cache / f"{name}.json").write_text(json.dumps(payload, indent=1))
    results: dict[str, list[Result] | str] = {}
    for path in sorted(cache.glob("bench_*.json")):
        data = json.loads(path.read_text())
        results[path.stem] = data if isinstance(data, str) else [Result(**row) for row in data]
    out = ROOT / "BENCHMARKS.md"
    out.write_text(render(results))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
