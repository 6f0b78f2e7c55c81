"""Sweeps and their reports: train methods x data sizes x seeds, then tables and plots.

- `results`: one JSON line per finished run (what `dsbs report` and a resumed sweep read).
- `scoring`: a student's direct answer and its rationale-then-answer output, scored on gold.
- `tables`: mean and standard error over seeds, as markdown.
- `plots`: accuracy against training examples, one line per method (PNG, matplotlib Agg).
- `sweep`: the runner (`dsbs sweep`); `builtin_data`: the quickstart's data stage.
"""
