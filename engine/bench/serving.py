"""The report of a load test of a running server (`ht-engine bench --serve`, benchmarks/bench_serve.py): the
perf_analyzer results of `engine.serve.perf` with the machine, the versions and the commands, as JSON and a table."""

from __future__ import annotations

from ..version import __version__
from .machine import host_info, library_versions

# The distributions whose versions a load test depends on (missing ones are recorded as null).
SERVE_LIBRARIES = ("tritonclient", "nvidia-pytriton", "numpy")


def serve_library_versions() -> dict:
    return library_versions(SERVE_LIBRARIES)


def serve_report(run, command: str | None = None) -> dict:
    """A `engine.serve.perf.PerfRun` as the JSON report: engine version, machine (the client's: CPU model, cores,
    date, git commit), library versions, perf_analyzer's version and the command lines, then the levels."""
    return {"benchmark": "serve", "engine_version": __version__, "command": command, "machine": host_info(),
            "libraries": serve_library_versions(), **run.to_dict()}


def format_serve_table(levels: list, markdown: bool = False, label: tuple | None = None) -> str:
    """One line per concurrency level (`PerfLevel.to_dict()` rows): throughput, client p50/p90/p99 and the server's
    mean queue and compute time per request (compute = input + infer + output), all in ms. `label` = (header, one
    value per row) puts a first column in front (e.g. which server configuration)."""
    header = ["concurrency", "infer/s", "p50 ms", "p90 ms", "p99 ms", "queue ms", "compute ms",
              "(in / infer / out)"]
    rows = [[str(level["concurrency"]), f"{level['throughput_infer_s']:.1f}", f"{level['p50_ms']:.1f}",
             f"{level['p90_ms']:.1f}", f"{level['p99_ms']:.1f}", f"{level['queue_ms']:.1f}",
             f"{level['compute_ms']:.1f}",
             f"{level['compute_input_ms']:.2f} / {level['compute_infer_ms']:.1f} / {level['compute_output_ms']:.2f}"]
            for level in levels]
    if label is not None:
        header = [label[0], *header]
        rows = [[str(value), *row] for value, row in zip(label[1], rows, strict=True)]
    if markdown:
        aligns = ["---"] * (label is not None) + ["---:"] * (len(header) - (label is not None))
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(aligns) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in [header, *rows])
