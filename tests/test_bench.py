"""The benchmark's --quick mode as a smoke test: it runs and reports every cell (no timing asserts)."""

import json

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
