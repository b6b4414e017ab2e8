"""bnlib's modules are torch.nn citizens: torch's own utilities and program transformations
treat a model built from bnlib layers exactly as the same model built from torch.nn layers."""

import copy
import inspect
import io
import warnings

import pytest
import torch

from bnlib import torch as bnt

# torch 2.13's dynamo creates a bare torch.autograd.Function() while it traces any custom
# autograd.Function (torch/_dynamo/side_effects.py), which warns about itself; not ours.
DYNAMO_FUNCTION_WARNING = "ignore:.*should not be instantiated:DeprecationWarning"

# bnlib's modules take torch's constructor as it is: BatchNorm*d and GroupNorm have the
# keyword-only bias= from torch 2.13 (bnlib itself supports torch >= 2.4).
NEEDS_BIAS_KEYWORD = pytest.mark.skipif(
    "bias" not in inspect.signature(torch.nn.BatchNorm1d.__init__).parameters,
    reason="torch.nn.BatchNorm*d and GroupNorm take bias= from torch 2.13")


def _net(bn2d, bn1d):
    """A small CNN with a 2-D and a 1-D batch norm (the same construction order for both)."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), bn2d(8), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 16), bn1d(16), torch.nn.ReLU(),
        torch.nn.Linear(16, 4))


def _pair(dtype=torch.float64, **kwargs):
    """The same network from bnlib's and from torch's modules, with equal state."""
    torch.manual_seed(0)
    ours = _net(lambda c: bnt.BatchNorm2d(c, dtype=dtype, **kwargs),
                lambda c: bnt.BatchNorm1d(c, dtype=dtype, **kwargs)).to(dtype)
    theirs = _net(lambda c: torch.nn.BatchNorm2d(c, dtype=dtype, **kwargs),
                  lambda c: torch.nn.BatchNorm1d(c, dtype=dtype, **kwargs)).to(dtype)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _x(n=6, dtype=torch.float64, seed=1):
    return torch.randn(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _assert_same_state(a, b, tol=1e-12):
    for (name, t), (_, u) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(t.double(), u.double(), rtol=tol, atol=tol), name


def _bn_count(model, cls=torch.nn.modules.batchnorm._BatchNorm):
    return sum(isinstance(m, cls) for m in model.modules())


# --- torch's class tree --------------------------------------------------------------------

@pytest.mark.parametrize("ours,theirs", [(bnt.BatchNorm1d, torch.nn.BatchNorm1d),
                                         (bnt.BatchNorm2d, torch.nn.BatchNorm2d),
                                         (bnt.BatchNorm3d, torch.nn.BatchNorm3d),
                                         (bnt.SyncBatchNorm, torch.nn.SyncBatchNorm),
                                         (bnt.LayerNorm, torch.nn.LayerNorm)])
def test_each_module_is_an_instance_of_its_torch_class(ours, theirs):
    layer = ours(8) if ours is not bnt.LayerNorm else ours(8)
    assert isinstance(layer, theirs)


@pytest.mark.parametrize("module", [bnt.GhostBatchNorm(8, group_size=2), bnt.BatchRenorm(8),
                                    bnt.SyncBatchNorm(8)])
def test_variants_are_torch_batch_norms(module):
    assert isinstance(module, torch.nn.modules.batchnorm._BatchNorm)


@NEEDS_BIAS_KEYWORD
def test_group_norm_is_torch_group_norm_with_the_same_repr_and_state():
    ours, theirs = bnt.GroupNorm(4, 8, bias=False), torch.nn.GroupNorm(4, 8, bias=False)
    assert isinstance(ours, torch.nn.GroupNorm) and repr(ours) == repr(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()


@pytest.mark.parametrize("kwargs", [{}, pytest.param({"bias": False}, marks=NEEDS_BIAS_KEYWORD),
                                    {"affine": False},
                                    {"track_running_stats": False}, {"momentum": None}])
def test_constructor_repr_and_state_dict_keys_are_torch_s(kwargs):
    ours, theirs = bnt.BatchNorm2d(8, **kwargs), torch.nn.BatchNorm2d(8, **kwargs)
    assert repr(ours) == repr(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert (ours.bias is None) == (theirs.bias is None)


@NEEDS_BIAS_KEYWORD
def test_weight_without_bias_trains_like_torch():
    ours, theirs = bnt.BatchNorm1d(5, bias=False), torch.nn.BatchNorm1d(5, bias=False)
    x = torch.randn(7, 5)
    a, b = ours(x), theirs(x)
    a.pow(3).sum().backward()
    b.pow(3).sum().backward()
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(ours.weight.grad, theirs.weight.grad, atol=1e-4)


def test_a_strict_load_of_a_version_2_state_dict_without_the_count_raises_like_torch():
    state = torch.nn.BatchNorm1d(3).state_dict()
    del state["num_batches_tracked"]
    for module in (bnt.BatchNorm1d(3), torch.nn.BatchNorm1d(3)):
        with pytest.raises(RuntimeError, match="num_batches_tracked"):
            module.load_state_dict(state)


def test_an_old_checkpoint_without_the_count_loads_and_keeps_it():
    state = torch.nn.BatchNorm1d(3).state_dict()
    del state["num_batches_tracked"]
    state._metadata = {"": {"version": 1}}
    module = bnt.BatchNorm1d(3)
    module.num_batches_tracked.fill_(5)
    module.load_state_dict(state)
    assert int(module.num_batches_tracked) == 5


# --- torch's utilities ---------------------------------------------------------------------

def test_swa_update_bn_recomputes_bnlib_statistics_as_torch_s():
    ours, theirs = _pair()
    batches = [_x(seed=s) for s in range(3)]
    torch.optim.swa_utils.update_bn(batches, ours)
    torch.optim.swa_utils.update_bn(batches, theirs)
    _assert_same_state(ours, theirs)
    assert int(ours[1].num_batches_tracked) == 3


def test_convert_sync_batchnorm_of_torch_replaces_bnlib_layers_by_torch_s():
    ours, _ = _pair()
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(ours))
    assert _bn_count(converted, torch.nn.SyncBatchNorm) == 2
    assert _bn_count(converted, bnt.SyncBatchNorm) == 0  # torch's kernels from here on


def test_convert_sync_batchnorm_of_bnlib_keeps_bnlib_and_the_state():
    ours, theirs = _pair()
    for model in (ours, theirs):
        converted = bnt.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
        assert _bn_count(converted, bnt.SyncBatchNorm) == 2
        _assert_same_state(converted, model, tol=0)


def test_func_replace_all_batch_norm_modules_patches_bnlib_layers():
    ours, theirs = _pair()
    torch.func.replace_all_batch_norm_modules_(ours)
    torch.func.replace_all_batch_norm_modules_(theirs)
    assert all(m.running_mean is None and not m.track_running_stats
               for m in ours.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    x = _x()
    assert torch.allclose(ours.eval()(x), theirs.eval()(x), rtol=1e-10, atol=1e-12)


def test_isinstance_filters_find_bnlib_layers():
    ours, theirs = _pair()
    for cls in (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d):
        assert _bn_count(ours, cls) == _bn_count(theirs, cls) == 1
    no_decay = [p for m in ours.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                for p in m.parameters(recurse=False)]
    assert len(no_decay) == 4


# --- program transformations --------------------------------------------------------------

@pytest.mark.filterwarnings(DYNAMO_FUNCTION_WARNING)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_torch_compile_fullgraph_traces_bnlib_without_a_graph_break(training, momentum):
    """fullgraph=True fails on any graph break; the "eager" backend runs the captured graph
    without code generation, so this checks the tracing, which is where breaks come from."""
    ours, theirs = _pair(momentum=momentum)
    ours.train(training)
    theirs.train(training)
    compiled = torch.compile(ours, fullgraph=True, backend="eager")
    for seed in range(3):
        x = _x(seed=seed)
        assert torch.allclose(compiled(x), theirs(x), rtol=1e-10, atol=1e-12)
    _assert_same_state(ours, theirs)


def test_func_grad_and_functional_call_match_autograd_in_eval_and_without_running_stats():
    for kwargs, training in (({}, False), ({"track_running_stats": False}, True)):
        ours, theirs = _pair(**kwargs)
        ours.train(training)
        theirs.train(training)
        x = _x()
        params, buffers = dict(ours.named_parameters()), dict(ours.named_buffers())

        def loss(p):
            return torch.func.functional_call(ours, (p, buffers), (x,)).pow(2).sum()

        grads = torch.func.grad(loss)(params)
        theirs(x).pow(2).sum().backward()
        for name, p in theirs.named_parameters():
            assert torch.allclose(grads[name], p.grad, rtol=1e-8, atol=1e-10), name


def test_func_grad_with_running_stats_in_training_fails_as_torch_does():
    """A grad transform cannot update a captured buffer in place, in torch.nn either."""
    for model in _pair():
        x = _x()
        params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
        with pytest.raises(RuntimeError, match="mutate a captured Tensor"):
            torch.func.grad(lambda p: torch.func.functional_call(
                model, (p, buffers), (x,)).sum())(params)


@pytest.mark.parametrize("kwargs,training", [({}, False), ({"track_running_stats": False}, True)],
                         ids=["eval", "train-without-running-stats"])
def test_vmap_over_a_batch_of_batches_equals_a_loop(kwargs, training):
    ours, theirs = _pair(**kwargs)
    ours.train(training)
    theirs.train(training)
    xs = torch.stack([_x(seed=s) for s in range(3)])
    batched = torch.func.vmap(ours)(xs)
    assert torch.allclose(batched, torch.stack([theirs(x) for x in xs]), rtol=1e-10, atol=1e-12)


def test_vmap_over_per_sample_gradients_with_batch_statistics():
    """The classic per-sample-gradient recipe works through bnlib's autograd.Function."""
    ours, _ = _pair(track_running_stats=False)
    params = {k: v.detach() for k, v in ours.named_parameters()}
    x = _x(n=4)

    def loss(p, xs):
        return torch.func.functional_call(ours, p, (xs,)).pow(2).sum()

    grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x.unsqueeze(1).expand(4, 2, 3, 4, 4))
    for name, g in grads.items():
        assert g.shape[0] == 4 and torch.isfinite(g).all(), name


def test_fx_symbolic_trace_records_one_call_that_reads_the_module_when_it_runs():
    ours, theirs = _pair()
    traced = torch.fx.symbolic_trace(ours)
    calls = [n for n in traced.graph.nodes if n.op == "call_function"
             and "batch_norm" in getattr(n.target, "__name__", "")]
    assert len(calls) == 2
    x = _x()
    assert torch.allclose(traced(x), theirs(x), rtol=1e-10, atol=1e-12)
    _assert_same_state(traced, theirs)  # the running statistics were updated in training mode
    traced.eval()  # the mode is read when the graph runs, as for a leaf torch.nn.BatchNorm2d
    theirs.eval()
    assert torch.allclose(traced(x), theirs(x), rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings(DYNAMO_FUNCTION_WARNING)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_torch_export_matches_torch(training):
    ours, theirs = _pair()
    ours.train(training)
    theirs.train(training)
    x = _x()
    program = torch.export.export(ours, (x,))
    assert torch.allclose(program.module()(x), theirs(x), rtol=1e-10, atol=1e-12)


def test_jit_trace_in_training_updates_the_statistics_exactly():
    ours, theirs = _pair()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer warns about Python values it freezes
        traced = torch.jit.trace(copy.deepcopy(ours), _x(seed=7), check_trace=False)
    traced.load_state_dict(theirs.state_dict())
    for seed in range(3):
        x = _x(seed=seed)
        assert torch.allclose(traced(x), theirs(x), rtol=1e-10, atol=1e-12)
    for name, t in traced.state_dict().items():
        assert torch.allclose(t.double(), theirs.state_dict()[name].double(),
                              rtol=1e-14, atol=1e-15), name


def test_a_saved_and_loaded_model_keeps_bnlib_s_classes():
    ours, _ = _pair()
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert isinstance(loaded[1], bnt.BatchNorm2d)
    _assert_same_state(loaded, ours, tol=0)


# --- layouts -------------------------------------------------------------------------------

@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_a_transposed_input_gives_a_contiguous_output_as_torch(training):
    x = torch.randn(5, 7, dtype=torch.float64).t()  # (7, 5), not contiguous
    ours, theirs = bnt.BatchNorm1d(5, dtype=torch.float64), torch.nn.BatchNorm1d(5, dtype=torch.float64)
    ours.train(training)
    theirs.train(training)
    y = ours(x)
    assert y.is_contiguous() and torch.allclose(y, theirs(x), rtol=1e-10, atol=1e-12)
    assert y.view(-1).shape == (35,)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_a_channels_last_input_gives_a_channels_last_output_as_torch(training):
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64).to(memory_format=torch.channels_last)
    ours, theirs = bnt.BatchNorm2d(3, dtype=torch.float64), torch.nn.BatchNorm2d(3, dtype=torch.float64)
    ours.train(training)
    theirs.train(training)
    y = ours(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(y, theirs(x), rtol=1e-10, atol=1e-12)


# torch's own make_dual compiles a helper with torch.jit.script, which torch 2.13 deprecates.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_forward_mode_ad_in_training_matches_torch():
    """Dual tensors and torch.func.jvp: the formulas run as plain operations, which forward
    mode follows (torch.nn's kernel has its own rule); the running statistics too."""
    import torch.autograd.forward_ad as fwAD

    x, t = _x(), _x(seed=2)
    ours, theirs = _pair()
    tangents = []
    for model in (ours, theirs):
        with fwAD.dual_level():
            tangents.append(fwAD.unpack_dual(model(fwAD.make_dual(x, t))).tangent)
    assert tangents[0] is not None
    assert torch.allclose(*tangents, rtol=1e-10, atol=1e-12)
    _assert_same_state(ours, theirs)
    # The running statistics take no tangent: eval mode in the same dual level, right after
    # a training step, sees the tangent of its input only.
    for model in (ours, theirs):
        with fwAD.dual_level():
            model.train()(fwAD.make_dual(x, t))
            assert all(fwAD.unpack_dual(b).tangent is None for b in model.buffers())
            tangents.append(fwAD.unpack_dual(model.eval()(fwAD.make_dual(x, t))).tangent)
    assert torch.allclose(*tangents[2:], rtol=1e-10, atol=1e-12)
    ours, theirs = _pair(track_running_stats=False)
    (y_ours, jvp_ours), (y_theirs, jvp_theirs) = (torch.func.jvp(m, (x,), (t,))
                                                  for m in (ours, theirs))
    assert torch.allclose(y_ours, y_theirs, rtol=1e-10, atol=1e-12)
    assert torch.allclose(jvp_ours, jvp_theirs, rtol=1e-10, atol=1e-12)
