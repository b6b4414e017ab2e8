"""Benchmark of bnlib against torch's native batch norm: ``python -m bnlib.bench``.

Method (see the book's appendix "What batch norm costs"): machines are noisy, so every figure
is a ratio to ``torch.nn.functional.batch_norm`` measured in the same run. Implementations are
interleaved round-robin after a warm-up; each cell reports the median, min and max of the
samples. Batch norm is memory-bound, so each time is also expressed as a fraction of the
memory-copy bandwidth measured in the same run: compulsory bytes (forward reads x and writes
y: 2B; forward+backward also reads dy and x and writes dx: 5B, B = bytes of x) divided by the
time, divided by the bandwidth of ``dst.copy_(src)`` (reads and writes ``src.nbytes`` each).
The copy's source is larger than the last-level cache (:func:`last_level_cache_bytes`), so
the yardstick is the bandwidth of main memory, not of the cache, whatever the input's size.

Also reported: bytes saved for backward (via ``torch.autograd.graph.saved_tensors_hooks``,
relative to B) and the peak memory of the NumPy forward+backward (``tracemalloc``, relative
to B).

Examples::

    python -m bnlib.bench                      # the standard shapes, 1 thread, float32
    python -m bnlib.bench --threads 2 --json bench.json
    python -m bnlib.bench --quick              # small shapes, few samples (< 30 s): a smoke test
    python -m bnlib.bench --no-fused-loops     # bnlib.torch in torch operations only
    python -m bnlib.bench --device cuda --dtype bfloat16 --shape 256,256,56,56
"""

import argparse
import contextlib
import ctypes
import ctypes.util
import glob
import json
import os
import re
import statistics
import sys
import time
import tracemalloc

import numpy as np
import torch

from bnlib import numpy as bnp
from bnlib import torch as bnt
from bnlib.torch.compiled import batch_norm_compiled

__all__ = ["bench_shape", "format_table", "interleaved_times", "keep_freed_memory",
           "last_level_cache_bytes", "main", "numpy_peak_bytes", "saved_bytes",
           "torch_implementations"]

STANDARD_SHAPES = [(256, 1024), (64, 64, 32, 32), (32, 256, 14, 14)]
QUICK_SHAPES = [(64, 256), (8, 16, 16, 16)]
DEFAULT_CACHE_BYTES = 32 * 2**20  # when the cache size cannot be read
MIN_COPY_BYTES = 64 * 2**20
MAX_COPY_BYTES = 512 * 2**20
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


def _plain_ops(x, weight, bias, eps=1e-5):
    """Batch norm written with plain torch operations; autograd derives the backward."""
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    centred = x - x.mean(dims, keepdim=True)
    var = (centred**2).mean(dims, keepdim=True)
    return centred / torch.sqrt(var + eps) * weight.view(shape) + bias.view(shape)


def torch_implementations(compiled=False):
    """name -> function(x, weight, bias) in training mode without running statistics."""
    impls = {
        "torch native": lambda x, w, b: torch.nn.functional.batch_norm(x, None, None, w, b, True),
        "bnlib.torch": lambda x, w, b: bnt.batch_norm(x, None, None, w, b, True),
        "plain ops + autograd": _plain_ops,
    }
    if compiled:
        impls["torch.compile(plain ops)"] = torch.compile(_plain_ops, dynamic=False)
        impls["bnlib compiled"] = lambda x, w, b: batch_norm_compiled(x, None, None, w, b, True)
    return impls


def _parse_size(text):
    """A sysfs cache size such as ``"32768K"`` or ``"1M"`` in bytes; None if unreadable."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)B?\s*", text, re.IGNORECASE)
    if match is None:
        return None
    return int(match.group(1)) * 1024 ** " KMG".index(match.group(2).upper() or " ")


def last_level_cache_bytes(device=None, default=DEFAULT_CACHE_BYTES):
    """Size in bytes of the largest cache in front of main memory, or ``default`` if unknown.

    CPU: the highest-level data or unified cache of CPU 0, read from Linux's sysfs
    (``/sys/devices/system/cpu/cpu0/cache/index*/{level,type,size}``; on a processor whose L3
    is split between core complexes this is one complex's share, the cache a single thread
    uses). CUDA: the device's L2 cache (``torch.cuda.get_device_properties``). Anything else,
    or a file that is missing or unreadable: ``default`` (32 MiB).

    A copy or a pass over data larger than this size runs at the speed of main memory; data
    that fits may be read again from the cache.
    """
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda":
        size = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)
        return int(size) if size else default
    if device.type != "cpu":
        return default
    best = None
    for index in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            with open(os.path.join(index, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(index, "level")) as f:
                level = int(f.read())
            with open(os.path.join(index, "size")) as f:
                size = _parse_size(f.read())
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified") and size and (best is None or level > best[0]):
            best = (level, size)
    return best[1] if best else default


def keep_freed_memory():
    """Make glibc's malloc keep the memory this process frees; True where that worked.

    By default glibc returns freed memory to the operating system: it maps every block
    above a threshold separately and unmaps it when freed, and trims the top of its heap.
    The next allocation of that size then costs a page fault on every 4 KiB page it
    touches, which on a CPU can take longer than batch norm's own arithmetic (about 0.5 ms
    for 1 MiB on the machine that builds the book), and whether a given call pays it
    depends on the order of the allocations before it. With ``M_MMAP_MAX = 0`` (no
    separately mapped blocks) and the largest ``M_TRIM_THRESHOLD`` (never trim), freed memory
    is reused and the timings measure the kernels, not the allocator.

    Process-wide and not undone. Returns False (and changes nothing) where the C library is
    not glibc (macOS, Windows, musl).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or not hasattr(libc, "gnu_get_libc_version"):
        return False
    m_mmap_max, m_trim_threshold = -4, -1  # glibc's <malloc.h>
    return mallopt(m_mmap_max, 0) == 1 and mallopt(m_trim_threshold, 2**31 - 1) == 1


def _copy_bytes(device):
    """Source size of the yardstick copy: twice the last-level cache, within 64-512 MiB."""
    return min(max(2 * last_level_cache_bytes(device), MIN_COPY_BYTES), MAX_COPY_BYTES)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn, device, clock=time.perf_counter):
    _sync(device)
    start = clock()
    fn()
    _sync(device)
    return clock() - start


def interleaved_times(calls, samples, warmup, device=None, clock=None):
    """Time zero-argument callables round-robin; return ``{name: [seconds per round]}``.

    Every call runs ``warmup`` times first (untimed: compilation, first-touch page faults,
    caches), then ``samples`` rounds in which each call runs once, in turn. On a shared,
    noisy machine, interleaving exposes every call to the same disturbances, so ratios of
    medians are far more stable than the times themselves. ``device``: synchronize this CUDA
    device around every call (None or a CPU device: no synchronization). ``clock``: a function
    returning seconds, default ``time.perf_counter`` (wall time). ``time.process_time`` (CPU
    time of this process, user + system) leaves out the time the operating system gives
    other programs while a call runs: on a shared CPU, for single-threaded calls, it removes
    the largest disturbance (time spent waiting for memory still counts). It adds up the
    threads of a multi-threaded call, and it misses the time a CPU waits for a GPU: use it
    only for one thread on a CPU.
    """
    device = torch.device("cpu" if device is None else device)
    clock = time.perf_counter if clock is None else clock
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in calls}
    for _ in range(samples):
        for name, fn in calls.items():
            times[name].append(_time_once(fn, device, clock))
    return times


def saved_bytes(fn, x, weight, bias):
    """Bytes of the distinct tensors autograd saves for backward (inputs included)."""
    storages = {}

    def pack(t):
        storages[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x, weight, bias)
    return sum(storages.values())


def numpy_peak_bytes(fn, *args):
    """Peak bytes NumPy allocates while ``fn(*args)`` runs (tracemalloc)."""
    tracemalloc.start()
    try:
        fn(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _numpy_forward_backward(x, gamma, beta, dy):
    y, cache = bnp.batch_norm_forward(x, gamma, beta)
    return bnp.batch_norm_backward(dy, cache)


def _numpy_staged_forward_backward(x, gamma, beta, dy):
    y, cache = bnp.batch_norm_forward_staged(x, gamma, beta)
    return bnp.batch_norm_backward_staged(dy, cache)


def _summary(samples):
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def bench_shape(shape, dtype, device, samples, warmup, compiled=False, with_numpy=True,
                implementations=None, copy_bytes=None, extra=None, copy_between=False,
                clock=None):
    """All implementations and passes for one shape; returns a JSON-friendly dict.

    Every call below is timed in the same rounds, round-robin, after ``warmup`` untimed
    rounds: each implementation's forward pass and its forward+backward pass
    (``torch.autograd.grad`` of the output with respect to x, weight and bias, for a fixed
    random dy: no gradient is accumulated into ``.grad``), the NumPy closed form and staged
    versions (CPU float32 only, unless ``with_numpy=False``), and the zero-argument callables
    of ``extra``. A copy of ``copy_bytes`` bytes (default:
    twice the last-level cache, within 64-512 MiB, see :func:`last_level_cache_bytes`) is
    timed first in every round, or, with ``copy_between=True``, before every other call: the
    yardstick then gets many samples spread over the run, so that its median is robust on a
    machine shared with other work (and every call starts with caches that hold the copy,
    not its input: use it for inputs larger than the cache).

    Args:
        shape: ``(N, C, *)`` input shape; dtype, device: of the input (half-precision input
            gets float32 parameters).
        samples, warmup: timed and untimed rounds.
        compiled: include the compiled implementations of :func:`torch_implementations`.
        with_numpy: include the NumPy implementations (CPU float32 only).
        implementations: ``{name: fn(x, weight, bias)}`` in training mode, replacing
            :func:`torch_implementations`; it must contain ``"torch native"``, the reference
            of every ratio.
        copy_bytes: bytes of the copy's source.
        extra: ``{name: fn()}``, further calls timed in the same rounds (e.g. eval mode, a
            matrix product); their times are reported under ``"extra"``.
        clock: the clock of :func:`interleaved_times` (default: wall time).
        copy_between: time the copy before every call instead of once per round. Each call
            is then also compared with the copy timed just before it, round by round (see
            ``paired_fraction_of_copy_bandwidth`` and ``extra_copy_ratio`` below): the median
            of such paired ratios cancels slow changes in the machine's load, which the ratio
            of two medians does not.

    Returns:
        ``{"shape", "dtype", "device", "input_bytes", "copy_bytes", "copy_seconds" (median,
        min, max over all its samples), "copy_bandwidth_GBs" (bytes read plus bytes written
        by the copy, per second, median), "rows", "extra"}``.
        Each row: ``implementation``, ``pass``, ``seconds`` (median, min, max),
        ``ratio_to_native`` (the same over the native median of that pass),
        ``fraction_of_copy_bandwidth`` (compulsory bytes / median time / copy bandwidth), and
        ``saved_bytes_ratio`` (torch, forward+backward) or ``peak_bytes_ratio`` (NumPy,
        forward+backward). ``extra``: ``{name: seconds (median, min, max)}``.
        With ``copy_between=True`` only: each row also has
        ``paired_fraction_of_copy_bandwidth`` (the median over rounds of compulsory bytes /
        time / bandwidth of the copy timed just before the call, that round), and the result
        has ``"extra_copy_ratio"``: ``{name: median over rounds of (time of the copy just
        before) / (time of the call)}`` (multiply by the call's bytes moved / the copy's
        ``2 * copy_bytes`` for its fraction of copy speed).
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    dy = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    param_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    c = shape[1]
    weight = torch.ones(c, device=device, dtype=param_dtype, requires_grad=True)
    bias = torch.zeros(c, device=device, dtype=param_dtype, requires_grad=True)
    x_grad = x.clone().requires_grad_()
    nbytes = x.numel() * x.element_size()

    copy_bytes = _copy_bytes(device) if copy_bytes is None else int(copy_bytes)
    copy_src = torch.ones(copy_bytes // 4, device=device)  # float32; the values do not matter
    copy_dst = torch.empty_like(copy_src)
    calls = {}
    impls = torch_implementations(compiled) if implementations is None else dict(implementations)
    if "torch native" not in impls:
        raise ValueError("implementations must include 'torch native', the reference of "
                         "every ratio")
    for name, fn in impls.items():
        calls[f"{name}|forward"] = (lambda f=fn: f(x, weight, bias))
        calls[f"{name}|forward+backward"] = (
            lambda f=fn: torch.autograd.grad(f(x_grad, weight, bias), (x_grad, weight, bias), dy))
    x_np, dy_np = x.float().cpu().numpy(), dy.float().cpu().numpy()
    g_np, b_np = np.ones(c, np.float32), np.zeros(c, np.float32)
    numpy_ok = with_numpy and device.type == "cpu" and dtype == torch.float32
    numpy_passes = {"NumPy closed form": (bnp.batch_norm_forward, _numpy_forward_backward),
                    "NumPy staged": (bnp.batch_norm_forward_staged, _numpy_staged_forward_backward)}
    if numpy_ok:
        for name, (forward, forward_backward) in numpy_passes.items():
            calls[f"{name}|forward"] = lambda f=forward: f(x_np, g_np, b_np)
            calls[f"{name}|forward+backward"] = (
                lambda f=forward_backward: f(x_np, g_np, b_np, dy_np))
    extra = dict(extra or {})
    for name in extra:
        calls[f"extra|{name}"] = extra[name]
    with_copies = {}
    copy_before = {}
    for i, (key, fn) in enumerate(calls.items()):
        if i == 0 or copy_between:
            with_copies[f"copy|{i}"] = lambda: copy_dst.copy_(copy_src)
            copy_before[key] = f"copy|{i}"
        with_copies[key] = fn

    times = interleaved_times(with_copies, samples, warmup, device, clock)
    paired = {}  # call -> median over rounds of (copy time just before) / (call time)
    if copy_between:
        paired = {key: statistics.median(c / t if t > 0 else float("inf")
                                         for c, t in zip(times[copy_before[key]], times[key]))
                  for key in calls}
    copy_times = [t for key in with_copies if key.startswith("copy|") for t in times.pop(key)]
    copy_bw = 2 * copy_bytes / statistics.median(copy_times)
    result = {"shape": list(shape), "dtype": str(dtype).replace("torch.", ""),
              "device": str(device), "input_bytes": nbytes, "copy_bytes": copy_bytes,
              "copy_seconds": _summary(copy_times), "copy_bandwidth_GBs": copy_bw / 1e9,
              "rows": [],
              "extra": {name: _summary(times[f"extra|{name}"]) for name in extra}}
    if copy_between:
        result["extra_copy_ratio"] = {name: paired[f"extra|{name}"] for name in extra}
    for key, samples_ in times.items():
        if key.startswith("extra|"):
            continue
        name, pass_ = key.split("|")
        native = statistics.median(times[f"torch native|{pass_}"])
        compulsory = (2 if pass_ == "forward" else 5) * nbytes
        row = {"implementation": name, "pass": pass_, "seconds": _summary(samples_),
               "ratio_to_native": {k: v / native for k, v in _summary(samples_).items()},
               "fraction_of_copy_bandwidth": compulsory / statistics.median(samples_) / copy_bw}
        if copy_between:
            row["paired_fraction_of_copy_bandwidth"] = compulsory / (2 * copy_bytes) * paired[key]
        if pass_ == "forward+backward" and name in impls:
            row["saved_bytes_ratio"] = saved_bytes(impls[name], x_grad, weight, bias) / nbytes
        if pass_ == "forward+backward" and name in numpy_passes:
            row["peak_bytes_ratio"] = numpy_peak_bytes(
                numpy_passes[name][1], x_np, g_np, b_np, dy_np) / nbytes
        result["rows"].append(row)
    return result


def format_table(result):
    """One shape's rows as an aligned text table."""
    lines = [f"shape {tuple(result['shape'])}  {result['dtype']} on {result['device']}  "
             f"(input {result['input_bytes'] / 2**20:.1f} MiB, copy bandwidth "
             f"{result['copy_bandwidth_GBs']:.1f} GB/s over "
             f"{result.get('copy_bytes', result['input_bytes']) / 2**20:.0f} MiB)",
             f"  {'implementation':<26}{'pass':<18}{'median ms':>10}{'ratio (min-max)':>22}"
             f"{'of copy bw':>11}{'saved/B':>9}{'peak/B':>8}"]
    for row in result["rows"]:
        r = row["ratio_to_native"]
        ratio = f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})"
        saved = f"{row['saved_bytes_ratio']:.2f}" if "saved_bytes_ratio" in row else "-"
        peak = f"{row['peak_bytes_ratio']:.2f}" if "peak_bytes_ratio" in row else "-"
        lines.append(f"  {row['implementation']:<26}{row['pass']:<18}"
                     f"{row['seconds']['median'] * 1e3:>10.3f}{ratio:>22}"
                     f"{row['fraction_of_copy_bandwidth']:>11.2f}{saved:>9}{peak:>8}")
    for name, seconds in result.get("extra", {}).items():
        lines.append(f"  {name:<44}{seconds['median'] * 1e3:>10.3f}")
    return "\n".join(lines)


def _parse_shape(text):
    return tuple(int(v) for v in text.split(","))


def main(argv=None):
    """Run the benchmark with command-line arguments ``argv``; print the table, return the results."""
    parser = argparse.ArgumentParser(prog="python -m bnlib.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--samples", type=int, default=15, help="timed rounds (default 15)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small shapes, 5 samples (smoke test)")
    parser.add_argument("--shape", type=_parse_shape, action="append",
                        help="e.g. 64,64,32,32 (repeatable; default: the standard shapes)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true",
                        help="also time bnlib's opt-in torch.compile path and torch.compile of plain "
                             "ops (the first call per shape compiles: seconds)")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="keep freed memory in this process (glibc), so that no call pays "
                             "page faults for memory the allocator returned to the system")
    parser.add_argument("--no-fused-loops", action="store_true",
                        help="time bnlib.torch without its compiled CPU loops (its kernels of "
                             "torch operations, as on an install without a C++ compiler)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    with bnt.use_fused_loops(False) if args.no_fused_loops else contextlib.nullcontext():
        return _run(args)


def _run(args):
    """The benchmark of :func:`main`'s parsed arguments."""
    kept = keep_freed_memory() if args.keep_freed_memory else False
    if args.keep_freed_memory and not kept:
        print("--keep-freed-memory: not available here (the C library is not glibc)")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shapes = args.shape or (QUICK_SHAPES if args.quick else STANDARD_SHAPES)
    samples, warmup = (5, 1) if args.quick else (args.samples, args.warmup)
    loops = bnt.fused_loops_available() and not args.no_fused_loops
    results = {"torch": torch.__version__, "threads": args.threads, "samples": samples,
               "fused_loops": loops,
               "freed_memory_kept": kept, "shapes": []}
    print(f"bnlib benchmark: torch {torch.__version__}, {args.threads} thread(s), "
          f"{samples} interleaved samples; ratios are median (min-max) of time / native"
          + ("; freed memory kept (no page faults from the allocator)" if kept else ""))
    print("bnlib.torch's CPU route: " + (
        "compiled loops (bnlib/torch/_fused.cpp)" if loops else
        "torch operations (--no-fused-loops)" if args.no_fused_loops else
        "torch operations (the compiled loops were not built: no C++ compiler at install)"))
    for shape in shapes:
        result = bench_shape(shape, DTYPES[args.dtype], device, samples, warmup, args.compile)
        results["shapes"].append(result)
        print(format_table(result), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
