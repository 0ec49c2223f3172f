"""The C++ launchers' argument checks, called through `htkernels._C` with raw addresses: every bad argument comes
back as a status that `cuda_ops.launch` raises as a KernelInputError (a ValueError) naming it, before any GPU work.
The addresses below are never dereferenced, because every call here fails a check first (or, for a valid call,
fails to find a GPU on a machine without one)."""

import math

import pytest
import torch

from htkernels.cuda_ops import launch
from htkernels.errors import KernelInputError, KernelUnavailableError

from .cuda_support import extension, skip_without_extension

pytestmark = skip_without_extension()

FAKE = 0x10000  # a non-null address; only its nullness is ever looked at here


def spatial_args(**changes):
    module = extension()
    batch, h, w, channels = changes.get("batch", 2), changes.get("h", 7), changes.get("w", 5), 16
    args = dict(z=FAKE, g=FAKE + 0x1000, dtype=module.FLOAT32, batch=batch, h=h, w=w, channels=channels,
                noise_hidden=4, spectral=0, k3=FAKE, k5=FAKE, k7=FAKE, conv_bias=FAKE, noise_w1=FAKE, noise_b1=FAKE,
                noise_w2=FAKE, noise_b2=FAKE, proj=FAKE, proj_bias=FAKE, workspace=FAKE,
                workspace_bytes=module.adapter_spatial_workspace_bytes(max(batch, 1), 32, 32, 128, True), stream=0)
    args.update(changes)
    return args


def preprocess_args(**changes):
    module = extension()
    args = dict(frames=FAKE, row_weights=FAKE, col_weights=FAKE, images=FAKE, out_dtype=module.FLOAT32,
                scale=1 / 255, batch=2, height=30, width=41, frame_channels=3, out_h=16, out_w=24, workspace=FAKE,
                workspace_bytes=module.preprocess_workspace_bytes(2, 30, 16, 24), stream=0)
    args.update(changes)
    return args


@pytest.mark.parametrize("changes, message", [
    (dict(dtype=7), "dtype code 7 is not one of"),
    (dict(batch=-1), "batch -1 is not in"),
    (dict(batch=2**31), "is not in [0, 2^31)"),
    (dict(h=0), "grid 0x5 is out of range"),
    (dict(h=33), "grid 33x5 is out of range"),
    (dict(w=33), "grid 7x33 is out of range"),
    (dict(channels=0), "channels 0 is out of range"),
    (dict(channels=129), "channels 129 is out of range"),
    (dict(noise_hidden=0), "noise_hidden 0 is out of range"),
    (dict(noise_hidden=1025), "noise_hidden 1025 is out of range"),
    (dict(g=FAKE), "g must not alias z"),
    (dict(workspace_bytes=16), "workspace has 16 bytes, needs"),
])
def test_adapter_spatial_rejects(changes, message):
    with pytest.raises(KernelInputError, match=r"^adapter_spatial: ") as error:
        launch(extension().adapter_spatial, **spatial_args(**changes))
    assert message in str(error.value)


@pytest.mark.parametrize("name", ["z", "g", "k3", "k5", "k7", "conv_bias", "noise_w1", "noise_b1", "noise_w2",
                                  "noise_b2", "proj", "proj_bias", "workspace"])
def test_adapter_spatial_rejects_null_pointers(name):
    with pytest.raises(KernelInputError, match=f"adapter_spatial: {name} is a null pointer"):
        launch(extension().adapter_spatial, **spatial_args(**{name: 0}))


def test_adapter_spatial_spectral_needs_the_larger_workspace():
    module = extension()
    small = module.adapter_spatial_workspace_bytes(2, 7, 5, 16, False)
    module_args = spatial_args(workspace_bytes=small, spectral=FAKE)
    with pytest.raises(KernelInputError, match=f"workspace has {small} bytes, needs"):
        launch(module.adapter_spatial, **module_args)


def test_launchers_return_their_status_instead_of_throwing():
    module = extension()
    code, message = module.adapter_spatial(**spatial_args(h=33))
    assert code == module.STATUS_INVALID_ARGUMENT and message.startswith("adapter_spatial: grid 33x5 is out of range")
    code, message = module.preprocess(**preprocess_args(out_h=0))
    assert code == module.STATUS_INVALID_ARGUMENT and message.startswith("preprocess: ")
    assert module.adapter_spatial(**spatial_args(batch=0)) == (module.STATUS_OK, "")


def test_adapter_spatial_empty_batch_is_a_no_op():
    assert launch(extension().adapter_spatial, **spatial_args(batch=0)) is None


@pytest.mark.parametrize("changes, message", [
    (dict(out_dtype=3), "out_dtype code 3 is not one of"),
    (dict(frame_channels=2), "frames have 2 channels; expected 1 (gray) or 3 (RGB)"),
    (dict(batch=-1), "batch -1 is negative"),
    (dict(height=0), "frame size 0x41 is out of range"),
    (dict(width=16385), "frame size 30x16385 is out of range"),
    (dict(out_h=0), "output size 0x24 is out of range"),
    (dict(out_w=4097), "output size 16x4097 is out of range"),
    (dict(scale=math.nan), "is not finite"),
    (dict(scale=math.inf), "is not finite"),
    (dict(batch=2**40), "frames is too large for one launch"),
    (dict(workspace_bytes=100), "workspace has 100 bytes, needs"),
])
def test_preprocess_rejects(changes, message):
    with pytest.raises(KernelInputError, match=r"^preprocess: ") as error:
        launch(extension().preprocess, **preprocess_args(**changes))
    assert message in str(error.value)


@pytest.mark.parametrize("name", ["frames", "row_weights", "col_weights", "images", "workspace"])
def test_preprocess_rejects_null_pointers(name):
    with pytest.raises(KernelInputError, match=f"preprocess: {name} is a null pointer"):
        launch(extension().preprocess, **preprocess_args(**{name: 0}))


def test_preprocess_empty_batch_is_a_no_op():
    assert launch(extension().preprocess, **preprocess_args(batch=0)) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="valid fake addresses must never reach a real GPU")
def test_valid_calls_without_gpu_raise_a_clear_backend_error():
    module = extension()
    with pytest.raises(KernelUnavailableError, match="adapter_spatial: .*needs a CUDA GPU"):
        launch(module.adapter_spatial, **spatial_args())
    with pytest.raises(KernelUnavailableError, match="adapter_spatial: .*needs a CUDA GPU"):
        launch(module.adapter_spatial, **spatial_args(spectral=FAKE))
    with pytest.raises(KernelUnavailableError, match="preprocess: .*needs a CUDA GPU"):
        launch(module.preprocess, **preprocess_args())
    # The process is intact: the checks still answer after the failed launches.
    with pytest.raises(KernelInputError, match="grid 33x5"):
        launch(module.adapter_spatial, **spatial_args(h=33))
