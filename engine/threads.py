"""The engine's thread budget: one pool per process does the heavy work, the others do not spin against it.

The inference pool (torch's OpenMP threads, ONNX Runtime's intra-op threads) gets the cores. numpy's own BLAS
pool (OpenBLAS in numpy's wheels) only runs the frame path's small matrix products; left at one thread per core,
its threads busy-wait after each product and take the cores from the next forward (measured on a 2-core CPU:
`predict` 2.35× `forward` with the default pool, 1.17× with one BLAS thread). So when a Predictor loads, numpy's
OpenBLAS is held to one thread for the process (`limit_numpy_blas`); torch's and ONNX Runtime's pools are left as
they are. The limit is process-wide on purpose: a scoped limit would be undone by whichever thread of a stream
leaves its scope first.
"""

from __future__ import annotations

import threading

_LOCK = threading.Lock()
_LIMITED = False


def limit_numpy_blas() -> None:
    """Hold numpy's OpenBLAS pool to one thread (once per process; a no-op where threadpoolctl or OpenBLAS is
    absent). torch's MKL/OpenMP pools are not touched."""
    global _LIMITED
    with _LOCK:
        if _LIMITED:
            return
        _LIMITED = True
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            return
        # Selected by internal API: a `threadpool_limits` dict keyed "openblas" matches no library (its keys are
        # user APIs, where "blas" would take torch's MKL too, or file prefixes, which differ between numpy wheels).
        ThreadpoolController().select(internal_api="openblas").limit(limits=1)


def budget() -> dict:
    """The pools as they are now (for provenance records and bench reports)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {}
    return {f"{info['internal_api']}:{info['prefix']}": info["num_threads"] for info in threadpool_info()}
