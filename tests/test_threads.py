"""The thread budget (`engine.threads`): numpy's OpenBLAS held to one thread, torch's inference pool left alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.threads import budget, limit_numpy_blas

threadpoolctl = pytest.importorskip("threadpoolctl", reason="the thread budget is applied through threadpoolctl")


def test_numpy_openblas_is_held_to_one_thread_and_torch_keeps_its_pool():
    torch_threads = torch.get_num_threads()
    limit_numpy_blas()
    np.ones((64, 64), dtype=np.float32) @ np.ones((64, 64), dtype=np.float32)  # OpenBLAS loaded and used
    pools = threadpoolctl.threadpool_info()
    openblas = [pool for pool in pools if pool["internal_api"] == "openblas"]
    if not openblas:
        pytest.skip("this numpy is not built on OpenBLAS: nothing to limit")
    assert all(pool["num_threads"] == 1 for pool in openblas), openblas
    assert torch.get_num_threads() == torch_threads
    assert all(threads == 1 for key, threads in budget().items() if key.startswith("openblas:"))
