"""bnlib.torch.functional.batch_norm: first and second derivatives checked by torch.autograd
(CPU and CUDA), what the backward saves, half-precision input. (Parity with
torch.nn.functional.batch_norm: tests/test_parity.py; bad arguments: tests/book/test_edge_cases.py
and tests/test_errors.py; the kernels' routes: tests/torch/test_kernels.py.)"""

import pytest
import torch

from bnlib import torch as bnt


def _inputs(shape, device, affine):
    gen = torch.Generator().manual_seed(0)
    c = shape[1]
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1).to(device)
    params = [torch.rand(c, generator=gen, dtype=torch.float64).add(0.5).to(device),
              torch.randn(c, generator=gen, dtype=torch.float64).to(device)] if affine else []
    stats = [torch.randn(c, generator=gen, dtype=torch.float64).to(device),
             torch.rand(c, generator=gen, dtype=torch.float64).add(0.5).to(device)]
    return x, params, stats


@pytest.mark.usefixtures("cpu_route")
@pytest.mark.parametrize("shape", [(6, 3), (3, 2, 4), (2, 3, 3, 2)])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_batch_norm_passes_gradcheck_and_gradgradcheck(shape, training, affine, device):
    x, params, stats = _inputs(shape, device, affine)
    inputs = [t.requires_grad_() for t in [x, *params]]

    def f(x, *p):
        weight, bias = p if p else (None, None)
        running = [s.clone() for s in stats]  # fresh copies: the check calls f many times
        return bnt.batch_norm(x, *running, weight, bias, training=training)

    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.usefixtures("cpu_route")
def test_backward_saves_only_the_input_and_per_channel_vectors():
    x = torch.randn(8, 4, 5, 5, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        bnt.batch_norm(x, None, None, torch.ones(4, requires_grad=True), None, training=True)
    big = [t for t in saved if t.numel() == x.numel()]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr()  # x itself, no copy
    assert all(t.numel() <= 4 for t in saved if t.numel() != x.numel())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_keeps_its_dtype_and_matches_float32(dtype, device):
    x32 = torch.randn(16, 3, 8, 8, device=device) * 3 + 2
    x = x32.to(dtype).requires_grad_()
    w = torch.ones(3, device=device, requires_grad=True)
    y = bnt.batch_norm(x, None, None, w, None, training=True)
    y.float().square().sum().backward()
    ref = torch.nn.functional.batch_norm(x.detach().float(), None, None, training=True)
    assert y.dtype == dtype and x.grad.dtype == dtype and w.grad.dtype == torch.float32
    assert (y.float() - ref).abs().max() < 0.05


def test_float16_statistics_do_not_overflow():
    """Values near float16's maximum (65504): their squares overflow float16 but not float32."""
    x = (torch.rand(64, 2, 128, 128, generator=torch.Generator().manual_seed(0)) * 6e4).half()
    y = bnt.batch_norm(x, None, None, training=True)
    assert torch.isfinite(y).all()
    ref = torch.nn.functional.batch_norm(x.double(), None, None, training=True)
    assert (y.double() - ref).abs().max() < 0.01


@pytest.mark.parametrize("shape", [(8, 4), (8, 4, 5), (4, 3, 4, 4)])
def test_autocast_does_not_round_the_statistics(shape, device):
    """Under torch.autocast (bfloat16 on a CPU, float16 on a GPU) float32 input is normalized
    in float32, as by torch's kernel: autocast would otherwise run the sums of products
    (linalg.vecdot, a matrix product to it) in half precision."""
    half = torch.bfloat16 if device == "cpu" else torch.float16
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(shape, generator=gen) * 3 + 1).to(device).requires_grad_()
    dy = torch.randn(shape, generator=gen).to(device)
    w = torch.rand(shape[1], generator=gen).add(0.5).to(device).requires_grad_()
    with torch.autocast(device, dtype=half):
        y = bnt.batch_norm(x, None, None, w, None, training=True)
        y.backward(dy)  # the backward inside the region too
    xd, wd = (t.detach().double().requires_grad_() for t in (x, w))
    ref = torch.nn.functional.batch_norm(xd, None, None, wd, None, training=True)
    ref.backward(dy.double())
    assert y.dtype == torch.float32
    for got, want in ((y, ref), (x.grad, xd.grad), (w.grad, wd.grad)):
        assert (got.double() - want).abs().max() < 1e-5 * want.abs().max()


@pytest.mark.usefixtures("cpu_route")
@pytest.mark.parametrize("shape", [(0, 3), (4, 3, 0), (0, 3, 2, 2)])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_an_empty_input_gives_an_empty_output_as_in_torch(shape, training):
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    x = torch.empty(shape, dtype=torch.float64)
    y = bnt.batch_norm(x, rm, rv, training=training)
    want = torch.nn.functional.batch_norm(x, rm.clone(), rv.clone(), training=training)
    assert y.shape == want.shape == shape and torch.equal(rm, torch.zeros(3, dtype=torch.float64))
