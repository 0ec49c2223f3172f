"""Compile every Triton kernel variant the launchers use for a GPU target, without a GPU (Triton's own LLVM and
ptxas): catches what the interpreter cannot see (types, layouts, unsupported constructs). Run as
`python -m tests.htkernels.compile_targets [ARCH]` without TRITON_INTERPRET; prints one line per variant."""

import os
import sys

ARCH = int(sys.argv[1]) if len(sys.argv) > 1 else 90


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the kernels must be compiled, not interpreted")
        return 2
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import htkernels.adapter_in as ain
    import htkernels.adapter_out as aout
    import htkernels.adapter_spatial as asp
    import htkernels.preprocess as pre

    target = GPUTarget("cuda", ARCH, 32)
    failures = 0

    def build(kernel, pointers: dict, floats: tuple, constexprs: dict) -> None:
        nonlocal failures
        signature = {}
        for name in kernel.arg_names:
            if name in constexprs:
                signature[name] = "constexpr"
            elif name.endswith("_ptr"):
                signature[name] = pointers.get(name, "*fp32")
            else:
                signature[name] = "fp32" if name in floats else "i32"
        label = f"{kernel.__name__} {pointers} {constexprs}"
        try:
            compiled = triton.compile(ASTSource(kernel, signature, constexprs=constexprs), target=target)
            print("ok", label, sorted(compiled.asm))
        except Exception as exc:  # noqa: BLE001  (report every variant, then fail)
            failures += 1
            print("FAILED", label, f"{type(exc).__name__}: {exc}"[:2000])

    for dtype in ("fp32", "bf16"):  # fp16 takes the bf16 code path (tensor-core dot in the storage dtype)
        flags = dict(IEEE_FP32=dtype == "fp32", INTERPRET_BF16=False)
        for block_m, block_n in ((8, 32), (16, 32), (64, 64)):  # the launchers' small-M and large-M tiles
            for single_pass in (False, True):
                build(ain._adapter_in_kernel,
                      {n: f"*{dtype}" for n in ("x_ptr", "w_norm_ptr", "w_raw_ptr", "z_ptr")}, ("eps",),
                      dict(BLOCK_M=block_m, BLOCK_R=64, BLOCK_D=64, SINGLE_PASS=single_pass, **flags))
            build(aout._adapter_out_kernel,
                  {n: f"*{dtype}" for n in ("g_ptr", "w2_ptr", "b2_ptr", "res_ptr", "y_ptr")}, (),
                  dict(BLOCK_M=block_n, BLOCK_N=2 * block_n, BLOCK_K=64, **flags))
        for block_p in (16, 32):
            for pool_chunks, block_pool in ((0, block_p), (4, 64)):  # runtime loop, unrolled chunks (14x14 grid)
                build(asp._adapter_spatial_kernel, {"z_ptr": f"*{dtype}", "g_ptr": f"*{dtype}"}, (),
                      dict(BLOCK_R=64, BLOCK_R4=16, BLOCK_P=block_p, POOL_CHUNKS=pool_chunks, BLOCK_POOL=block_pool,
                           **flags))
            build(asp._circular_filter_kernel, {"z_ptr": f"*{dtype}"}, (), dict(BLOCK_R=64, BLOCK_P=block_p))
    integer = {n: "*i32" for n in ("row_w_ptr", "col_w_ptr", "row_start_ptr", "col_start_ptr")}
    variants = [("fp32", rgb, resize_h, resize_v) for rgb in (False, True)
                for resize_h, resize_v in ((True, True), (False, True), (True, False), (False, False))]
    for out, rgb, resize_h, resize_v in variants + [("bf16", True, True, True)]:
        build(pre._preprocess_kernel, {"frames_ptr": "*u8", "out_ptr": f"*{out}", **integer}, ("scale",),
              dict(IS_RGB=rgb, RESIZE_H=resize_h, RESIZE_V=resize_v, BLOCK_I=16, BLOCK_J=32, INTERPRET_BF16=False))
    print(f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
