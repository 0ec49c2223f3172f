"""HT inference engine: run Hybrid Tuning ultrasound models fast and faithfully.

`from engine import Predictor, available_backends`. Importing this package does not import torch.
"""

from .backends import available_backends
from .errors import BackendError, CheckpointError, ConfigError, HTError, InputError, PackageError
from .runtime import Predictor

__all__ = [
    "BackendError", "CheckpointError", "ConfigError", "HTError", "InputError", "PackageError", "Predictor",
    "available_backends",
]
__version__ = "0.1.0"
