"""The compiled loops of bnlib.torch on a CPU (bnlib.torch._fused_kernels and
bnlib/torch/_fused.cpp): where they apply, that their bits do not depend on the CPU's vector
units, eval mode bit for bit as the torch-operations route, and their numerics on every
layout and edge that route handles. (Parity with torch.nn on both routes: tests/test_parity.py.)"""

import shutil
import subprocess
import sys
import sysconfig

import pytest
import torch

from bnlib import torch as bnt
from bnlib.torch import _fused_kernels
from tests.reference import TOL, dx_scale, functional_data, functional_step, rel_err

pytestmark = pytest.mark.usefixtures("fused_loops_route")


def test_the_loops_are_built_where_a_compiler_is():
    """`make test` installs bnlib with the machine's compiler: a missing module is a failed
    build, not a slow machine."""
    compiler = (sysconfig.get_config_var("CXX") or "c++").split()[0]
    if shutil.which(compiler) is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler on this machine")
    assert _fused_kernels.available()


@pytest.mark.parametrize("shape,channels_last", [
    ((256, 40), False),           # (N, C): rows of channels, 40 = 2 vectors + a tail
    ((37, 3), False),             # fewer channels than a vector
    ((8, 5, 33), False),          # runs of 33: two vectors of lanes and a tail
    ((6, 16, 9, 7), False),       # runs of 63
    ((6, 19, 9, 7), True),        # channels-last: rows of 19 channels
    ((3, 10, 4, 5, 6), True),     # channels-last 3-D
    ((2, 6, 1), False),
])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_layout_matches_torch(shape, channels_last, dtype):
    x, dy, weight, bias = functional_data(shape, dtype, channels_last=channels_last)
    assert _fused_kernels.layout(x) is not None  # the loops really run
    got = functional_step(bnt.batch_norm, x, dy, weight, bias)
    want = functional_step(torch.nn.functional.batch_norm,
                             *(t.double() for t in (x, dy, weight, bias)))
    terms = dx_scale(x.double().numpy(), dy.double().numpy(), weight.double().numpy())
    for g, w, what in zip(got, want, ("y", "dx", "dweight", "dbias")):
        assert g.dtype == dtype and g.shape == w.shape, what
        err = rel_err(g.double(), w, scale=terms if what == "dx" else 0.0)
        assert err < (TOL if dtype == torch.float64 else 2e-6), (what, err)
    assert got[0].is_contiguous(memory_format=torch.channels_last if x.dim() == 4 else
                                torch.channels_last_3d) if channels_last else got[0].is_contiguous()


def test_use_fused_loops_switches_them_for_the_block_and_the_backward_follows_its_forward(
        monkeypatch):
    calls = []
    for name in ("forward", "backward"):
        original = getattr(_fused_kernels, name)
        monkeypatch.setattr(_fused_kernels, name,
                            lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    x = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    with bnt.use_fused_loops(False):
        y = bnt.batch_norm(x, None, None, training=True)
        assert not _fused_kernels.enabled()
    assert _fused_kernels.enabled()
    y.sum().backward()  # outside the block: still the torch operations, as its forward
    assert calls == []
    with pytest.raises(ValueError), bnt.use_fused_loops(False):
        raise ValueError  # restored on an exception too
    assert _fused_kernels.enabled()


def test_use_fused_loops_true_without_the_loops_is_an_error(monkeypatch):
    monkeypatch.setattr(_fused_kernels, "_fused", None)
    with pytest.raises(RuntimeError, match="not built"):
        with bnt.use_fused_loops(True):
            pass


def _bits(t):
    """The bits of a float tensor as integers (torch.equal takes -0.0 for 0.0)."""
    return t.contiguous().view(torch.int32 if t.dtype == torch.float32 else torch.int64)


@pytest.mark.parametrize("terms", ["weight and bias", "negative weight", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,channels_last", [((50, 7), False), ((6, 5, 4, 3), True)])
def test_eval_mode_gives_the_bits_of_the_torch_operations_route(shape, channels_last, dtype,
                                                                 terms):
    """One pass, the same operations in the same order (subtract, multiply, add); zeros keep
    their sign without a bias (x equal to the running mean times a negative weight: -0.0)."""
    x, _, weight, bias = functional_data(shape, dtype, channels_last=channels_last)
    mean = torch.randn(shape[1], dtype=torch.float64).to(dtype)
    var = torch.rand(shape[1], dtype=torch.float64).to(dtype) + 0.5
    x[0] = mean.view([-1] + [1] * (x.dim() - 2))
    x[1] = -x[2]
    weight, bias = {"weight and bias": (weight, bias), "negative weight": (-weight, None),
                    "none": (None, None)}[terms]
    args = (mean, var, weight, bias, False)
    calls = []
    original = _fused_kernels.normalize_fixed
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_fused_kernels, "normalize_fixed",
                      lambda *a: calls.append(1) or original(*a))
        fused = bnt.batch_norm(x, *args)
    assert calls and fused is not None  # the loops ran
    if terms == "negative weight":
        assert torch.signbit(fused[0]).all() and (fused[0] == 0).all()
    with bnt.use_fused_loops(False):
        assert torch.equal(_bits(fused), _bits(bnt.batch_norm(x, *args)))
    assert fused.is_contiguous(memory_format=torch.channels_last if channels_last else
                               torch.contiguous_format)


@pytest.mark.parametrize("x", [
    torch.randn(4, 3, dtype=torch.float16),
    torch.randn(4, 3, dtype=torch.bfloat16),
    torch.randn(3, 4).t(),                          # transposed: neither layout
    torch.randn(4, 3, 5, 2)[:, :, ::2],             # strided
], ids=["float16", "bfloat16", "transposed", "strided"])
def test_the_loops_do_not_apply_to_other_dtypes_and_layouts(x):
    assert _fused_kernels.layout(x) is None


def test_batch_norm_takes_the_loops_where_they_apply(monkeypatch):
    calls = []
    for name in ("forward", "backward"):
        original = getattr(_fused_kernels, name)
        monkeypatch.setattr(_fused_kernels, name,
                            lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    x, dy, weight, bias = functional_data((8, 3))
    functional_step(bnt.batch_norm, x, dy, weight, bias)
    assert calls == ["forward", "backward"]


@pytest.mark.parametrize("threads,nbytes,fused", [
    (1, 64 << 20, True), (2, 64 << 20, True),   # one or two threads: any size
    (4, 1 << 20, True),                         # more: inputs a core's cache holds
    (4, (1 << 20) + 8, False),                  # and not larger ones
])
def test_with_more_than_two_threads_large_inputs_go_to_torchs_thread_pool(threads, nbytes,
                                                                            fused):
    x = torch.empty(nbytes // 8, 1, dtype=torch.float64)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        assert (_fused_kernels.layout(x) is not None) == fused
    finally:
        torch.set_num_threads(before)


def _build(tmp_path, name, *flags):
    """The loops compiled from source into tmp_path/name, one vector unit (no clones)."""
    compiler = shutil.which("g++") or shutil.which("c++")
    source = _fused_kernels.__file__.replace("_fused_kernels.py", "_fused.cpp")
    target = tmp_path / name / f"_fused{sysconfig.get_config_var('EXT_SUFFIX')}"
    target.parent.mkdir()
    subprocess.run([compiler, "-DBNLIB_NO_CLONES", *flags, "-O3", "-std=c++17",
                    "-ffp-contract=off", "-fno-fast-math", "-Wno-psabi", "-fPIC", "-shared",
                    f"-I{sysconfig.get_paths()['include']}", source, "-o", str(target)],
                   check=True)
    return target.parent


# Run in a subprocess with one build of the loops: forward and backward (single-pass and
# two-pass variance) and eval mode, float32 and float64, both layouts; saves the results.
_RUN_WITH_BUILD = """
import sys, torch
sys.path.insert(0, sys.argv[1])
import _fused
from bnlib.torch import _fused_kernels
_fused_kernels._fused = _fused
from bnlib import torch as bnt
from tests.reference import functional_data, functional_step
out = []
for shape, dtype in [((300, 37), torch.float32), ((12, 19, 9, 7), torch.float32),
                     ((300, 37), torch.float64), ((12, 19, 9, 7), torch.float64)]:
    x, dy, weight, bias = functional_data(shape, dtype, offset=5.0)
    out.append(functional_step(bnt.batch_norm, x, dy, weight, bias))
    x[:-(-16 // x[0, 0].numel())] = 60.0  # the pivot's samples far off: two-pass variance
    out.append(functional_step(bnt.batch_norm, x, dy, weight, bias))
    out.append([bnt.batch_norm(x, bias, weight, -weight, None, False)])  # eval, no offset
torch.save(out, sys.argv[2])
"""


def test_the_bits_do_not_depend_on_the_vector_unit(tmp_path):
    """The source compiled for SSE2 (x86-64's baseline) and for Haswell (AVX2 and FMA: a
    multiply-add the compiler contracted would change the bits) computes the same bits."""
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("no C++ compiler on this machine")
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("this CPU has no AVX2: only one vector unit to run")
    results = []
    for name, flags in (("sse2", ["-march=x86-64"]), ("avx2", ["-march=haswell"])):
        directory = _build(tmp_path, name, *flags)
        saved = tmp_path / f"{name}.pt"
        subprocess.run([sys.executable, "-c", _RUN_WITH_BUILD, str(directory), str(saved)],
                       check=True)
        results.append(torch.load(saved))
    for a, b in zip(*results):
        for u, v in zip(a, b):
            assert torch.equal(_bits(u), _bits(v))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_far_pivot_takes_the_two_pass_variance(dtype):
    """Channel 0 starts with 16 values of 50 among 40000 N(0, 1): the pivot is far from the
    mean (shift^2 > 4 var), so the loops sum the squares about the mean in a second pass.
    (In float32 the single-pass variance would lose about 2500 times the rounding error, far
    beyond the bound; in float64 the double sums hide it, so only float32 detects a broken
    fallback.)"""
    x, dy, weight, bias = functional_data((40000, 3))  # 960 KB in float64: the loops at any thread count
    x[:16, 0] = 50.0
    x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
    view = _fused_kernels.layout(x)
    y, mean, var, _ = _fused_kernels.forward(x, weight, bias, 1e-5, view)
    centred = x.double() - x.double().mean(0)
    want_var = (centred * centred).mean(0)
    assert rel_err(var.double(), want_var) < (1e-6 if dtype == torch.float32 else TOL)
    ref = torch.nn.functional.batch_norm(x.double(), None, None, weight.double(),
                                         bias.double(), True)
    assert rel_err(y.double(), ref) < (1e-6 if dtype == torch.float32 else TOL)


def test_non_finite_values_stay_in_their_channel_as_in_torch():
    x = torch.randn(64, 4, 3, dtype=torch.float64)
    x[5, 1, 2], x[0, 2, 0] = float("nan"), float("inf")  # the inf among the pivot's values
    rm, rv = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    y = bnt.batch_norm(x, rm, rv, training=True)
    rm_t, rv_t = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    want = torch.nn.functional.batch_norm(x, rm_t, rv_t, training=True)
    assert y[:, 1].isnan().all() and y[:, 2].isnan().all()
    assert rel_err(y[:, [0, 3]], want[:, [0, 3]]) < TOL
    assert rm[2] == float("inf") and rv[2].isnan() and rm[1].isnan()
    assert rel_err(rm[[0, 3]], rm_t[[0, 3]]) < TOL and rel_err(rv[[0, 3]], rv_t[[0, 3]]) < TOL


def test_an_expanded_gradient_is_laid_out_like_the_input():
    """y.sum().backward() sends an expanded dy (every stride 0): copied, then the loops run."""
    x = torch.randn(10, 3, 4, dtype=torch.float64, requires_grad=True)
    bnt.batch_norm(x, None, None, training=True).sum().backward()
    x_t = x.detach().clone().requires_grad_()
    torch.nn.functional.batch_norm(x_t, None, None, training=True).sum().backward()
    assert rel_err(x.grad, x_t.grad, scale=1.0) < TOL


@pytest.mark.parametrize("args,error", [
    ((0, 0), TypeError),                             # too few arguments
    ((2, 0, 1, 1, 1, 1, 0), ValueError),             # dtype code 2
    ((0, "x", 1, 1, 1, 1, 0), TypeError),            # not an integer
])
def test_the_module_checks_its_arguments_before_it_reads_memory(args, error):
    with pytest.raises(error):
        _fused_kernels._fused.moments(*args)


def test_a_default_device_does_not_move_the_loops_buffers():
    """Under ``torch.device("meta")`` (or set_default_device) a CPU input still gets CPU
    buffers: the loops write only where x lives."""
    x, dy, weight, bias = functional_data((16, 3, 4))
    want = functional_step(torch.nn.functional.batch_norm, x, dy, weight, bias)
    with torch.device("meta"):
        got = functional_step(bnt.batch_norm, x, dy, weight, bias)
        y_eval = bnt.batch_norm(x, bias, weight + 1, weight, bias, False)
    for g, w in zip(got, want):
        assert g.device.type == "cpu" and rel_err(g, w) < TOL
    assert rel_err(y_eval, torch.nn.functional.batch_norm(x, bias, weight + 1, weight, bias,
                                                          False)) < TOL


def _repack_contiguous(t):
    return t.contiguous()


def test_saved_tensors_that_come_back_changed_take_the_torch_operations_route():
    """A saved-tensor hook may return x in another layout (here contiguous, as
    save_on_cpu(pin_memory=True) does) or dtype: the backward checks what it got back."""
    x, dy, weight, bias = functional_data((8, 6, 5, 4), channels_last=True)
    want = functional_step(torch.nn.functional.batch_norm, x, dy, weight, bias)
    with torch.autograd.graph.saved_tensors_hooks(_repack_contiguous, _repack_contiguous):
        got = functional_step(bnt.batch_norm, x, dy, weight, bias)
    for g, w in zip(got, want):
        assert rel_err(g, w) < TOL
    # float64 saved as float32: no crash, gradients to float32 rounding
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t.float(), lambda t: t):
        got = functional_step(bnt.batch_norm, x, dy, weight, bias)
    for g, w in zip(got[1:], want[1:]):
        assert rel_err(g, w) < 1e-5


def test_make_fx_traces_torch_operations_not_the_loops():
    """A dispatch mode (make_fx, FlopCounterMode) sees only torch operations: with one
    active, the loops stand aside and the traced graph computes batch norm."""
    from torch.fx.experimental.proxy_tensor import make_fx

    x = torch.randn(10, 3, 4, dtype=torch.float64)

    def f(t):
        return bnt.batch_norm(t, None, None, training=True)

    graph = make_fx(f)(x)
    x2 = torch.randn(10, 3, 4, dtype=torch.float64)
    assert rel_err(graph(x2), torch.nn.functional.batch_norm(x2, None, None,
                                                             training=True)) < TOL


def test_a_lazy_negation_or_a_zero_gradient_takes_the_torch_operations_route():
    """Tensors whose memory does not hold their values (a negative view, an efficient zero
    tensor) are not handed to the loops."""
    x, dy, weight, bias = functional_data((8, 3))
    negated = torch._neg_view(x)
    assert negated.is_neg() and _fused_kernels.layout(negated) is None
    assert rel_err(bnt.batch_norm(negated, None, None, training=True),
                   torch.nn.functional.batch_norm(-x, None, None, training=True)) < TOL
    mean, var = torch.zeros(3, dtype=x.dtype), torch.ones(3, dtype=x.dtype)
    for name, args in (("mean", (torch._neg_view(mean + 1), var, weight, bias)),
                       ("bias", (mean, var, weight, torch._neg_view(bias)))):
        want = [a.resolve_neg() for a in args]
        assert rel_err(bnt.batch_norm(x, *args, False),
                       torch.nn.functional.batch_norm(x, *want, False)) < TOL, name
    zero = torch._efficientzerotensor(x.shape, dtype=x.dtype)
    got = functional_step(bnt.batch_norm, x, zero, weight, bias)
    assert not got[1].any() and not got[2].any() and not got[3].any()


def test_use_fused_loops_holds_in_its_own_thread_only():
    import threading

    inside, release, seen = threading.Event(), threading.Event(), []

    def worker():
        with bnt.use_fused_loops(False):
            inside.set()
            release.wait(10)
            seen.append(_fused_kernels.enabled())

    thread = threading.Thread(target=worker)
    thread.start()
    inside.wait(10)
    try:
        assert _fused_kernels.enabled()  # this thread: still on
    finally:
        release.set()
        thread.join()
    assert seen == [False]
