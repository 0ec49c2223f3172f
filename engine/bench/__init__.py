"""Benchmarking: the measurement core, FLOP counts, machine info, the suite behind `ht-engine bench`, reports."""

from .flops import FlopCount, count_flops
from .measure import LatencyStats, PeakMemory, gemm_rate, relative_error, time_calls
from .report import format_header, format_table, load_schema, validate_report, write_json, write_plot
from .suite import BenchOptions, run_bench

__all__ = ["BenchOptions", "FlopCount", "LatencyStats", "PeakMemory", "count_flops", "format_header", "format_table",
           "gemm_rate", "load_schema", "relative_error", "run_bench", "time_calls", "validate_report", "write_json",
           "write_plot"]
