"""`ht-engine serve`: a package or artifact behind a real Triton Inference Server (raw frames in, masks out)."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from .options import integer
from .predict import add_load_options

PORT = integer(0, 65535, "a TCP port (0: a free one)")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve a package/artifact on Triton Inference Server (HTTP, gRPC, metrics)",
        description="Serve model `ht` on a Triton Inference Server started here: input `frames` (uint8 [n,H,W] gray "
                    "or [n,H,W,3] RGB, any size; a frame artifact's own size), output `mask` (uint8 [n,H,W]) or "
                    "`probabilities` (float32 [n,C]). SIGINT/SIGTERM finish the requests in flight, then stop.")
    parser.add_argument("artifact", type=Path, help=".htpkg package or built artifact directory")
    add_load_options(parser)
    parser.add_argument("--address", default="127.0.0.1",
                        help="address every endpoint listens on (0.0.0.0: all interfaces; default: %(default)s)")
    parser.add_argument("--http-port", type=PORT, default=8000, help="HTTP/REST port (default: %(default)s)")
    parser.add_argument("--grpc-port", type=PORT, default=8001, help="gRPC port (default: %(default)s)")
    parser.add_argument("--metrics-port", type=PORT, default=8002,
                        help="Prometheus metrics port, /metrics (default: %(default)s)")
    parser.add_argument("--max-batch", type=integer(1, 8192, "a batch size"), default=8,
                        help="largest batch of frames one model call takes (default: %(default)s)")
    parser.add_argument("--max-queue-delay-us", type=integer(0, 10_000_000, "a delay in microseconds"), default=500,
                        help="how long the dynamic batcher waits to fill a batch (default: %(default)s)")
    parser.add_argument("--no-dynamic-batching", dest="dynamic_batching", action="store_false",
                        help="run every request alone (default: dynamic batching on)")
    parser.add_argument("--instances", type=integer(1, 64, "an instance count"), default=1,
                        help="model instances (processes), each with its own copy of the model (default: %(default)s)")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=None,
                        help="frames clients send: 1 gray [n,H,W], 3 RGB [n,H,W,3] (default: a frame artifact's "
                             "own, else 1)")
    parser.add_argument("--exit-timeout", type=integer(0, 3600, "seconds"), default=30,
                        help="on SIGINT/SIGTERM, how long requests in flight may take to finish (default: %(default)s)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from ..errors import ServeError
    from ..serve import Batching, Ports, TritonServer, describe

    model = describe(args.artifact, args.channels)
    batching = Batching(args.max_batch, args.max_queue_delay_us if args.dynamic_batching else None, args.instances)
    runtime = {"backend": args.backend, "device": args.device, "precision": args.precision}
    server = TritonServer(model, batching, runtime, args.address, Ports(args.http_port, args.grpc_port,
                                                                        args.metrics_port), args.exit_timeout)
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"starting Triton Inference Server for {model.source} ({model.task}, classes "
              f"{', '.join(model.classes)})", file=sys.stderr, flush=True)
        server.start(stop)
        if stop.is_set():
            return 0
        print(f"serving model ht: http {server.http_url}, grpc {server.grpc_url}, metrics {server.metrics_url} "
              f"(input frames uint8 {model.input_spec()['shape']}, output {model.output_name}); "
              f"Ctrl-C or SIGTERM stops", flush=True)
        while not stop.is_set():
            if server.wait(0.5) is not None:
                raise ServeError(f"Triton Inference Server exited on its own (code {server.process.returncode}); "
                                 f"the end of its log:\n{server.log_tail()}")
        print("draining: finishing the requests in flight, then stopping", file=sys.stderr, flush=True)
        code = server.stop()
        print(f"stopped (server exit code {code})", file=sys.stderr, flush=True)
        return 0
    finally:
        server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
