"""The sections of `benchmarks/gpu_check.py`, one module each: `gemm` (the bf16 GEMM rate), `kernels` (each kernel
next to its eager and compiled reference), `block` (the three adapter kernels of one block at batch 1), `tune` (the
Triton launchers' candidate configurations) and `e2e` (the end-to-end forward next to the eager reference and
`torch.compile` of it); `common` holds what they share and `table` prints a run's JSON.

Each section module exposes `run(check)`, with `check` a `common.Check`. The modules import their dependencies at
the top, so importing one is the check that it can run here (`gpu_check.py --dry-run`).
"""
