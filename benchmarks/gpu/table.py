"""The text table of a GPU check's JSON (what gpu_check.py prints at the end, and alone with `--table`)."""

from __future__ import annotations

# The `check` of a fused residual_adapter candidate in the tune section whose output matched the separate ops'.
MATCHES = "matches the separate ops"


def _short(config: dict) -> str:
    if config.get("impl") == "torch":
        return "cublas"
    names = {"block_m": "m", "block_d": "d", "block_n": "n", "block_p": "p", "num_warps": "w", "single_pass": "1pass",
             "one_dot": "1dot", "pool_block": "pool", "split_conv": "split", "num_stages": "s"}
    parts = [names.get(key, key) + ("" if value is True else str(value)) for key, value in config.items()
             if value is not False and value != 0 and key != "impl"]
    if config.get("impl") not in (None, "triton"):  # attention's back ends, adapter_spatial_out's separate/fused
        parts.insert(0, config["impl"])
    return "/".join(parts)


def table(results: dict) -> str:
    lines = []
    env = results.get("environment", {})
    lines.append(f"card {env.get('card', env.get('device'))}  driver {env.get('driver')}  torch {env.get('torch')}  "
                 f"triton {env.get('triton')}  git {env.get('git_sha')}  {env.get('date')}")
    gemm = results.get("gemm_bf16", {})
    gemm_rate = gemm.get("tflop_per_s")
    if gemm_rate:
        lines.append(f"bf16 GEMM {gemm['n']}^3: {gemm_rate:.1f} TFLOP/s")
    lines.append("")
    names = ["eager_ref", "compile_ref", "torch_provider", "triton", "cuda"]
    lines.append("kernels: median us per call with launches (in a CUDA graph) and max rel. error to fp64")
    lines.append(f"{'kernel':<26}{'shape':<30}{'dtype':<10}" + "".join(f"{n:>22}" for n in names))
    for row in results.get("kernels", []):
        cells = []
        for name in names:
            cell = row.get(name)
            if cell is None:
                cells.append(f"{'-':>22}")
            elif "error" in cell:
                cells.append(f"{'error':>22}")
            else:
                graph = f"({cell['graph_us']:.1f})" if "graph_us" in cell else ""
                cells.append(f"{cell['median_us']:.1f}{graph} e{cell['rel_err']:.0e}".rjust(22))
        lines.append(f"{row['op']:<26}{row['shape']:<30}{row['dtype']:<10}" + "".join(cells))
    block = results.get("adapter_block_batch1", {})
    if block:
        lines.append("")
        lines.append("adapter, 3 kernels, batch 1, per block (target <= 25 us on H100):")
        for name, cell in block.items():
            value = f"{cell['median_us']:.1f} us" if "median_us" in cell else cell.get("error", "")
            lines.append(f"  {name:<32}{value}")
    tuning = results.get("tuning_batch1_bf16", {})
    if tuning:
        lines.append("")
        lines.append("launch configurations, batch 1 bf16, us per call in a CUDA graph (first = default):")
        for op, rows in tuning.items():
            if op == "best_block":
                continue
            # "!": a fused candidate whose output did not match the separate ops' (never the best).
            cells = [(f"{row['graph_us']:.1f}" if "graph_us" in row else "err")
                     + ("!" if row.get("check", MATCHES) != MATCHES else "") for row in rows]
            lines.append(f"  {op:<16}" + "  ".join(f"{_short(row['config'])}={cell}" for row, cell in zip(rows, cells)))
        if "best_block" in tuning:
            lines.append(f"  block with the best of each: {tuning['best_block']['graph_us']:.1f} us")
    choices = results.get("tuner_choices", [])
    if choices:
        lines.append("")
        lines.append("launch tuner's choices (default first; us per call in a CUDA graph):")
        for choice in choices:
            default = choice["measured"][0] if choice["measured"] else {}
            chosen = next((row for row in choice["measured"] if row["config"] == choice["config"]), {})
            lines.append(f"  {choice['op']:<16}{str(choice['key']):<44}{_short(choice['config'])} "
                         f"{chosen.get('us', float('nan')):.1f} (default {default.get('us', float('nan')):.1f})")
    e2e = results.get("end_to_end", {})
    if e2e.get("rows"):
        lines.append("")
        gflop = e2e.get("gflop_per_image")
        lines.append(f"end to end {e2e.get('arch')} {e2e.get('task')}"
                     + (f", {gflop:.3g} GFLOP/image" if gflop else "") + "  (median ms | img/s | speed-up vs eager | "
                     "vs compile | % of GEMM rate | rel err vs fp32 reference)")
        for row in e2e["rows"]:
            base = row.get("compile_reference", {}).get("median_us")
            eager = row.get("reference", {}).get("median_us")
            if row.get("reference_chunk"):
                lines.append(f"  B={row['batch']}: both references run in chunks of {row['reference_chunk']} images "
                             "(their upsample output would exceed INT_MAX elements)")
            for name in ("reference", "compile_reference", "optimized", "optimized_pdl", "optimized_branches",
                         "optimized_cuda", "optimized_torch_graphs"):
                cell = row.get(name)
                if cell is None:
                    continue
                if "error" in cell:
                    lines.append(f"  B={row['batch']:<4}{row['dtype']:<6}{name:<24}{cell['error'][:80]}")
                    continue
                speedup = f"{base / cell['median_us']:.2f}x" if base else "-"
                over_eager = f"{eager / cell['median_us']:.2f}x" if eager else "-"
                share = (f"{100 * cell['tflop_per_s'] / gemm_rate:.0f}%"
                         if gemm_rate and "tflop_per_s" in cell else "-")
                lines.append(f"  B={row['batch']:<4}{row['dtype']:<6}{name:<24}{cell['median_us'] / 1e3:>9.3f} ms"
                             f"{cell['images_per_s']:>10.0f}/s{over_eager:>8}{speedup:>8}{share:>6}  "
                             f"{cell['rel_err_vs_fp32_reference']:.1e}")
    lines += _kernel_count_table(results.get("kernel_count", {}))
    lines += _frames_table(results.get("frames", {}))
    lines += _split_table(results.get("gpu_split", {}))
    for key in ("errors",):
        for section, message in results.get(key, {}).items():
            lines.append(f"section {section} failed: {message.splitlines()[-1] if message else ''}")
    return "\n".join(lines)


def _kernel_count_table(section: dict) -> list:
    """CUDA kernels per forward at batch 1 next to the target, and where most of them go."""
    if not section:
        return []
    title = f"CUDA kernels per forward, batch 1 {section.get('dtype')} (target <= {section.get('target')})"
    if section.get("skipped"):
        return ["", f"{title}: skipped ({section['skipped']})"]
    lines = ["", f"{title}, {section.get('arch')} {section.get('task')}:"]
    for name in ("optimized_graph", "optimized_call", "reference_eager"):
        cell = section.get(name)
        if cell is None:
            continue
        if "error" in cell:
            lines.append(f"  {name:<18}{cell['error'][:100]}")
            continue
        lines.append(f"  {name:<18}{cell['kernels']:>5} kernels {cell['memcpy']:>3} memcpy {cell['memset']:>3} memset")
    nodes = section.get("graph_nodes")
    if nodes is not None:
        text = nodes["error"][:100] if "error" in nodes else ", ".join(f"{k} {v}" for k, v in sorted(nodes.items()))
        lines.append(f"  {'graph_nodes':<18}{text}")
    top = section.get("optimized_graph", {}).get("top")
    if top:
        lines.append("  most frequent in the optimized graph: "
                     + "; ".join(f"{count}x {name[:48]}" for name, count in top[:6]))
    return lines


def _frames_table(frames: dict) -> list:
    """The frame path's rows: device time of its graph next to the tensor forward's (target at 480x640 batch 1:
    within 60 us), the whole calls, and the masks' agreement with the host frame path."""
    if not frames.get("rows"):
        return []
    lines = ["", f"frame to mask on the device, {frames.get('arch')} {frames.get('task')} {frames.get('dtype')} "
             "(median us: frames graph | forward graph | difference | frames call | forward call | mask agreement)"]
    for row in frames["rows"]:
        label = f"  {row['frame']:<11}B={row['batch']:<4}"
        if "error" in row:
            lines.append(label + row["error"][:80])
            continue

        def cell(name):
            return f"{row[name]['median_us']:>10.1f}" if name in row else f"{'-':>10}"

        difference = row.get("frames_minus_forward_graph_us")
        lines.append(label + cell("frames_graph") + cell("forward_graph")
                     + (f"{difference:>+10.1f}" if difference is not None else f"{'-':>10}")
                     + cell("frames_call") + cell("forward_call") + f"{row['mask_agreement_vs_host']:>10.5f}")
    return lines


def _split_table(split: dict) -> list:
    """The artifact runtimes' host/device split: the whole call next to trtexec's Host Latency and its parts."""
    if split.get("skipped"):
        return ["", f"host/device split: skipped ({split['skipped']})"]
    if not split.get("rows"):
        return []
    lines = ["", f"host/device split of the artifact runtimes, {split.get('arch')} {split.get('task')} "
             f"{split.get('precision')} (median ms: whole call | Host Latency = H2D + GPU Compute + D2H | H2D | "
             "GPU Compute | D2H | timer)"]
    if split.get("validated") is not True:
        lines.append(f"  report not validated: {split.get('validated')}")
    for row in split["rows"]:
        label = f"  {row['backend']:<10}{row['precision']:<6}B={row['batch']:<4}"
        if row["call_median_ms"] is None:
            lines.append(label + f"{row['status']}: {row['message'][:160]}")
            continue
        cells = f"{row['call_median_ms']:>10.3f}"
        phases = row["gpu_split_ms"]
        if phases is None:
            lines.append(label + cells + f"  no split: {row['gpu_split_reason'][:160]}")
            continue
        for key in ("host_latency_ms", "h2d_ms", "compute_ms", "d2h_ms"):
            cells += f"{phases[key]['median_ms']:>10.3f}"
        lines.append(label + cells + f"  {phases['timer']} ({phases['runs']} runs)")
    return lines
