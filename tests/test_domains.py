"""bnlib.book.layers.RandomDomain: mixed or domain-sorted batches in training, nothing in eval."""

import pytest
import torch

from bnlib.book.layers import RandomDomain


def _domains(out, x, gain, offset):
    """Per example: 0 if unchanged, 1 if in the second domain (checked to be one or the other)."""
    first = (out == x).flatten(1).all(1)
    second = (out == RandomDomain.shift(x, gain, offset)).flatten(1).all(1)
    assert bool((first ^ second).all())
    return second.long()


def test_per_batch_puts_a_whole_batch_in_one_domain_and_both_domains_occur():
    layer = RandomDomain(3.0, 2.0, per="batch", seed=0)
    x = torch.randn(16, 5)
    seen = set()
    for _ in range(20):
        d = _domains(layer(x), x, 3.0, 2.0)
        assert d.min() == d.max()
        seen.add(int(d[0]))
    assert seen == {0, 1}


def test_per_example_mixes_the_domains_within_a_batch():
    layer = RandomDomain(3.0, 2.0, per="example", seed=0)
    x = torch.randn(64, 2, 3)
    d = _domains(layer(x), x, 3.0, 2.0)
    assert 10 < int(d.sum()) < 54


def test_eval_mode_is_the_identity_and_the_seed_fixes_the_draws():
    x = torch.randn(8, 4)
    assert torch.equal(RandomDomain(3.0, 2.0).eval()(x), x)
    a, b = RandomDomain(3.0, 2.0, seed=5), RandomDomain(3.0, 2.0, seed=5)
    assert all(torch.equal(a(x), b(x)) for _ in range(5))


def test_unknown_mixing_is_an_error():
    with pytest.raises(ValueError, match="per must be"):
        RandomDomain(1.0, 0.0, per="class")


def test_without_a_seed_torchs_global_seed_fixes_the_draws():
    x = torch.randn(32, 3)
    torch.manual_seed(3)
    a = RandomDomain(2.0, 1.0)
    torch.manual_seed(3)
    b = RandomDomain(2.0, 1.0)
    torch.manual_seed(4)
    c = RandomDomain(2.0, 1.0)
    outputs = [[layer(x) for _ in range(4)] for layer in (a, b, c)]
    assert all(torch.equal(p, q) for p, q in zip(outputs[0], outputs[1]))
    assert not all(torch.equal(p, q) for p, q in zip(outputs[0], outputs[2]))
