"""The benchmark: --quick mode as a smoke test (it runs and reports every cell; no timing asserts),
and its helpers (cache size, interleaving, chosen implementations and extra calls)."""

import json
import time

import pytest
import torch

from bnlib import bench


def test_quick_benchmark_reports_every_implementation_and_pass(tmp_path, capsys):
    out = tmp_path / "bench.json"
    results = bench.main(["--quick", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert "ratio" in capsys.readouterr().out
    for shape in results["shapes"]:
        rows = {(r["implementation"], r["pass"]): r for r in shape["rows"]}
        for name in ("torch native", "bnlib.torch", "plain ops + autograd", "NumPy closed form",
                     "NumPy staged"):
            for pass_ in ("forward", "forward+backward"):
                row = rows[(name, pass_)]
                assert row["seconds"]["min"] > 0 and row["fraction_of_copy_bandwidth"] > 0
        assert rows[("torch native", "forward")]["ratio_to_native"]["median"] == 1.0
        # Memory is deterministic: bnlib's backward keeps x and per-channel vectors only.
        assert rows[("bnlib.torch", "forward+backward")]["saved_bytes_ratio"] <= 1.1
        assert rows[("plain ops + autograd", "forward+backward")]["saved_bytes_ratio"] >= 2
        staged, closed = (rows[(n, "forward+backward")]["peak_bytes_ratio"]
                          for n in ("NumPy staged", "NumPy closed form"))
        assert staged > closed


def test_last_level_cache_size_is_read_from_sysfs_or_falls_back(monkeypatch):
    size = bench.last_level_cache_bytes()
    assert isinstance(size, int) and size >= 2**16
    assert bench.last_level_cache_bytes("meta", default=123) == 123
    monkeypatch.setattr(bench.glob, "glob", lambda pattern: [])  # no sysfs (e.g. macOS)
    assert bench.last_level_cache_bytes(default=456) == 456
    assert bench._parse_size("32768K") == 32 * 2**20 and bench._parse_size("1M") == 2**20
    assert bench._parse_size("") is None and bench._parse_size("large") is None


def test_interleaved_times_runs_warmup_then_rounds_in_turn():
    order = []
    calls = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    times = bench.interleaved_times(calls, samples=3, warmup=2)
    assert order == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert {name: len(t) for name, t in times.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for ts in times.values() for t in ts)


def test_bench_shape_with_chosen_implementations_copy_size_and_extra_calls():
    impls = {name: fn for name, fn in bench.torch_implementations().items()
             if name in ("torch native", "bnlib.torch")}
    calls = []
    result = bench.bench_shape((8, 4, 5, 5), torch.float32, torch.device("cpu"), samples=2,
                               warmup=1, with_numpy=False, implementations=impls,
                               copy_bytes=2**20, extra={"noop": lambda: calls.append(1)})
    assert result["copy_bytes"] == 2**20 and result["copy_bandwidth_GBs"] > 0
    assert 0 < result["copy_seconds"]["min"] <= result["copy_seconds"]["median"]
    between = bench.bench_shape((8, 4), torch.float32, torch.device("cpu"), samples=1, warmup=0,
                                with_numpy=False, implementations=impls, copy_bytes=2**20,
                                copy_between=True)
    assert between["copy_seconds"]["min"] > 0 and len(between["rows"]) == 4
    assert {(r["implementation"], r["pass"]) for r in result["rows"]} == {
        (name, p) for name in impls for p in ("forward", "forward+backward")}
    assert set(result["extra"]) == {"noop"} and len(calls) == 3  # 1 warm-up + 2 rounds
    assert "noop" in bench.format_table(result)
    with pytest.raises(ValueError, match="torch native"):
        bench.bench_shape((8, 4), torch.float32, torch.device("cpu"), samples=1, warmup=0,
                          implementations={"bnlib.torch": impls["bnlib.torch"]})


def test_bench_shape_pairs_every_call_with_the_copy_before_it():
    impls = {name: fn for name, fn in bench.torch_implementations().items()
             if name in ("torch native", "bnlib.torch")}
    result = bench.bench_shape((8, 4), torch.float32, torch.device("cpu"), samples=3, warmup=0,
                               with_numpy=False, implementations=impls, copy_bytes=2**20,
                               extra={"copy again": lambda: torch.ones(2**18).clone()},
                               copy_between=True)
    assert set(result["extra_copy_ratio"]) == {"copy again"}
    assert result["extra_copy_ratio"]["copy again"] > 0
    assert all(r["paired_fraction_of_copy_bandwidth"] > 0 for r in result["rows"])
    once = bench.bench_shape((8, 4), torch.float32, torch.device("cpu"), samples=1, warmup=0,
                             with_numpy=False, implementations=impls, copy_bytes=2**20)
    assert "extra_copy_ratio" not in once
    assert all("paired_fraction_of_copy_bandwidth" not in r for r in once["rows"])


def test_interleaved_times_and_bench_shape_take_a_clock():
    ticks = iter(range(1000))
    times = bench.interleaved_times({"a": lambda: None}, samples=3, warmup=1,
                                    clock=lambda: float(next(ticks)))
    assert times == {"a": [1.0, 1.0, 1.0]}  # every call reads the clock twice
    impls = {"torch native": bench.torch_implementations()["torch native"]}
    result = bench.bench_shape((8, 4), torch.float32, torch.device("cpu"), samples=2, warmup=0,
                               with_numpy=False, implementations=impls, copy_bytes=2**20,
                               clock=time.process_time)
    assert result["copy_seconds"]["min"] >= 0 and len(result["rows"]) == 2


def test_default_copy_is_larger_than_the_last_level_cache():
    assert bench._copy_bytes(torch.device("cpu")) >= min(2 * bench.last_level_cache_bytes(),
                                                         bench.MAX_COPY_BYTES)


def test_keep_freed_memory_removes_the_allocators_page_faults():
    """In a fresh process (the setting is process-wide): on glibc, repeated allocations of a
    64 MiB tensor fault on every page by default and hardly at all once freed memory is kept;
    the command-line flag turns it on and says so."""
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    code = """if True:
        import json, resource, sys, torch
        from bnlib import bench
        x = torch.randn(2**24)  # 64 MiB: glibc maps blocks above 32 MiB separately
        def faults():
            for _ in range(3):
                x.clone()
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(5):
                x.clone()
            return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
        default = faults()
        kept = bench.keep_freed_memory()
        results = bench.main(["--keep-freed-memory", "--shape", "8,4", "--samples", "1",
                              "--warmup", "0"])
        print(json.dumps([default, kept, faults(), results["freed_memory_kept"]]))
    """
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    default, kept, after, flag = json.loads(run.stdout.strip().splitlines()[-1])
    pages = 2**24 * 4 // 4096
    assert kept and flag and "freed memory kept" in run.stdout
    assert default > pages / 2 and after < pages / 20, (default, after)


def test_no_fused_loops_times_bnlib_in_torch_operations(monkeypatch, capsys):
    from bnlib.torch import _fused_kernels

    calls = []
    original = _fused_kernels.forward
    monkeypatch.setattr(_fused_kernels, "forward", lambda *a: calls.append(1) or original(*a))
    results = bench.main(["--no-fused-loops", "--shape", "8,4", "--samples", "1",
                          "--warmup", "0"])
    assert calls == [] and results["fused_loops"] is False
    assert "torch operations (--no-fused-loops)" in capsys.readouterr().out
    assert _fused_kernels.enabled() == _fused_kernels.available()  # restored afterwards
