"""``python -m benchmarks.gpu``: the whole run (what it measures: benchmarks/gpu/__init__.py)."""

from benchmarks.gpu.main import main

main()
