"""HT inference engine: run Hybrid Tuning ultrasound models fast and faithfully.

`from engine import Predictor, available_backends`. Importing this package does not import torch.
"""

from .backends import available_backends
from .errors import BackendError, CheckpointError, ConfigError, HTError, InputError, PackageError
from .runtime import Predictor
from .version import __version__

__all__ = [
    "BackendError", "CheckpointError", "ConfigError", "HTError", "InputError", "PackageError", "Predictor",
    "__version__", "available_backends",
]
