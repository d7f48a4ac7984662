"""Benchmarks: the article's plain-MLflow pattern and the workbench's, side by side.

Each ``bench/bench_*.py`` module defines ``run() -> list[Result]``; ``python -m bench``
(``make bench``) runs them all, or those named on the command line, and writes
BENCHMARKS.md. Targets are checked here, never by timed assertions in tests.
"""
