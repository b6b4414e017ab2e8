"""Benchmark of bnlib against torch's native batch norm: ``python -m bnlib.bench``.

Method (see the book's appendix "What batch norm costs"): machines are noisy, so every figure
is a ratio to ``torch.nn.functional.batch_norm`` measured in the same run. Implementations are
interleaved round-robin after a warm-up; each cell reports the median, min and max of the
samples. Batch norm is memory-bound, so each time is also expressed as a fraction of the
memory-copy bandwidth measured in the same run: compulsory bytes (forward reads x and writes
y: 2B; forward+backward also reads dy and x and writes dx: 5B, B = bytes of x) divided by the
time, divided by the bandwidth of ``dst.copy_(src)`` (which moves 2B).

Also reported: bytes saved for backward (via ``torch.autograd.graph.saved_tensors_hooks``,
relative to B) and the peak memory of the NumPy forward+backward (``tracemalloc``, relative
to B).

Examples::

    python -m bnlib.bench                      # the standard shapes, 1 thread, float32
    python -m bnlib.bench --threads 2 --json bench.json
    python -m bnlib.bench --quick              # small shapes, few samples (< 30 s): a smoke test
    python -m bnlib.bench --device cuda --dtype bfloat16 --shape 256,256,56,56
"""

import argparse
import json
import statistics
import sys
import time
import tracemalloc

import numpy as np
import torch

from bnlib import numpy as bnp
from bnlib import torch as bnt
from bnlib.torch.compiled import batch_norm_compiled

__all__ = ["bench_shape", "format_table", "main", "numpy_peak_bytes", "saved_bytes",
           "torch_implementations"]

STANDARD_SHAPES = [(256, 1024), (64, 64, 32, 32), (32, 256, 14, 14)]
QUICK_SHAPES = [(64, 256), (8, 16, 16, 16)]
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


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn, device):
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _interleaved(calls, samples, warmup, device):
    """Run every call ``warmup`` times, then ``samples`` rounds in turn; return its times."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in calls}
    for _ in range(samples):
        for name, fn in calls.items():
            times[name].append(_time_once(fn, device))
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


def bench_shape(shape, dtype, device, samples, warmup, compiled=False, with_numpy=True):
    """All implementations and passes for one shape; returns a JSON-friendly dict."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    dy = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    param_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    c = shape[1]
    weight = torch.ones(c, device=device, dtype=param_dtype, requires_grad=True)
    bias = torch.zeros(c, device=device, dtype=param_dtype, requires_grad=True)
    x_grad = x.clone().requires_grad_()
    nbytes = x.numel() * x.element_size()

    copy_dst = torch.empty_like(x)
    calls = {"copy": lambda: copy_dst.copy_(x)}
    impls = torch_implementations(compiled)
    for name, fn in impls.items():
        calls[f"{name}|forward"] = (lambda f=fn: f(x, weight, bias))
        calls[f"{name}|forward+backward"] = (
            lambda f=fn: torch.autograd.backward(f(x_grad, weight, bias), dy))
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

    times = _interleaved(calls, samples, warmup, device)
    copy_bw = 2 * nbytes / statistics.median(times["copy"])
    result = {"shape": list(shape), "dtype": str(dtype).replace("torch.", ""),
              "device": str(device), "input_bytes": nbytes, "copy_bandwidth_GBs": copy_bw / 1e9,
              "rows": []}
    for key, samples_ in times.items():
        if key == "copy":
            continue
        name, pass_ = key.split("|")
        native = statistics.median(times[f"torch native|{pass_}"])
        compulsory = (2 if pass_ == "forward" else 5) * nbytes
        row = {"implementation": name, "pass": pass_, "seconds": _summary(samples_),
               "ratio_to_native": {k: v / native for k, v in _summary(samples_).items()},
               "fraction_of_copy_bandwidth": compulsory / statistics.median(samples_) / copy_bw}
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
             f"{result['copy_bandwidth_GBs']:.1f} GB/s)",
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
                        help="also time bnlib's opt-in compiled path and torch.compile of plain "
                             "ops (the first call per shape compiles: seconds)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shapes = args.shape or (QUICK_SHAPES if args.quick else STANDARD_SHAPES)
    samples, warmup = (5, 1) if args.quick else (args.samples, args.warmup)
    results = {"torch": torch.__version__, "threads": args.threads, "samples": samples,
               "shapes": []}
    print(f"bnlib benchmark: torch {torch.__version__}, {args.threads} thread(s), "
          f"{samples} interleaved samples; ratios are median (min-max) of time / native")
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
