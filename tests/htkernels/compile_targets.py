"""Compile every Triton kernel variant the launchers use for a GPU target, without a GPU (Triton's own LLVM and
ptxas): catches what the interpreter cannot see (types, layouts, unsupported constructs). Run as
`python -m tests.htkernels.compile_targets [ARCH]` without TRITON_INTERPRET; prints one line per variant."""

import importlib
import os
import sys
from concurrent.futures import ProcessPoolExecutor

ARCH = int(sys.argv[1]) if len(sys.argv) > 1 else 90
# Shared memory one block may use on sm_80/sm_90 (opt-in maximum): a variant over it cannot launch.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}.get(ARCH, 99 * 1024)


def compile_one(job: tuple) -> str:
    """Compile one variant (`module`, `kernel name`, pointer dtypes, float args, constexprs, options, whether it
    must fit in shared memory): "ok ...", "over ..." (fp32 tiles the launch tuner skips) or "FAILED ..."; runs in a
    worker process."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module, name, pointers, floats, constexprs, options, must_fit, values = job
    kernel = getattr(importlib.import_module(module), name)
    constexprs = dict(constexprs)
    signature, attrs = {}, {}
    for index, arg in enumerate(kernel.arg_names):
        # As the launcher's JIT specializes: integer arguments equal to 1 become constants, pointers (torch
        # allocations) and integers that are multiples of 16 are marked divisible by 16 (what lets loads vectorize
        # and the GEMM loops pipeline their loads).
        if values.get(arg) == 1:
            constexprs[arg] = 1
        if arg in constexprs:
            signature[arg] = "constexpr"
            continue
        if arg.endswith("_ptr"):
            signature[arg] = pointers.get(arg, "*fp32")
            attrs[(index,)] = [["tt.divisibility", 16]]
        else:
            signature[arg] = "fp32" if arg in floats else "i32"
            if values.get(arg, 1) % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
    label = f"{name} {pointers} {constexprs} {options}"
    try:
        compiled = triton.compile(ASTSource(kernel, signature, constexprs=constexprs, attrs=attrs),
                                  target=GPUTarget("cuda", ARCH, 32), options=options)
        # Programmatic dependent launch: the PTX of a PDL variant waits for its predecessor and releases its
        # successor (griddepcontrol), the others hold neither instruction.
        grid_control = [op for op in ("griddepcontrol.wait", "griddepcontrol.launch_dependents")
                        if op in compiled.asm["ptx"]]
        if grid_control != (["griddepcontrol.wait", "griddepcontrol.launch_dependents"] if constexprs.get("PDL")
                            else []):
            return f"FAILED {label}: PTX has {grid_control or 'no griddepcontrol'} with PDL={constexprs.get('PDL')}"
        arrives = name == "_residual_adapter_in_kernel" or constexprs.get("SPLIT_K", 1) > 1
        ordering = arrival_ordering(compiled.asm["ptx"]) if arrives else None
        if ordering:
            return f"FAILED {label}: {ordering}"
        shared = compiled.metadata.shared
        if shared > SHARED_LIMIT:
            verdict = "FAILED" if must_fit else "over"
            return f"{verdict} {label}: {shared} bytes of shared memory, the limit is {SHARED_LIMIT}"
        return f"ok {label} {sorted(compiled.asm)} shared={shared}"
    except Exception as exc:  # noqa: BLE001  (report every variant, then fail)
        return f"FAILED {label} {type(exc).__name__}: {exc}"[:2000]


def arrival_ordering(ptx: str):
    """What is wrong in the PTX of a kernel whose programs meet through arrival counters (residual_adapter's fused
    kernel, adapter_out's split-K) with how they meet (None: nothing): the stores of each program's part (x, the
    fp32 parts), then a barrier of the program's threads, then the arrival as an acquire-release atomic add at GPU
    scope, and the last arrival's reads of the parts from L2 (`ld.global.cg`)."""
    arrival = ptx.find("atom.global.gpu.acq_rel.add")
    if arrival < 0:
        return "no acquire-release GPU-scope atomic add (the arrival)"
    before = ptx[:arrival]
    if before.rfind("bar.sync") < before.rfind("st.global"):
        return "no barrier between the last store of the program's part and the arrival"
    if "ld.global.cg" not in ptx[arrival:]:
        return "the last arrival does not read the parts past L1 (ld.global.cg)"
    return None


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the kernels must be compiled, not interpreted")
        return 2
    import htkernels.adapter_in as ain
    import htkernels.adapter_out as aout
    import htkernels.adapter_spatial as asp
    import htkernels.head_logits as head
    import htkernels.linear_act as act
    import htkernels.norm_linear as norm
    import htkernels.patch_embed as embed
    import htkernels.preprocess as pre
    import htkernels.residual_adapter as fused

    jobs = []

    def build(kernel, pointers: dict, floats: tuple, constexprs: dict, config: dict = None, must_fit=True,
              values: dict = None) -> None:
        options = {key: config[key] for key in ("num_warps", "num_stages") if config and key in config}
        job = (kernel.fn.__module__, kernel.fn.__name__, pointers, floats, {**constexprs, "PDL": False}, options,
               must_fit, values or {})
        if job not in jobs:
            jobs.append(job)

    # Every candidate configuration of the launch tuner at the model's shapes (ViT-B/16: D=768, 14×14 grid, r=64),
    # with its warps and pipeline stages: bf16 variants must fit in shared memory; fp32 ones over it are reported
    # (the tuner skips a candidate that cannot launch).
    batches = (1, 8, 64, 256)
    # The integer arguments of the model's contiguous launches (rows vary with the batch: left unspecialized).
    in_values = dict(D=768, R=64, stride_xm=768, stride_xd=1, stride_nr=768, stride_nd=1, stride_rr=768, stride_rd=1,
                     stride_zm=64, stride_zr=1)
    out_values = {inner: dict(D=768, R=inner, stride_gm=inner, stride_gr=1, stride_wd=inner, stride_wr=1,
                              stride_rm=768, stride_rd=1, stride_ym=768, stride_yd=1) for inner in (64, 768)}
    act_values = dict(N=3072, K=768, stride_xm=768, stride_xk=1, stride_wn=768, stride_wk=1, stride_ym=3072,
                      stride_yn=1)
    # qkv (N = 3·768, no activation) and fc1 (N = 4·768) with their LayerNorm folded in.
    norm_values = {outputs: dict(N=outputs, K=768, stride_xm=768, stride_xk=1, stride_wn=768, stride_wk=1,
                                 stride_ym=outputs, stride_yn=1) for outputs in (2304, 3072)}
    spatial_values = dict(H=14, W=14, R=64, R4=16, stride_zb=197 * 64, stride_zn=64, stride_zr=1, stride_fb=197 * 64,
                          stride_fr=1, stride_fp=64, stride_gb=197 * 64, stride_gn=64, stride_gr=1)
    spatial_out_values = {**spatial_values, "D": 768, "stride_gb": 0, "stride_gn": 0, "stride_gr": 0,
                          "stride_w2d": 64, "stride_w2r": 1, "stride_rb": 197 * 768, "stride_rn": 768,
                          "stride_rd": 1, "stride_yb": 197 * 768, "stride_yn": 768, "stride_yd": 1}
    # The embedding of 224² images in 16² patches (K = 768) to width 768, contiguous images, weights and output.
    embed_values = dict(N=768, K=768, G=14, P=16, stride_ib=3 * 224 * 224, stride_ic=224 * 224, stride_ih=224,
                        stride_iw=1, stride_wn=768, stride_wk=1, stride_pt=768, stride_pn=1, stride_yb=197 * 768,
                        stride_yt=768, stride_yn=1)
    for dtype in ("fp32", "bf16"):  # fp16 takes the bf16 code path (tensor-core dot in the storage dtype)
        flags = dict(IEEE_FP32=dtype == "fp32", INTERPRET_BF16=False)
        fit = dtype == "bf16"
        # adapter_in alone and (POOL) with the partial sums of the image mean, adapter's pooled candidates.
        in_configs = [(c, False) for b in batches for c in ain.tuning_candidates(b * 197)]
        in_configs += [(c, True) for b in batches for c in ain.pooled_candidates(b, 197)]
        for c, pool in in_configs:
            build(ain._adapter_in_kernel, {n: f"*{dtype}" for n in ("x_ptr", "w_norm_ptr", "w_raw_ptr", "z_ptr")},
                  ("eps",), dict(BLOCK_M=c["block_m"], BLOCK_R=64, BLOCK_D=c["block_d"], SINGLE_PASS=c["single_pass"],
                                 ONE_DOT=c["one_dot"], POOL=pool, **flags), c, fit,
                  {**in_values, **(dict(stride_pb=-(-197 // c["block_m"]) * 64, stride_pt=64) if pool else {})})
        # fc2 + residual with adapter_in as the tail of each row tile's last program (residual_adapter, fused).
        fused_values = dict(D=768, K=3072, R=64, stride_hm=3072, stride_hk=1, stride_wd=3072, stride_wk=1,
                            stride_rm=768, stride_rd=1, stride_xm=768, stride_xd=1, stride_nr=768, stride_nd=1,
                            stride_ar=768, stride_ad=1, stride_zm=64, stride_zr=1, stride_pt=64)
        for c in (c for b in batches for c in fused.candidates(b * 197) if c["impl"] == "fused"):
            names = ("h_ptr", "w_ptr", "b_ptr", "res_ptr", "x_ptr", "w_norm_ptr", "w_raw_ptr", "in_bias_ptr", "z_ptr")
            build(fused._residual_adapter_in_kernel,
                  {**{n: f"*{dtype}" for n in names}, "partial_ptr": "*fp32", "count_ptr": "*i32"}, ("eps",),
                  dict(BLOCK_M=c["block_m"], BLOCK_N=c["block_n"], BLOCK_K=64, BLOCK_R=64, BLOCK_D=c["block_d"],
                       SINGLE_PASS=c["single_pass"], ONE_DOT=c["one_dot"], **flags), c, fit,
                  {**fused_values, "stride_pb": -(-197 // c["block_m"]) * 64})
        for inner in (64, 768):
            out_configs = [c for b in batches for c in aout.tuning_candidates(b * 197, inner) if c["impl"] == "triton"]
            for c in out_configs:
                build(aout._adapter_out_kernel,
                      {**{n: f"*{dtype}" for n in ("g_ptr", "w2_ptr", "b2_ptr", "res_ptr", "y_ptr")},
                       "ws_ptr": "*fp32", "count_ptr": "*i32"}, (),
                      dict(BLOCK_M=c["block_m"], BLOCK_N=c["block_n"], BLOCK_K=64, GROUP_M=8, SPLIT_K=c["split_k"],
                           **flags), c, fit, out_values[inner])
        act_configs = [c for b in batches for c in act.tuning_candidates(b * 197) if c["impl"] == "triton"]
        for index, c in enumerate(act_configs):
            for activation in (1, 2) if index == 0 else (1,):  # GELU everywhere, QuickGELU once
                build(act._linear_act_kernel, {n: f"*{dtype}" for n in ("x_ptr", "w_ptr", "b_ptr", "y_ptr")}, (),
                      dict(BLOCK_M=c["block_m"], BLOCK_N=c["block_n"], BLOCK_K=64, GROUP_M=8, ACTIVATION=activation,
                           **flags), c, fit, act_values)
        norm_configs = [c for b in batches for c in norm.tuning_candidates(b * 197) if c["impl"] == "triton"]
        for index, c in enumerate(norm_configs):
            for outputs, activation in ((2304, 0), (3072, 1)) + (((3072, 2),) if index == 0 else ()):
                build(norm._norm_linear_kernel, {n: f"*{dtype}" for n in ("x_ptr", "w_ptr", "y_ptr")}, ("eps",),
                      dict(BLOCK_M=c["block_m"], BLOCK_N=c["block_n"], BLOCK_K=64, GROUP_M=8, ACTIVATION=activation,
                           **flags), c, fit, norm_values[outputs])
        embed_configs = [c for b in batches for c in embed.tuning_candidates(b * 196) if c["impl"] == "triton"]
        for index, c in enumerate(embed_configs):
            for has_bias in (True, False) if index == 0 else (True,):  # timm's patch bias everywhere, CLIP's none once
                build(embed._patch_embed_kernel,
                      {"images_ptr": "*fp32", **{n: f"*{dtype}" for n in ("w_ptr", "b_ptr", "pos_ptr", "cls_ptr",
                                                                          "y_ptr")}}, (),
                      dict(BLOCK_M=c["block_m"], BLOCK_N=c["block_n"], BLOCK_K=64, GROUP_M=8, HAS_BIAS=has_bias,
                           **flags), c, fit, embed_values)
        # The spatial kernel alone and with adapter_out in its epilogue (adapter_spatial_out's fused candidates,
        # D = 768), each also reading adapter_in's partial sums of the image mean (POOLED; SCALED by Σκ, the spectral
        # filter, in the first configuration of each).
        spatial_configs = [c for b in batches for c in asp.tuning_candidates(b, 14, 14, 64)]
        fused_configs = [c for b in batches for c in asp.spatial_out_candidates(b, 14, 14, 64) if c["impl"] == "fused"]
        pooled_configs = [c for b in batches for c in asp.tuning_candidates(b, 14, 14, 64, pooled=True)]
        pooled_fused = [c for b in batches for c in asp.spatial_out_candidates(b, 14, 14, 64, pooled=True)
                        if c["impl"] == "fused"]
        spatial_jobs = [(c, False, False) for c in spatial_configs] + [(c, True, False) for c in fused_configs]
        spatial_jobs += [(c, False, True) for c in pooled_configs] + [(c, True, True) for c in pooled_fused]
        first_pooled = {}
        for c, fuse, pooled in spatial_jobs:
            pool = c["pool_block"]
            names = ("z_ptr", "g_ptr", "w2_ptr", "b2_ptr", "res_ptr", "y_ptr") if fuse else ("z_ptr", "g_ptr")
            values = spatial_out_values if fuse else spatial_values
            if pooled:
                values = {**values, "stride_pb": 25 * 64, "stride_pt": 64}
            for scaled in (False, True) if pooled and first_pooled.setdefault(fuse, c) is c else (False,):
                build(asp._adapter_spatial_kernel, {n: f"*{dtype}" for n in names}, (),
                      dict(BLOCK_R=64, BLOCK_R4=16, BLOCK_P=c["block_p"], POOL_CHUNKS=-(-196 // pool) if pool else 0,
                           BLOCK_POOL=pool or c["block_p"], SPLIT_CONV=c["split_conv"], FUSE_OUT=fuse,
                           BLOCK_N=c.get("block_n", 64), POOLED=pooled, SCALED=scaled, **flags), c, fit, values)
        # The seg head's tail: three 512-wide levels of ViT-B/16 (the fourth pointer unused), two classes.
        head_values = dict(HW=196, C=2, K0=512, K1=512, K2=512, K3=0, **{f"stride_{i}{d}": v for i in range(4)
                                                                            for d, v in (("b", 197 * 512), ("n", 512),
                                                                                         ("k", 1))},
                           stride_wc=1536, stride_wk=1, stride_yb=2 * 196, stride_yc=196, stride_yp=1)
        for c in (c for pixels in (196, 4096) for c in head.tuning_candidates(pixels) if c["impl"] == "triton"):
            build(head._head_logits_kernel, {**{f"l{i}_ptr": f"*{dtype}" for i in range(4)}, "w_ptr": "*fp32",
                                             "b_ptr": "*fp32", "y_ptr": "*fp32"}, (),
                  dict(LEVELS=3, BLOCK_P=c["block_p"], BLOCK_C=16, BLOCK_K=c["block_k"]), c, True, head_values)
        for block_p in sorted({c["block_p"] for c in spatial_configs}):
            build(asp._circular_filter_kernel, {"z_ptr": f"*{dtype}"}, (), dict(BLOCK_R=64, BLOCK_P=block_p),
                  values=spatial_values)
    integer = {n: "*i32" for n in ("row_w_ptr", "col_w_ptr", "row_start_ptr", "col_start_ptr")}
    variants = [("fp32", rgb, resize_h, resize_v) for rgb in (False, True)
                for resize_h, resize_v in ((True, True), (False, True), (True, False), (False, False))]
    for out, rgb, resize_h, resize_v in variants + [("bf16", True, True, True)]:
        build(pre._preprocess_kernel, {"frames_ptr": "*u8", "out_ptr": f"*{out}", **integer}, ("scale",),
              dict(IS_RGB=rgb, RESIZE_H=resize_h, RESIZE_V=resize_v, BLOCK_I=16, BLOCK_J=32, INTERPRET_BF16=False))
    # Each kernel once more with programmatic dependent launch (HTK_PDL), in its first configuration per dtype.
    firsts = {}
    for job in jobs:
        firsts.setdefault((job[0], job[1], tuple(sorted(job[2].items()))), job)
    jobs += [job[:4] + ({**job[4], "PDL": True},) + job[5:] for job in firsts.values()]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        lines = list(pool.map(compile_one, jobs))
    failures = sum(line.startswith("FAILED") for line in lines)
    print("\n".join(lines))
    print(f"{len(lines)} variants, {sum(line.startswith('over') for line in lines)} fp32 over shared memory, "
          f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
