"""Experiments: drivers that train many students through the trainer and record their results.

- `config`: a sweep's settings and its planned runs (methods x data sizes x seeds).
- `data`: what a sweep measures of the prepared data (lengths, train size, the test set).
- `scoring`: the test-set scoring hook (direct answer, and answer read from the rationale).
- `sweep`: one run = model gin + runs/sweep.gin + bindings -> `trainer.train(hooks=...)`.
- `workers`, `runner`: the runs in this process or in worker processes.
- `builtin_data`, `quickstart`: the quickstart's data stage and its budgets.

`dsbs_jax.report` turns the results these write into tables and plots.
"""
