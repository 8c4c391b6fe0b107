"""The pieces of ``benchmarks.recipe_check``: the reduced scale, each side's fit, the diagnostics, the statistics."""
