"""`aoti`: an AOTInductor package (`.pt2`) built by `ht-engine build --backend aoti`, run without recompiling."""

from __future__ import annotations

import numpy as np

from ..artifacts import Artifact
from ..errors import BackendError
from ..runner import Runner


def available(device: str) -> tuple[bool, str]:
    from ..devices import cuda_status

    return cuda_status(device)


def load(source: Artifact, device: str, precision: str) -> Runner:
    import torch

    from ..devices import torch_device

    target = torch_device(device)
    built_for = source.manifest.get("aoti", {}).get("device_type")
    if built_for != target.type:
        raise BackendError(f"{source.directory} is an aoti package compiled for {built_for!r}; it cannot run on "
                           f"{device!r} (build it with --device {target.type})")
    index = target.index if target.index is not None else -1
    compiled = torch._inductor.aoti_load_package(str(source.model_file), device_index=index)
    precision, max_batch = source.manifest["precision"], source.batch.max
    frame = source.frame
    if frame is not None:
        @torch.inference_mode()
        def run_frames(frames: list) -> np.ndarray:
            return compiled(torch.from_numpy(np.stack(frames)).to(target)).cpu().numpy()

        run_frames.artifact = source
        return Runner(run=None, uses_torch=True, device=str(target), precision=precision, max_batch=max_batch,
                      run_frames=run_frames, frame_shape=frame.shape)

    @torch.inference_mode()
    def run(batch: torch.Tensor) -> torch.Tensor:
        return compiled(batch.to(target))

    run.artifact = source
    return Runner(run=run, uses_torch=True, device=str(target), precision=precision, max_batch=max_batch)
