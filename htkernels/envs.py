"""The environment variables htkernels reads, each declared once here with its type and meaning.

htkernels imports nothing from the engine, so the declaration type and the one boolean grammar live here; the
engine's own registry (`engine.settings`) reuses both and lists these next to its own variables.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

T = TypeVar("T")

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")


def parse_flag(text: str, name: str = "flag") -> bool:
    """The one boolean grammar: 1/true/yes/on and 0/false/no/off/empty (any case, surrounding spaces ignored)."""
    word = str(text).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"{name}={text!r} is not a boolean; use one of {', '.join(TRUE_WORDS + FALSE_WORDS[:-1])}")


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One environment variable: its name, how its text is read, the value when unset, and what it does."""

    name: str
    parse: Callable[[str], T]
    default: T
    doc: str

    def get(self) -> T:
        """The current value (read from the environment at each call, so a change takes effect at once)."""
        text = os.environ.get(self.name)
        if text is None:
            return self.default
        try:
            return self.parse(text)
        except ValueError as exc:
            raise ValueError(f"environment variable {self.name}={text!r} cannot be read: {exc}") from None

    def is_set(self) -> bool:
        return self.name in os.environ


class Switch:
    """A boolean setting that a block of code may force on or off (`forced`), whatever the environment says: how a
    benchmark runs one variant beside the default in one process. Forced per thread and task (a context variable)."""

    def __init__(self, setting: Setting[bool]):
        self.setting = setting
        self._forced: contextvars.ContextVar = contextvars.ContextVar(setting.name, default=None)

    @contextlib.contextmanager
    def forced(self, enabled: bool):
        token = self._forced.set(bool(enabled))
        try:
            yield
        finally:
            self._forced.reset(token)

    def get(self) -> bool:
        """The forced value inside `forced`, else the setting's."""
        forced = self._forced.get()
        return self.setting.get() if forced is None else forced


def flag(name: str, default: bool, doc: str) -> Setting[bool]:
    return Setting(name, lambda text: parse_flag(text, name), default, doc)


HTK_TUNE = flag("HTK_TUNE", True, "Time each Triton launcher's candidate configurations on the GPU at the first "
                "launch of a shape and keep the fastest (0: always launch the defaults, identical every run).")
HTK_TUNE_COLD_L2 = flag("HTK_TUNE_COLD_L2", True, "Time tuning candidates with the GPU's L2 cache flushed before "
                        "each launch, as a forward that streams ~150 MB of weights through it meets them (0: back to "
                        "back, the weights hot in L2).")
HTK_PDL = flag("HTK_PDL", False, "Launch the Triton kernels with programmatic dependent launch on Hopper or newer: "
               "each may be scheduled while its predecessor runs and waits in-kernel for its writes, so the launch "
               "gaps between consecutive kernels overlap (off until a GPU run measures it faster).")
TRITON_INTERPRET = flag("TRITON_INTERPRET", False, "Triton's own switch: run Triton kernels in its CPU interpreter "
                        "(how CI runs the real kernels without a GPU). Read when Triton is imported.")

SETTINGS = (HTK_TUNE, HTK_TUNE_COLD_L2, HTK_PDL, TRITON_INTERPRET)
