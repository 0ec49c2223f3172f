"""`ht-engine bench`: latency, throughput, memory, load time and correctness of every backend, side by side with
the eager reference and `torch.compile` of it, as a console table, JSON (engine/data/bench_schema.json) and PNG."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

from ..config import ARCHS
from ..phantom import MIN_SIDE as MIN_PHANTOM_SIDE
from ..serve.perf import MAX_CONCURRENCY, PROTOCOLS
from .options import batch_size, class_count, frame_sizes, integer, real, seconds, seed

DEFAULT_ARCH = "biomedclip-vit-b16"
DEFAULT_TASK = "seg"


def _csv(kind):
    def parse(text: str) -> list:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise ValueError(f"empty {kind} list")
        return [batch_size(item) for item in items] if kind == "batch" else items

    parse.__name__ = f"comma-separated {kind}"
    return parse


def percentiles(text: str) -> list:
    """`50,90,99.9` -> `[50.0, 90.0, 99.9]`, each in (0, 100]."""
    parse = real(0.0, 100.0, "percentile", low_open=True)
    values = [parse(item.strip()) for item in text.split(",") if item.strip()]
    if not values:
        raise argparse.ArgumentTypeError("empty percentile list; expected e.g. 50,90,95,99")
    return values


percentiles.__name__ = "comma-separated percentiles"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="benchmark every backend x precision x batch against the eager and compiled reference",
        description="Measure latency (min/mean/max and the --percentiles), throughput, peak memory, first-load "
                    "time, FLOP rate and max error to the reference for each backend x precision x batch, next to "
                    "the eager reference and torch.compile(reference) in the same process. Timed runs per case "
                    "follow trtexec and perf_analyzer: --warmup seconds untimed, then at least --iterations runs "
                    "and at least --duration seconds, whichever is longer. On a GPU, TensorRT and ONNX Runtime "
                    "(CUDA provider) artifacts are also split into H2D / GPU Compute / D2H per run, trtexec's Host "
                    "Latency and GPU Compute columns. Defaults finish in about 2-3 minutes on a 2-core CPU.")
    parser.add_argument("artifact", nargs="?", type=Path,
                        help=".htpkg package or built artifact directory (default: a seeded random package of "
                             "--arch/--task)")
    parser.add_argument("--arch", choices=sorted(ARCHS), default=None,
                        help=f"benchmark a seeded random package of this arch (default {DEFAULT_ARCH})")
    parser.add_argument("--task", choices=("seg", "cls"), default=None, help=f"with --arch (default {DEFAULT_TASK})")
    parser.add_argument("--num-classes", type=class_count, default=2, help="with --arch (default %(default)s)")
    parser.add_argument("--filter", dest="filter_kind", choices=("channel", "spectral"), default="channel",
                        help="with --arch: the adapters' frequency filter (default %(default)s)")
    parser.add_argument("--package", type=Path, default=None,
                        help="for an artifact source: the package it was built from (baselines, correctness)")
    parser.add_argument("--backends", type=_csv("backend"), default=None,
                        help="comma-separated backends (default: every registered backend; those that cannot run "
                             "on --device are listed as unsupported)")
    parser.add_argument("--precisions", type=_csv("precision"), default="fp32",
                        help="comma-separated precisions tried on every backend, e.g. fp32,bf16,fp16,int8 "
                             "(default %(default)s); a backend that lacks one reports it as unsupported")
    parser.add_argument("--batch", type=_csv("batch"), default="1",
                        help="comma-separated batch sizes (default %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default %(default)s)")
    parser.add_argument("--frames", type=frame_sizes, default=None, metavar="HxW[,HxW...]",
                        help="also measure each case end to end at these frame sizes: uint8 frames in, masks or "
                             "probabilities out (decode excluded), split into pre / infer / post")
    parser.add_argument("--iterations", type=integer(1, 1_000_000, "a run count"), default=3,
                        help="timed runs per case at least (trtexec --iterations; default %(default)s)")
    parser.add_argument("--duration", type=seconds, default=2.0,
                        help="seconds of timed runs per case at least (trtexec --duration); with --iterations, "
                             "whichever takes longer (default %(default)s)")
    parser.add_argument("--warmup", type=seconds, default=0.2,
                        help="seconds of untimed runs per case before the timed ones, at least one run (trtexec "
                             "--warmUp, in seconds here; default %(default)s)")
    parser.add_argument("--percentiles", type=percentiles, default="50,90,95,99",
                        help="comma-separated latency percentiles in (0, 100] the report and the table show, next "
                             "to min/mean/max (trtexec --percentile; default %(default)s); a percentile p from "
                             "fewer than 10 / (1 - p/100) timed runs is flagged")
    parser.add_argument("--no-compile", dest="compiled_baseline", action="store_false",
                        help="skip the torch.compile(reference) baseline")
    parser.add_argument("--no-anchor", dest="anchor", action="store_false",
                        help="skip the OpenVINO-on-the-reference-model baseline (CPU; f32, and bf16 where the CPU "
                             "has bf16 units)")
    parser.add_argument("--interleave", action="store_true",
                        help="keep every backend loaded and time each batch's cases round-robin, one call of each "
                             "per round, so that load changes on a shared machine reach all alike (ratios between "
                             "backends then compare runs made at the same time; peak memory is not measured)")
    parser.add_argument("--time-limit", type=real(0.0, 86400.0, "duration (s)"), default=120.0,
                        help="seconds after which backends not yet loaded (and further batch sizes) are reported "
                             "as skipped, so that the defaults end in about 3 minutes (default %(default)s; "
                             "0: no limit)")
    # Three float32 n x n matrices: 16384 is 3 GiB, more than any cache-relevant size needs.
    parser.add_argument("--gemm-size", type=integer(1, 16384, "a matrix side"), default=None,
                        help="side of the square matmul that measures the GEMM peak (default 1024 CPU, 4096 GPU)")
    parser.add_argument("--seed", type=seed, default=0,
                        help="seed of the inputs (and of a generated package) (default %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    parser.add_argument("--export-times", type=Path, default=None, metavar="FILE",
                        help="write every timed sample here as JSON: per case its latencies in ms and the timer, "
                             "and [H2D, compute, D2H] per run where the case has the GPU split (trtexec "
                             "--exportTimes)")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="write the table as a Markdown section (machine, command, results) here")
    parser.add_argument("--plot", type=Path, default=None,
                        help="write latency distributions and throughput vs batch here (PNG; needs matplotlib)")
    serve = parser.add_argument_group(
        "a running server", "With --serve, measure a Triton Inference Server someone started (`ht-engine serve`) "
        "with Triton's perf_analyzer instead of the backends: one bounded run per --concurrency level, real phantom "
        "frames, --json for the report; the equivalent perf_analyzer command lines are printed.")
    serve.add_argument("--serve", metavar="HOST:PORT", default=None,
                       help="the server's HTTP or gRPC endpoint (as --protocol says), as `ht-engine serve` prints it")
    serve.add_argument("--protocol", choices=PROTOCOLS, default="http",
                       help="with --serve: the endpoint's protocol (default: %(default)s)")
    serve.add_argument("--concurrency", type=_concurrencies, default="1,4,16",
                       help="with --serve: comma-separated counts of requests kept in flight, one run each "
                            "(default: %(default)s)")
    serve.add_argument("--requests", type=integer(1, 10_000_000, "a request count"), default=128,
                       help="with --serve: requests per concurrency level, at least the highest level; 8x the "
                            "level or more keeps infer/s within a few %% (default: %(default)s)")
    serve.add_argument("--warmup-requests", type=integer(0, 10_000_000, "a request count"), default=16,
                       help="with --serve: untimed requests at the highest concurrency first (default: %(default)s)")
    serve.add_argument("--frame-size", type=_phantom_size, default="480x640", metavar="HxW",
                       help="with --serve: the gray phantom frames sent, one per request (default: %(default)s); a "
                            "frame artifact's server takes its own size only")
    serve.add_argument("--run-timeout", type=real(0.0, 86400.0, "duration (s)", low_open=True), default=600.0,
                       help="with --serve: seconds after which one perf_analyzer run is stopped, an error "
                            "(default: %(default)s)")
    parser.set_defaults(handler=run)


def _concurrencies(text: str) -> list:
    parse = integer(1, MAX_CONCURRENCY, "a concurrency")
    values = [parse(item.strip()) for item in text.split(",") if item.strip()]
    if not values:
        raise argparse.ArgumentTypeError("empty concurrency list; expected e.g. 1,4,16")
    return values


_concurrencies.__name__ = "comma-separated concurrencies"


def _phantom_size(text: str) -> tuple:
    sizes = frame_sizes(text)
    if len(sizes) != 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give one frame size HxW, e.g. 480x640")
    if min(sizes[0]) < MIN_PHANTOM_SIDE:
        raise argparse.ArgumentTypeError(f"{text!r}: phantom frames are at least {MIN_PHANTOM_SIDE}x"
                                         f"{MIN_PHANTOM_SIDE} pixels")
    return sizes[0]


_phantom_size.__name__ = "frame size"


def _generated_package(args, directory: Path) -> Path:
    from ..config import ModelConfig
    from ..package import save_package
    from ..weights import random_package_tensors

    arch, task = args.arch or DEFAULT_ARCH, args.task or DEFAULT_TASK
    config = ModelConfig.for_arch(arch, task, args.num_classes, filter_kind=args.filter_kind)
    path = directory / f"{arch}-{task}-seed{args.seed}.htpkg"
    # Output-bias calibration (~1 s) splits the pixels between the classes, so that the masks column says something.
    save_package(path, config, random_package_tensors(config, args.seed, calibrate=True))
    return path


# What only the backends' benchmark reads (each is None unless given): with --serve, giving one is an error.
MODEL_BENCH_OPTIONS = {"artifact": "ARTIFACT", "arch": "--arch", "task": "--task", "package": "--package",
                       "backends": "--backends", "frames": "--frames", "export_times": "--export-times",
                       "markdown": "--markdown", "plot": "--plot"}


def run_serve(args) -> int:
    """`bench --serve HOST:PORT`: perf_analyzer against a running server, a table, the commands, --json."""
    from ..bench.serving import format_serve_table, serve_report
    from ..errors import InputError
    from ..fileio import atomic_write, check_output_file
    from ..serve.perf import LoadPlan, PerfAnalyzer, cached_input_path, measure, phantom_frames

    given = [option for dest, option in MODEL_BENCH_OPTIONS.items() if getattr(args, dest) is not None]
    if given:
        raise InputError(f"{', '.join(given)} measure the backends in this process; --serve measures a running "
                         f"server: leave them out")
    if args.json is not None:
        check_output_file(args.json, "--json")
    command = "ht-engine " + " ".join(shlex.quote(arg) for arg in sys.argv[1:]) if sys.argv[1:] else None
    plan = LoadPlan(args.serve, args.protocol, tuple(args.concurrency), args.requests, args.warmup_requests,
                    args.run_timeout)
    plan.validate()
    analyzer = PerfAnalyzer.load()
    print(f"perf_analyzer {analyzer.version} ({analyzer.binary}"
          f"{'' if analyzer.library_dir is None else f'; libraries linked from {analyzer.library_dir}'})", flush=True)
    height, width = args.frame_size
    frames = phantom_frames(height, width, seed=args.seed)
    run = measure(plan, frames, cached_input_path(height, width, len(frames), args.seed), analyzer,
                  progress=lambda message: print(message, flush=True))
    report = serve_report(run, command)
    model = run.server["model"]
    batching = model["dynamic_batching"]
    batcher = "off" if batching is None else f"on (queue delay {batching['max_queue_delay_us']} us)"
    print()
    print(f"model {model['name']} at {plan.url} ({plan.protocol}, Triton {run.server['triton_version']}): max batch "
          f"{model['max_batch_size']}, dynamic batching {batcher}, "
          f"{model['instances']} instance(s); {plan.requests} requests of one {height}x{width} gray phantom frame "
          f"per level; client {report['machine']['cpu']['model']}, {report['machine']['date']}")
    print(format_serve_table(report["levels"]))
    print("infer/s: concurrency / mean latency (perf_analyzer's own figure, counted over whole seconds, is in the "
          "JSON as reported_infer_s); server times are means per request")
    print("the same runs with perf_analyzer itself:")
    for line in run.commands:
        print(f"  {line}")
    if args.json is not None:
        text = json.dumps(report, indent=2, allow_nan=False) + "\n"
        atomic_write(args.json, lambda tmp: tmp.write_text(text))
        print(f"report: {args.json}")
    return 0


def run(args) -> int:
    if args.serve is not None:
        return run_serve(args)
    from ..bench import BenchOptions, format_header, format_table, run_bench, validate_report, write_json, write_plot
    from ..bench.report import ReportError, format_frames_table, format_markdown, write_times
    from ..errors import InputError
    from ..fileio import check_output_file

    for option, path in (("--json", args.json), ("--export-times", args.export_times), ("--markdown", args.markdown),
                         ("--plot", args.plot)):
        if path is not None:
            check_output_file(path, option)
    if args.artifact is not None and (args.arch or args.task):
        raise InputError("give either ARTIFACT or --arch/--task (a generated package), not both")
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ReportError("--plot needs matplotlib, which is not installed: pip install 'ht-engine[bench]' "
                              "(or drop --plot)") from None
    command = "ht-engine " + " ".join(shlex.quote(arg) for arg in sys.argv[1:]) if sys.argv[1:] else None
    with tempfile.TemporaryDirectory(prefix="ht-bench-") as scratch:
        source = args.artifact
        if source is None:
            print(f"writing a seeded random {args.arch or DEFAULT_ARCH} {args.task or DEFAULT_TASK} package",
                  flush=True)
            source = _generated_package(args, Path(scratch))
        options = BenchOptions(source=source, package=args.package, backends=args.backends,
                               precisions=args.precisions, batches=args.batch, device=args.device,
                               duration_s=args.duration, iterations=args.iterations, warmup_s=args.warmup,
                               percentiles=args.percentiles, compiled_baseline=args.compiled_baseline,
                               anchor=args.anchor, seed=args.seed, gemm_size=args.gemm_size, time_limit_s=args.time_limit or None,
                               frames=args.frames or [], interleave=args.interleave)
        report = run_bench(options, progress=lambda message: print(message, flush=True), command=command)
    print()
    print(format_header(report))
    print(format_table(report))
    frames_table = format_frames_table(report)
    if frames_table:
        print()
        print(frames_table)
    print(f"done in {report['wall_s']:.0f} s")
    if args.json is not None:
        try:
            validate_report(report)
        except ReportError as exc:
            if "needs jsonschema" not in str(exc):
                raise
            print(f"note: {exc}; writing the report unvalidated", file=sys.stderr)
        write_json(report, args.json)
        print(f"report: {args.json}")
    if args.export_times is not None:
        write_times(report, args.export_times)
        print(f"times: {args.export_times}")
    if args.markdown is not None:
        from ..fileio import atomic_write

        text = format_markdown(report)
        atomic_write(args.markdown, lambda tmp: tmp.write_text(text))
        print(f"markdown: {args.markdown}")
    if args.plot is not None:
        write_plot(report, args.plot)
        print(f"plot: {args.plot}")
    return 0
