"""bnlib.book.training.train(eval_steps=...): an explicit evaluation schedule."""

import numpy as np
import pytest

from bnlib.book import data, models, training


def _run(**kwargs):
    training.deterministic(0)
    net = models.mlp(64, [16], 10)
    return training.train(net, data.load_digits(), steps=40, batch_size=32, lr=0.1, **kwargs)


def test_eval_steps_sets_where_accuracy_is_measured_and_not_the_training():
    dense = _run(eval_steps=[0, 3, 7, 25])
    every = _run(eval_every=10)
    assert dense.steps == [0, 3, 7, 25, 40]  # the last step is always measured
    assert dense.train_loss == every.train_loss
    assert dense.test_accuracy[-1] == every.test_accuracy[-1]
    assert _run(eval_steps=np.arange(0, 41, 20)).steps == [0, 20, 40]


@pytest.mark.parametrize("bad", [[-1], [41], [2.5], [True]])
def test_eval_steps_outside_the_run_are_refused(bad):
    with pytest.raises(ValueError, match="eval_steps"):
        _run(eval_steps=bad)
