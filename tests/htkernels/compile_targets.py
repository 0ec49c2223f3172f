"""Compile every Triton kernel variant the launchers use for a GPU target, without a GPU (Triton's own LLVM and
ptxas): catches what the interpreter cannot see (types, layouts, unsupported constructs). Run as
`python -m tests.htkernels.compile_targets [ARCH]` without TRITON_INTERPRET; prints one line per variant."""

import importlib
import os
import sys
from concurrent.futures import ProcessPoolExecutor

ARCH = int(sys.argv[1]) if len(sys.argv) > 1 else 90


def compile_one(job: tuple) -> str:
    """Compile one variant (`module`, `kernel name`, pointer dtypes, float args, constexprs): "ok ..." or
    "FAILED ..."; runs in a worker process."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module, name, pointers, floats, constexprs = job
    kernel = getattr(importlib.import_module(module), name)
    signature = {}
    for arg in kernel.arg_names:
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg.endswith("_ptr"):
            signature[arg] = pointers.get(arg, "*fp32")
        else:
            signature[arg] = "fp32" if arg in floats else "i32"
    label = f"{name} {pointers} {constexprs}"
    try:
        compiled = triton.compile(ASTSource(kernel, signature, constexprs=constexprs),
                                  target=GPUTarget("cuda", ARCH, 32))
        return f"ok {label} {sorted(compiled.asm)}"
    except Exception as exc:  # noqa: BLE001  (report every variant, then fail)
        return f"FAILED {label} {type(exc).__name__}: {exc}"[:2000]


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the kernels must be compiled, not interpreted")
        return 2
    import htkernels.adapter_in as ain
    import htkernels.adapter_out as aout
    import htkernels.adapter_spatial as asp
    import htkernels.preprocess as pre

    jobs = []

    def build(kernel, pointers: dict, floats: tuple, constexprs: dict) -> None:
        jobs.append((kernel.fn.__module__, kernel.fn.__name__, pointers, floats, constexprs))

    # Every candidate configuration of the launch tuner at the model's shapes (14×14 grid, r=64).
    batches = (1, 8, 64, 256)
    in_variants = {(c["block_m"], c["block_d"], c["single_pass"]) for b in batches
                   for c in ain.tuning_candidates(b * 197)}
    out_variants = {(c["block_m"], c["block_n"]) for b in batches for c in aout.tuning_candidates(b * 197)}
    spatial_variants = {(c["block_p"], c["pool_block"], c["split_conv"]) for b in batches
                        for c in asp.tuning_candidates(b, 14, 14, 64)}
    for dtype in ("fp32", "bf16"):  # fp16 takes the bf16 code path (tensor-core dot in the storage dtype)
        flags = dict(IEEE_FP32=dtype == "fp32", INTERPRET_BF16=False)
        for block_m, block_d, single_pass in sorted(in_variants):
            build(ain._adapter_in_kernel, {n: f"*{dtype}" for n in ("x_ptr", "w_norm_ptr", "w_raw_ptr", "z_ptr")},
                  ("eps",), dict(BLOCK_M=block_m, BLOCK_R=64, BLOCK_D=block_d, SINGLE_PASS=single_pass, **flags))
        for block_m, block_n in sorted(out_variants):
            build(aout._adapter_out_kernel, {n: f"*{dtype}" for n in ("g_ptr", "w2_ptr", "b2_ptr", "res_ptr", "y_ptr")},
                  (), dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=64, **flags))
        for block_p, pool_block, split_conv in sorted(spatial_variants):
            build(asp._adapter_spatial_kernel, {"z_ptr": f"*{dtype}", "g_ptr": f"*{dtype}"}, (),
                  dict(BLOCK_R=64, BLOCK_R4=16, BLOCK_P=block_p, POOL_CHUNKS=-(-196 // pool_block) if pool_block else 0,
                       BLOCK_POOL=pool_block or block_p, SPLIT_CONV=split_conv, **flags))
        for block_p in sorted({p for p, _, _ in spatial_variants}):
            build(asp._circular_filter_kernel, {"z_ptr": f"*{dtype}"}, (), dict(BLOCK_R=64, BLOCK_P=block_p))
    integer = {n: "*i32" for n in ("row_w_ptr", "col_w_ptr", "row_start_ptr", "col_start_ptr")}
    variants = [("fp32", rgb, resize_h, resize_v) for rgb in (False, True)
                for resize_h, resize_v in ((True, True), (False, True), (True, False), (False, False))]
    for out, rgb, resize_h, resize_v in variants + [("bf16", True, True, True)]:
        build(pre._preprocess_kernel, {"frames_ptr": "*u8", "out_ptr": f"*{out}", **integer}, ("scale",),
              dict(IS_RGB=rgb, RESIZE_H=resize_h, RESIZE_V=resize_v, BLOCK_I=16, BLOCK_J=32, INTERPRET_BF16=False))
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        lines = list(pool.map(compile_one, jobs))
    failures = sum(line.startswith("FAILED") for line in lines)
    print("\n".join(lines))
    print(f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
