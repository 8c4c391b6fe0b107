"""``python -m benchmarks.fast_paths``: the run (what it measures: benchmarks/fast_paths/__init__.py)."""

from benchmarks.fast_paths.main import main

main()
