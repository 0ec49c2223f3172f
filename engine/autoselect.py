"""`backend="auto"`: the fastest usable backend and precision for a model on a device, measured once per machine.

Which backend wins depends on the machine (bf16 units or not, core count, the installed runtimes) and on the model
(its width and depth), not on anything a table written in advance could know. So the candidates that can run here
are each loaded and timed briefly (`REPEATS` forwards of one synthetic batch after a warm-up), and the winner is
cached as `{machine key: {model key: choice}}` in `auto_backend.json` under the engine's cache root, written
atomically; the next load of a model of the same shape on the same machine reads the choice without measuring.

`backend="auto"` keeps the precision asked for (`fp32`: the fastest fp32 backend); `precision="auto"` also lets it
pick a lower one (bf16 where the CPU has bf16 units; int8 is never picked: its error bound is another product
decision). Runners are loaded by the caller's `load(backend, precision)` (the runtime's, which builds temporary
artifacts); this module only decides.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .backends import available_backends
from .cpuinfo import cpu_model
from .errors import BackendError, PackageError
from .export.openvino import cpu_has_bf16
from .fileio import atomic_write
from .settings import cache_root
from .version import __version__

LOG = logging.getLogger("engine.autoselect")
CACHE_FILE = "auto_backend.json"
REPEATS = 3
# Candidates per device kind, in order of preference on a tie.
CANDIDATES = {
    "cpu": (("optimized", "fp32"), ("openvino", "fp32"), ("onnx", "fp32"), ("optimized", "bf16"),
            ("openvino", "bf16")),
    "cuda": (("optimized", "fp32"), ("tensorrt", "fp16"), ("optimized", "bf16"), ("optimized", "fp16")),
}


@dataclass
class Choice:
    """What `auto` picked, the table it picked from (median ms per `backend/precision`, or the reason a candidate
    could not run) and whether it was measured now or read from the cache. `runner` is the measured winner's, kept
    so the caller need not load it twice (None on a cache hit)."""

    backend: str
    precision: str
    table: dict
    measured: bool
    runner: object = field(default=None, repr=False)

    def record(self) -> dict:
        return {"backend": self.backend, "precision": self.precision, "measured_now": self.measured,
                "table_ms": dict(self.table)}


def machine_key(device: str) -> str:
    """What a measured choice depends on besides the model: the CPU, its cores, the device, the engine version and the
    backends installed."""
    return (f"{platform.machine()}|{cpu_model()}|{os.cpu_count()} cpus|{device}|ht-engine {__version__}|"
            f"{','.join(available_backends(device))}")


def model_key(config, precision: str) -> str:
    return (f"{config.arch}|{config.task}|{config.num_classes} classes|{config.image_size}px|width {config.width}|"
            f"{config.layers} layers|precision {precision}")


def candidates(device: str, precision: str) -> list:
    """(backend, precision) pairs worth measuring on `device` for the requested precision (`auto`: any of them)."""
    kind = "cuda" if device.startswith("cuda") else device
    if kind not in CANDIDATES:
        raise BackendError(f"backend 'auto' chooses on 'cpu' or 'cuda[:N]', got device {device!r}")
    usable = set(available_backends(device))
    chosen = [(name, prec) for name, prec in CANDIDATES[kind]
              if name in usable and precision in ("auto", prec)
              and not (prec == "bf16" and kind == "cpu" and not cpu_has_bf16())]
    if not chosen:
        raise BackendError(f"backend 'auto' has no candidate for precision {precision!r} on {device!r} (backends "
                           f"usable here: {sorted(usable)}); ask for a backend and precision explicitly")
    return chosen


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        LOG.warning("ignoring the unreadable auto-backend cache %s (it will be rewritten)", path)
        return {}
    return data if isinstance(data, dict) else {}


def time_runner(runner, batch: np.ndarray, repeats: int = REPEATS, clock=time.perf_counter) -> float:
    """Median milliseconds of `repeats` forwards of `batch` on `runner`, after one warm-up forward."""
    call = runner.run
    if runner.uses_torch:
        import torch

        batch = torch.from_numpy(batch).to(runner.device)
        if runner.device.startswith("cuda"):
            def call(x):  # CUDA runs asynchronously: time to the end of the work, not of the launch
                out = runner.run(x)
                torch.cuda.synchronize(runner.device)
                return out
    call(batch)
    times = []
    for _ in range(repeats):
        start = clock()
        call(batch)
        times.append((clock() - start) * 1e3)
    return statistics.median(times)


def choose(config, device: str, precision: str, load: Callable, *, cache: Path | None = None,
           timer: Callable = time_runner) -> Choice:
    """The fastest candidate for a model of `config` on `device`: from the cache, or measured now (then cached).
    `load(backend, precision)` returns a Runner; `timer(runner, batch)` its median ms."""
    path = Path(cache) if cache is not None else cache_root() / CACHE_FILE
    machine, model = machine_key(device), model_key(config, precision)
    cached = _read_cache(path).get(machine, {}).get(model)
    if isinstance(cached, dict) and {"backend", "precision", "table_ms"} <= set(cached):
        LOG.info("backend auto: %s/%s (cached for this machine in %s)", cached["backend"], cached["precision"], path)
        return Choice(cached["backend"], cached["precision"], cached["table_ms"], measured=False)
    size = config.image_size
    batch = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    table, best = {}, None
    for name, prec in candidates(device, precision):
        try:
            runner = load(name, prec)
            elapsed = timer(runner, batch)
        except (BackendError, PackageError, ImportError, RuntimeError) as exc:
            table[f"{name}/{prec}"] = f"not usable: {exc}"
            continue
        table[f"{name}/{prec}"] = round(elapsed, 3)
        if best is None or elapsed < best[0]:
            best = (elapsed, name, prec, runner)
    if best is None:
        raise BackendError(f"backend 'auto': no candidate could run on {device!r}: {table}")
    choice = Choice(best[1], best[2], table, measured=True, runner=best[3])
    data = _read_cache(path)
    data.setdefault(machine, {})[model] = {key: value for key, value in choice.record().items()
                                           if key != "measured_now"}
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True)))
    LOG.info("backend auto: %s/%s, measured %s (cached in %s)", choice.backend, choice.precision, table, path)
    return choice
