"""Rendering a bench report: the console table, the JSON file (checked against the schema in the repo), plots."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import HTError
from .measure import percentile_key

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "data" / "bench_schema.json"

HEAD_COLUMNS = ("backend", "prec", "batch")
TAIL_COLUMNS = ("runs", "timer", "frames/s", "x eager", "x compiled", "GFLOP/s", "% GEMM", "peak MiB", "1st load s",
                "masks", "max rel err")


# trtexec's names for the host/device split (`gpu_split_ms`): its Host Latency (H2D + GPU Compute + D2H of a run)
# and GPU Compute; the columns appear when some case has the split.
SPLIT_COLUMNS = ("Host Latency ms", "GPU Compute ms")
SPLIT_TIMERS = {
    "cuda_events": "CUDA events on the runner's execution stream around each phase (the device's clock)",
    "perf_counter_ns": "the host clock around each phase, each ending in a synchronization (so GPU Compute includes "
                       "the runtime's host-side dispatch of the run: an upper bound)",
}

FRAME_COLUMNS = ("backend", "prec", "batch", "frame", "path", "e2e ms", "e2e {tail}", "pre ms", "infer ms", "post ms",
                 "x forward", "timers (e2e/pre/infer/post)")
TIMER_NAMES = {"perf_counter_ns": "host", "cuda_events": "device", None: "-"}


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def percentile_keys(report: dict) -> list:
    """The latency keys of the requested percentiles, in the order asked for ("p50_ms", "p99_ms", ...)."""
    return [percentile_key(p) for p in report["settings"]["percentiles"]]


def has_split(report: dict) -> bool:
    """Whether some case measured the host/device split (`gpu_split_ms`)."""
    return any(case["gpu_split_ms"] is not None for case in report["cases"])


def columns(report: dict) -> tuple:
    """The table's columns: min, mean, each requested percentile and max latency between the case and the rest, then
    Host Latency and GPU Compute (medians of the split) where some case has the split."""
    latency = ["min ms", "mean ms"] + [f"{key[:-3]} ms" for key in percentile_keys(report)] + ["max ms"]
    return HEAD_COLUMNS + tuple(latency) + (SPLIT_COLUMNS if has_split(report) else ()) + TAIL_COLUMNS


def split_cells(case: dict) -> list:
    """The case's Host Latency and GPU Compute medians in ms ("-" without a split)."""
    split = case["gpu_split_ms"]
    if split is None:
        return ["-", "-"]
    return [_num(split["host_latency_ms"]["median_ms"], ".3f"), _num(split["compute_ms"]["median_ms"], ".3f")]


def split_notes(report: dict) -> list:
    """What the split columns hold and where they are empty, one line per timer and per reason, naming the cases
    (backend and precision) of each; cases that were not timed are left out."""
    measured, missing = {}, {}
    for case in report["cases"]:
        if case["latency_ms"] is None:
            continue
        split = case["gpu_split_ms"]
        group = (measured.setdefault(split["timer"], []) if split is not None
                 else missing.setdefault(case["gpu_split_reason"], []))
        label = f"{case['backend']} {case['precision']}"
        if label not in group:
            group.append(label)
    lines = [f"Host Latency = H2D + GPU Compute + D2H of each run (trtexec's split; medians of a second series of "
             f"timed runs, gpu_split_ms in --json) for {', '.join(labels)}: {SPLIT_TIMERS[timer]}"
             for timer, labels in measured.items()]
    lines += [f"no Host Latency / GPU Compute split for {', '.join(labels)}: {reason}"
              for reason, labels in missing.items()]
    return lines


# A precision's masks count as the fp32 model's when they agree with the eager reference on at least this fraction of
# pixels (the CPU issue's bar for the fastest backend against OpenVINO).
MASK_AGREEMENT_BAR = 0.99


def anchor_notes(report: dict) -> list:
    """Where the backends stand against OpenVINO on the reference model, per batch: the fastest backend case (for seg,
    the fastest whose masks agree with the eager reference's on >= `MASK_AGREEMENT_BAR` of the pixels) and the
    fastest fp32 one, each over the anchor at bf16 and f32 (<1: faster), and a line where the anchor's own masks
    miss the bar (bf16 rounding alone then moves pixels across this model's decision boundary, so the bar says more
    about the model than about a backend); empty where no anchor ran."""
    lines = []
    anchors = [case for case in report["cases"] if case["role"] == "anchor" and case["status"] == "ok"]
    for batch in sorted({case["batch"] for case in anchors}):
        for case in anchors:
            agreement = case.get("mask_agreement")
            if case["batch"] == batch and agreement is not None and agreement < MASK_AGREEMENT_BAR:
                lines.append(f"batch {batch}: the anchor itself, {case['backend']} {case['precision']}, has masks "
                             f"{agreement:.4f} < {MASK_AGREEMENT_BAR:.0%}: its rounding alone moves pixels near this "
                             f"model's decision boundary")
        timed = [case for case in report["cases"] if case["role"] == "backend" and case["status"] == "ok"
                 and case["batch"] == batch and case["time_vs_openvino_reference"]]
        agreeing = [case for case in timed
                    if case.get("mask_agreement") is None or case["mask_agreement"] >= MASK_AGREEMENT_BAR]
        seg = any(case.get("mask_agreement") is not None for case in timed)
        picks = [(f"fastest with masks >= {MASK_AGREEMENT_BAR:.0%}" if seg else "fastest",
                  min(agreeing, key=lambda c: c["latency_ms"]["median_ms"], default=None)),
                 ("fastest fp32", min((c for c in timed if c["precision"] == "fp32"),
                                      key=lambda c: c["latency_ms"]["median_ms"], default=None))]
        for what, case in picks:
            if case is None:
                continue
            ratios = ", ".join(f"{ratio:.2f}x OpenVINO(reference) {precision}"
                               for precision, ratio in case["time_vs_openvino_reference"].items())
            masks = "" if case.get("mask_agreement") is None else f", masks {case['mask_agreement']:.4f}"
            lines.append(f"batch {batch}: {what} backend {case['backend']} {case['precision']} "
                         f"{case['latency_ms']['median_ms']:.2f} ms = {ratios} (time over time; max rel. error "
                         f"{_num(case['max_rel_error'], '.1e')}{masks})")
    return lines


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table_rows(report: dict) -> list:
    rows = []
    keys = percentile_keys(report)
    split = has_split(report)
    for case in report["cases"]:
        name = case["backend"] + {"eager": " (eager)", "compiled": ""}.get(case["role"], "")
        head = [name, case["precision"], str(case["batch"])]
        if case["latency_ms"] is None:
            rows.append(head + [f"{case['status']}: {case['message']}"])
            continue
        lat = case["latency_ms"]
        peak = case["peak_memory_bytes"]
        latency = [lat["min_ms"], lat["mean_ms"]] + [lat[key] for key in keys] + [lat["max_ms"]]
        rows.append(head + [_num(value, ".2f") for value in latency] + (split_cells(case) if split else []) + [
            str(lat["runs"]), case["timer"], _num(case["throughput_fps"], ".2f"),
            _num(case["speedup_vs_eager"], ".2f"), _num(case["speedup_vs_compiled"], ".2f"),
            _num(case["gflops_per_s"], ".1f"),
            _num(None if case["gemm_fraction"] is None else 100 * case["gemm_fraction"], ".1f"),
            _num(None if peak is None else peak / 2**20, ".0f"), _num(case["first_load_s"], ".2f"),
            _num(case.get("mask_agreement"), ".4f"), _num(case["max_rel_error"], ".2e") + ("" if case["status"] == "ok" else f" ({case['message']})"),
        ])
    return rows


def format_table(report: dict) -> str:
    """The report as a fixed-width table; cases without timings show their status and why in one cell. The
    report's `warnings` follow it, one line each, then notes: what the split columns hold or why they are absent."""
    names = columns(report)
    rows = table_rows(report)
    full = [row for row in rows if len(row) == len(names)]
    widths = [max([len(c)] + [len(row[i]) for row in full]) for i, c in enumerate(names)]
    lines = ["  ".join(c.rjust(w) if i > 2 else c.ljust(w) for i, (c, w) in enumerate(zip(names, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:3])]
        rest = row[3:]
        if len(row) == len(names):
            cells += [cell.rjust(widths[3 + i]) for i, cell in enumerate(rest)]
        else:
            cells += rest
        lines.append("  ".join(cells).rstrip())
    lines += [f"warning: {warning['message']}" for warning in report["warnings"]]
    lines += [f"note: {note}" for note in split_notes(report) + anchor_notes(report)]
    if report["third_party_warnings"]:
        count = sum(entry["count"] for entry in report["third_party_warnings"])
        lines.append(f"note: {count} warnings of the libraries underneath were kept off the console "
                     f"(third_party_warnings in --json)")
    return "\n".join(lines)


def _stage(stats: dict | None, fused: bool) -> str:
    return "fused" if fused else _num(None if stats is None else stats["median_ms"], ".2f")


def frame_columns(report: dict) -> tuple:
    tail = percentile_key(max(report["settings"]["percentiles"]))[:-3]
    return tuple(column.format(tail=tail) for column in FRAME_COLUMNS)


def frame_rows(report: dict) -> list:
    """One row per case x frame size: uint8 frames in, results out (median ms and the highest requested
    percentile, "e2e p99" by default), split into pre / infer / post."""
    rows = []
    tail = percentile_key(max(report["settings"]["percentiles"]))
    for case in report["cases"]:
        for entry in case["frames"]:
            head = [case["backend"], case["precision"], str(case["batch"]), f"{entry['height']}x{entry['width']}",
                    entry["frame_path"] or "-"]
            if entry["status"] != "ok":
                rows.append(head + [f"{entry['status']}: {entry['message']}"])
                continue
            e2e, timers, fused = entry["end_to_end_ms"], entry["timers"], entry["fused_into_infer"]
            rows.append(head + [
                _num(e2e["median_ms"], ".2f"), _num(e2e[tail], ".2f"),
                _stage(entry["pre_ms"], "preprocess" in fused), _stage(entry["infer_ms"], False),
                _stage(entry["post_ms"], "postprocess" in fused), _num(entry["end_to_end_vs_forward"], ".2f"),
                "/".join(TIMER_NAMES[timers[key]] for key in ("end_to_end", "pre", "infer", "post"))])
    return rows


def format_frames_table(report: dict) -> str:
    """The frame-path rows as a fixed-width table ("" when no frame size was measured)."""
    rows = frame_rows(report)
    if not rows:
        return ""
    names = frame_columns(report)
    full = [row for row in rows if len(row) == len(names)]
    widths = [max([len(c)] + [len(row[i]) for row in full]) for i, c in enumerate(names)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(names, widths)), "  ".join("-" * w for w in widths)]
    for row in rows:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:len(FRAME_COLUMNS)])).rstrip())
    return "\n".join(lines)


def format_header(report: dict) -> str:
    machine = report["machine"]
    flops = report["flops_per_frame"]
    gemm = ", ".join(f"{k} {v['gflops']:.1f}" for k, v in report["gemm"].items())
    gpu = machine["gpu"]
    device = f"GPU {gpu['name']} (driver {gpu['driver']}, CUDA {gpu['cuda_runtime']})" if gpu else "CPU"
    model = report["model"]
    return "\n".join([
        f"ht-engine bench on {device}; CPU {machine['cpu']['model']} ({machine['cpu']['logical_cores']} logical "
        f"cores, torch {machine['libraries']['torch']}, {machine['cpu']['torch_threads']} threads), "
        f"git {str(machine['git']['sha'])[:10]}",
        f"model {model['arch']} {model['task']} ({model['package']}): {flops['pruned']['total'] / 1e9:.2f} GFLOP/frame "
        f"after the exact rewrites, {flops['reference']['total'] / 1e9:.2f} as the reference runs it",
        f"GEMM peak measured now (GFLOP/s): {gemm}; latency over timed runs after warm-up; "
        f"x eager / x compiled = speed-up vs the baseline at the same batch",
    ])


def format_markdown(report: dict) -> str:
    """A Markdown section for a README: machine, command, FLOPs, GEMM peak and the measured cases."""
    machine, model, flops = report["machine"], report["model"], report["flops_per_frame"]
    gpu = machine["gpu"]
    device = (f"{gpu['name']} (driver {gpu['driver']}, CUDA {gpu['cuda_runtime']})" if gpu
              else f"{machine['cpu']['model']}, {machine['cpu']['logical_cores']} logical cores, "
                   f"{machine['cpu']['torch_threads']} torch threads")
    gemm = ", ".join(f"{k} {v['gflops']:.0f}" for k, v in report["gemm"].items())
    tail = percentile_key(max(report["settings"]["percentiles"]))
    split = has_split(report)
    lines = [
        f"Measured {machine['date']} on {device}; torch {machine['libraries']['torch']}, git "
        f"{str(machine['git']['sha'])[:10]}{' (dirty)' if machine['git']['dirty'] else ''}, 1-minute load average "
        f"{_num(machine['cpu']['load_average_1m'], '.1f')}.",
        f"Command: `{report['command'] or 'ht-engine bench'}`. Model: {model['arch']} {model['task']}, "
        f"{flops['pruned']['total'] / 1e9:.2f} GFLOP/frame after the exact rewrites "
        f"({flops['reference']['total'] / 1e9:.2f} as the reference runs it). GEMM peak measured in the same run "
        f"(GFLOP/s): {gemm}.",
        "",
        f"| backend | precision | batch | median ms | {tail[:-3]} ms | "
        + ("Host Latency ms | GPU Compute ms | " if split else "")
        + "frames/s | × eager | × torch.compile | % GEMM peak | peak MiB | first load s | max rel. error | masks |",
        "|---|---|---:|---:|---:|" + ("---:|---:|" if split else "") + "---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case in report["cases"]:
        name = {"eager": "reference (eager)", "compiled": "torch.compile(reference)",
                "anchor": "OpenVINO(reference)"}.get(case["role"], case["backend"])
        if case["latency_ms"] is None:
            lines.append(f"| {name} | {case['precision']} | {case['batch']} | {case['status']}: "
                         f"{case['message'].replace('|', '/')} ||||||||||" + ("||" if split else ""))
            continue
        lat, peak, fraction = case["latency_ms"], case["peak_memory_bytes"], case["gemm_fraction"]
        lines.append(" | ".join([
            f"| {name}", case["precision"], str(case["batch"]), _num(lat["median_ms"], ".1f"),
            _num(lat[tail], ".1f"), *(split_cells(case) if split else []), _num(case["throughput_fps"], ".2f"),
            _num(case["speedup_vs_eager"], ".2f"),
            _num(case["speedup_vs_compiled"], ".2f"), _num(None if fraction is None else 100 * fraction, ".0f"),
            _num(None if peak is None else peak / 2**20, ".0f"), _num(case["first_load_s"], ".1f"),
            _num(case["max_rel_error"], ".1e"), _num(case.get("mask_agreement"), ".4f")]) + " |")
    lines += [""] + [note.replace("|", "/") + "." for note in split_notes(report) + anchor_notes(report)]
    rows = frame_rows(report)
    if rows:
        lines += ["", "Frame path (uint8 frames in, results out; decode excluded), median ms at each batch; "
                      "timers: host = host clock, device = CUDA events.", "",
                  "| " + " | ".join(frame_columns(report)) + " |", "|" + "---|" * 3 + "---|---|" + "---:|" * 6 + "---|"]
        for row in rows:
            cells = [cell.replace("|", "/") for cell in row]
            lines.append("| " + " | ".join(cells) + " |" * (len(FRAME_COLUMNS) - len(cells) + 1))
    return "\n".join(lines) + "\n"


def validate_report(report: dict) -> None:
    """Raise `ReportError` when `report` does not match engine/data/bench_schema.json (needs `jsonschema`)."""
    try:
        import jsonschema
    except ImportError as exc:
        raise ReportError("validating a bench report needs jsonschema (pip install 'ht-engine[bench]')") from exc
    try:
        jsonschema.validate(report, load_schema())
    except jsonschema.ValidationError as exc:
        location = "/".join(str(p) for p in exc.absolute_path) or "<root>"
        raise ReportError(f"bench report does not match its schema at {location}: {exc.message}") from exc


class ReportError(HTError):
    """A bench report cannot be validated, written or plotted."""


def write_json(report: dict, path: Path) -> None:
    from ..fileio import atomic_write

    text = json.dumps(report, indent=2, allow_nan=False) + "\n"
    atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def publish(report: dict, text: str, out: Path | None) -> int:
    """The end of a benchmark script (`benchmarks/bench_*.py`): print its rendered `text`, write `report` to `out`
    (None: a smoke run that replaces no measurement) and say where; returns the script's exit code."""
    print(text)
    if out is not None:
        write_json(report, out)
        print(f"results: {out}")
    return 0


def results_path(given: Path | None, default: Path, smoke: bool) -> Path | None:
    """Where a benchmark script writes: the `--json` given, else `default`, except for a smoke run (`smoke`:
    `--quick` and the like), which writes only where it was told to."""
    return given if given is not None else (None if smoke else default)


TIMES_SCHEMA = "ht-engine-bench-times"


def times_document(report: dict) -> dict:
    """Every timed sample of every case (`--export-times`): per case its latencies in ms and the timer that took
    them, the raw data behind the report's statistics (trtexec's --exportTimes), and where the case has the
    host/device split, its `[h2d, compute, d2h]` per run and their timer (else null)."""
    cases = []
    for case in report["cases"]:
        split = case["gpu_split_ms"]
        cases.append({"backend": case["backend"], "precision": case["precision"], "batch": case["batch"],
                      "role": case["role"], "status": case["status"], "timer": case["timer"],
                      "samples_ms": case["samples_ms"], "split_timer": None if split is None else split["timer"],
                      "split_samples_ms": None if split is None else split["samples_ms"]})
    return {"schema": TIMES_SCHEMA, "schema_version": 1, "command": report["command"], "cases": cases}


def write_times(report: dict, path: Path) -> None:
    from ..fileio import atomic_write

    text = json.dumps(times_document(report), indent=1, allow_nan=False) + "\n"
    atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def write_plot(report: dict, path: Path) -> None:
    """Two panels as PNG: the latency distribution of each measured case, and throughput against batch size."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ReportError("--plot needs matplotlib, which is not installed: pip install 'ht-engine[bench]' "
                          "(or drop --plot)") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [case for case in report["cases"] if case["samples_ms"]]
    if not measured:
        raise ReportError("no case produced timings: nothing to plot")
    figure, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    labels = [f"{c['backend']}\n{c['precision']} b{c['batch']}" for c in measured]
    left.boxplot([c["samples_ms"] for c in measured], showfliers=True, whis=(1, 99))
    left.set_xticks(range(1, len(labels) + 1), labels, rotation=45, ha="right", fontsize=8)
    left.set_yscale("log")
    left.set_ylabel("latency per batch (ms, log scale)")
    left.set_title("latency distribution (box: quartiles, whiskers: p1-p99)")
    series = {}
    for case in measured:
        series.setdefault(f"{case['backend']} {case['precision']}", []).append((case["batch"],
                                                                                case["throughput_fps"]))
    for name, points in series.items():
        points.sort()
        right.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    right.set_xscale("log", base=2)
    right.set_xlabel("batch size")
    right.set_ylabel("throughput (frames/s)")
    right.set_title("throughput vs batch")
    right.legend(fontsize=8)
    gpu = report["machine"]["gpu"]
    device = gpu["name"] if gpu else report["machine"]["cpu"]["model"]
    figure.suptitle(f"ht-engine bench: {report['model']['arch']} {report['model']['task']} on {device}")
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
