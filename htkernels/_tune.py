"""Launch configurations chosen by measurement on the GPU that runs them.

Which tile sizes, warp counts and kernel variants are fastest depends on the card, the dtype and the shape (the
H100 sweep of `benchmarks/gpu_check.py` spread 17-24 µs over six configurations of one kernel at batch 1, and the
best tile at batch 1 is not the best at batch 64). So the first launch of an op at a new shape times each of the
op's candidate configurations and keeps the fastest; every later launch at that shape reuses the choice.

- Times are device times: each candidate runs `GRAPH_LAUNCHES` times inside a CUDA graph, the graph is replayed
  `REPLAYS` times between CUDA events, the median counts. Python launch overhead (larger than the kernels at batch
  1) does not enter.
- Times are cold: in the forward, each GEMM's weights arrive from memory (ViT-B/16's 150 MB of bf16 weights pass
  through a 50 MB L2), so timing ten launches back to back, weights hot in L2 after the first, favours tiles that
  hide no memory latency. Each launch in the graph follows a write of twice the L2's size (`l2_flush_bytes`), and
  the same graph of flushes alone, replayed between, is subtracted (`cold_us`). `HTK_TUNE_COLD_L2=0` times hot.
- The first candidate is the launcher's default; another one replaces it only when it is `MARGIN` faster, so
  noise does not flip choices between near-equal configurations.
- A candidate that cannot launch (say, too much shared memory on a smaller card) is skipped and reported.
- Where the op gives a check (`verify`), a candidate other than the default is kept only once its output, computed
  afresh (the kernels that coordinate their programs through memory run on NaN-filled buffers), matches the
  default's (`output_mismatch`): one that does not is reported and the next fastest is tried. A check of the
  coordination the interpreter cannot exercise, not of the numerics (CI tests those against the references).
- No tuning (the default is used) when `HTK_TUNE=0`, under the Triton interpreter, for tensors not on CUDA, and
  while a CUDA graph is being captured on the current stream: the forward of `backend="optimized"` tunes in its
  warm-up runs, before it captures. An explicit `tuning=` of a launcher bypasses the tuner.
- Choices live in memory, per process (Triton caches the compiled variants on disk, so a new process re-measures
  in milliseconds; a cold cache compiles every candidate once, tens of seconds on the first forward of a new
  batch-size range). Every candidate computes the same math, but not always the same roundings: Triton variants
  differ in fp32 summation order, and where cuBLAS is a candidate (`impl="torch"`) its GEMM result is rounded to
  fp16/bf16 before the activation or residual add that the fused kernel applies in fp32. A near-tie may go either
  way, so two processes can differ in the last bits of low-precision outputs; `HTK_TUNE=0` runs the defaults
  only, the same launches every time.
"""

from __future__ import annotations

import functools
import statistics
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from . import envs
from ._triton import interpreting, launch_config
from .errors import KernelInputError
from .timing import cuda_event_ms

GRAPH_LAUNCHES = 10
REPLAYS = 5
MARGIN = 0.03


# Where a card does not report its L2 size: an H100's L2 is 50 MB.
FALLBACK_L2_BYTES = 50 * 2**20


def l2_flush_bytes(l2_bytes: int) -> int:
    """Bytes to write to evict an L2 of `l2_bytes` (0 or less: not reported): twice its size."""
    return 2 * (l2_bytes if l2_bytes > 0 else FALLBACK_L2_BYTES)


@functools.lru_cache(maxsize=None)
def _flush_buffer(index: int) -> torch.Tensor:
    l2_bytes = getattr(torch.cuda.get_device_properties(index), "L2_cache_size", 0)
    # A normal tensor even when the first tuning runs under inference_mode (the runner's warm-up): an inference
    # tensor could not be written by a later tuning outside it.
    with torch.inference_mode(False):
        return torch.empty(l2_flush_bytes(int(l2_bytes)), dtype=torch.uint8, device=f"cuda:{index}")


def cold_us(timed_ms: list, flush_ms: list, launches: int) -> float:
    """µs per launch from paired replays of the graph of `launches` (flush, launch) pairs (`timed_ms`) and of the
    graph of the flushes alone (`flush_ms`): the median difference, at least 0 (a launch hidden in the noise of
    its flush)."""
    return max(statistics.median(t - f for t, f in zip(timed_ms, flush_ms)) * 1000.0 / launches, 0.0)


def _capture(steps: list, device: torch.device) -> torch.cuda.CUDAGraph:
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=torch.cuda.Stream(device), capture_error_mode="thread_local"):
        for step in steps:
            step()
    graph.replay()
    return graph


def graph_time_us(launch: Callable[[], None], device: torch.device) -> float:
    """Median device time of one `launch()` in µs: `GRAPH_LAUNCHES` launches captured in one CUDA graph, replayed
    `REPLAYS` times; each launch after an L2 flush, whose own time is subtracted (`HTK_TUNE_COLD_L2`, see the
    module docstring). `launch` must be capturable: no host sync (allocations come from the graph's pool)."""
    with torch.cuda.device(device):
        launch()  # compiles the variant, outside the capture
        torch.cuda.synchronize()
        if not envs.HTK_TUNE_COLD_L2.get():
            graph = _capture([launch] * GRAPH_LAUNCHES, device)
            return statistics.median([cuda_event_ms(graph.replay) * 1000.0 / GRAPH_LAUNCHES for _ in range(REPLAYS)])
        buffer = _flush_buffer(torch.cuda.current_device())

        def flush():
            buffer.fill_(1)  # a write kernel (zero_ may become a memset node)

        timed = _capture([flush, launch] * GRAPH_LAUNCHES, device)
        flushes = _capture([flush] * GRAPH_LAUNCHES, device)
        pairs = [(cuda_event_ms(timed.replay), cuda_event_ms(flushes.replay)) for _ in range(REPLAYS)]
        return cold_us([t for t, _ in pairs], [f for _, f in pairs], GRAPH_LAUNCHES)


# The configuration of launchers whose candidates include torch's own ops: cuBLAS and the separate op.
TORCH_IMPL = dict(impl="torch", block_m=0, block_n=0, num_warps=0, num_stages=0)
INT32_LIMIT = 2**31


def int32_offsets(*tensors: torch.Tensor, output_elements: int = 0) -> bool:
    """Whether every element offset of these tensors, and of a contiguous output of `output_elements`, fits the
    int32 index arithmetic of the GEMM kernels."""
    return output_elements <= INT32_LIMIT and all(
        sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride())) < INT32_LIMIT
        for t in tensors if t.numel())


@functools.lru_cache(maxsize=None)
def _cuda_name(index: int) -> str:
    return f"cuda:{index} {torch.cuda.get_device_name(index)}"


@dataclass
class Choice:
    """The configuration kept for one (op, device, shape) and what every candidate measured (µs, or why not)."""

    op: str
    device: str
    key: tuple
    config: dict
    measured: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"op": self.op, "device": self.device, "key": list(self.key), "config": self.config,
                "measured": [{"config": config, **({"us": value} if isinstance(value, float) else {"error": value})}
                             for config, value in self.measured]}


def pick(default: dict, measured: list) -> dict:
    """The fastest measured configuration, the default unless another one is `MARGIN` faster than it."""
    times = [(value, config) for config, value in measured if isinstance(value, float)]
    if not times:
        return default
    best_time, best = min(times, key=lambda item: item[0])
    default_time = next((value for value, config in times if config == default), None)
    if default_time is not None and best_time > default_time * (1.0 - MARGIN):
        return default
    return best


class LaunchTuner:
    """Chooses, once per (op, device, shape key), among an op's candidate launch configurations by timing them."""

    def __init__(self, measure: Optional[Callable[[Callable[[], None], torch.device], float]] = None):
        self._measure = measure or graph_time_us
        self._choices: dict = {}
        # Re-entrant: a candidate may itself call a tuned launcher (norm_linear's default runs linear_act), whose
        # first launch, timed outside any capture, makes its own choice while this one is being made.
        self._lock = threading.RLock()

    @staticmethod
    def active(device: torch.device) -> bool:
        """Whether a launch on `device` may be tuned now (see the module docstring for when it is not)."""
        if not envs.HTK_TUNE.get():
            return False
        if device.type != "cuda" or interpreting():
            return False
        return not torch.cuda.is_current_stream_capturing()

    def choose(self, op: str, key: tuple, candidates: list, launch: Callable[[dict], None],
               device: torch.device, verify: Optional[Callable[[dict], Optional[str]]] = None) -> dict:
        """The configuration to launch `op` with: `candidates[0]` (the default) when tuning is off or there is
        nothing to choose, the remembered choice for `key`, or the fastest of `candidates`, timed now by running
        `launch(config)` (capturable: it launches kernels, allocating at most its output). `verify(config)`, where
        given, says why a candidate's output is wrong (None: it is right); the fastest that passes is kept."""
        default = candidates[0]
        name = self._device_name(device)
        found = self._choices.get((op, name, key))
        if found is not None:
            return found.config
        if len(candidates) == 1 or not self.active(device):
            return default
        with self._lock:
            found = self._choices.get((op, name, key))
            if found is not None:
                return found.config
            measured = []
            for config in candidates:
                try:
                    measured.append((config, float(self._measure(lambda config=config: launch(config), device))))
                except Exception as exc:  # noqa: BLE001 - a candidate that cannot run is reported and skipped
                    measured.append((config, f"{type(exc).__name__}: {exc}"[:300]))
            choice = Choice(op, name, key, self._verified(default, measured, verify), measured)
            self._choices[(op, name, key)] = choice
            return choice.config

    @staticmethod
    def _verified(default: dict, measured: list, verify: Optional[Callable[[dict], Optional[str]]]) -> dict:
        """`pick`'s choice among the candidates whose output `verify` accepts (the default is never checked: it is
        what the others are checked against); a rejected one's time is replaced by why it was rejected."""
        while True:
            best = pick(default, measured)
            if verify is None or best == default:
                return best
            try:
                wrong = verify(best)
                reason = None if wrong is None else f"rejected, output differs from the default's: {wrong}"
            except Exception as exc:  # noqa: BLE001 - a check that cannot run rejects its candidate
                reason = f"rejected, its output check failed: {type(exc).__name__}: {exc}"
            if reason is None:
                return best
            # The timed entry of the candidate just checked (an equal config rejected before holds a string).
            index = next(i for i, (config, value) in enumerate(measured) if config == best and isinstance(value, float))
            measured[index] = (best, reason[:300])

    def report(self) -> list:
        """Every choice made in this process, with what each candidate measured (for benchmark reports)."""
        return [choice.as_dict() for choice in self._choices.values()]

    @staticmethod
    def _device_name(device: torch.device) -> str:
        if device.type != "cuda":
            return str(device)
        return _cuda_name(device.index if device.index is not None else torch.cuda.current_device())


TUNER = LaunchTuner()


def tuned_config(op: str, key: tuple, candidates: list, launch: Callable[[dict], None], device: torch.device,
                 tuning: Optional[dict], validate: Callable[[dict], None] = lambda config: None,
                 verify: Optional[Callable[[dict], Optional[str]]] = None) -> dict:
    """The launch configuration of one launcher call: the first candidate (of the `impl` an explicit `tuning`
    names, if it names one) with the keys of `tuning` replaced (checked by `launch_config` and `validate`), else
    the tuner's choice among `candidates` (`verify` as for `LaunchTuner.choose`)."""
    if tuning is not None:
        base = next((c for c in candidates if "impl" in tuning and c.get("impl") == tuning["impl"]), candidates[0])
        config = launch_config(op, base, tuning)
        validate(config)
        return config
    return TUNER.choose(op, key, candidates, launch, device, verify)


# `output_mismatch`'s bound on |actual - expected|, as a fraction of max |expected|: far above the rounding
# differences of candidates that compute the same math (bf16: ~2⁻⁸), far below what a read of unwritten memory gives.
VERIFY_TOLERANCE = 0.05


def output_mismatch(actual: torch.Tensor, expected: torch.Tensor) -> Optional[str]:
    """Why `actual` is not `expected` (another candidate's output of the same op), or None: a different shape,
    non-finite values where `expected` has none, or an error over `VERIFY_TOLERANCE` of max |expected|."""
    if actual.shape != expected.shape:
        return f"shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    actual, expected = actual.float(), expected.float()
    finite = torch.isfinite(expected)
    stray = int((~torch.isfinite(actual) & finite).sum())
    if stray:
        return f"{stray} non-finite values where the default's are finite"
    if not bool(finite.any()):
        return None
    scale = float(expected[finite].abs().max())
    error = float((actual[finite] - expected[finite]).abs().max())
    if error > VERIFY_TOLERANCE * scale:
        return f"max |difference| {error:.3g} over {VERIFY_TOLERANCE} of max |expected| {scale:.3g}"
    return None


def check_impl(op: str, kernel: str = "triton", other: str = "torch", tiles: tuple = ()) -> Callable[[dict], None]:
    """Validator of an explicit `tuning` for launchers whose candidates are a kernel of theirs (`impl=kernel`, with
    power-of-two `block_m`, `block_n` ≥ 16, `num_warps` and the sizes named in `tiles`, and `num_stages` ≥ 1) next
    to something else (`impl=other`: torch's own ops, by default)."""
    def validate(config: dict) -> None:
        if config["impl"] not in (kernel, other):
            raise KernelInputError(f"htkernels::{op}: tuning impl={config['impl']!r}; expected {kernel!r} or "
                                   f"{other!r}")
        if config["impl"] == kernel:
            names = ("block_m", "block_n", *tiles, "num_warps")
            if any(config[n] <= 0 or config[n] & (config[n] - 1) for n in names) \
                    or min(config["block_m"], config["block_n"]) < 16 or config["num_stages"] < 1:
                raise KernelInputError(f"htkernels::{op}: tuning {config} needs power-of-two {', '.join(names)} "
                                       f"(block_m and block_n ≥ 16), and num_stages ≥ 1")
    return validate
