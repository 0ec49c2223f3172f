"""`ht-engine serve`: the model behind a real Triton Inference Server (raw frames in, masks or probabilities out),
and `ht-engine bench --serve`: Triton's own load generator (perf_analyzer) against a running server."""

from .repository import INPUT_NAME, MODEL_NAME, OUTPUT_NAMES, Batching, ServedModel, config_pbtxt, describe
from .server import Ports, TritonServer

__all__ = ["INPUT_NAME", "MODEL_NAME", "OUTPUT_NAMES", "Batching", "Ports", "ServedModel", "TritonServer",
           "config_pbtxt", "describe"]
