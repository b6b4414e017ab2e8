"""The chapters' toolkit: what the book's notebooks need besides the library itself.

Nothing here normalizes anything a user would put in a model; that is :mod:`bnlib.numpy`
and :mod:`bnlib.torch`. Each module holds one kind of helper:

==========================  ==================================================================
module                      what it holds
==========================  ==================================================================
:mod:`.data`                offline datasets (MNIST 5k, 8x8 digits, MNIST-1D), float64
:mod:`.models`              the networks under test: ``mlp``, ``cnn``, ``RecurrentClassifier``
:mod:`.training`            seeding (float64 default), the SGD loop, evaluation
:mod:`.experiments`         runs over seeds, the best setting, measurements after training
:mod:`.protocol`            the experimental protocol: tuning, intervals, verdicts
:mod:`.plotting`            one look for every figure
:mod:`.notebook`            ``glue``: numbers from code into the prose
:mod:`.activations`         what layers see: inputs, percentiles, saturation, traces
:mod:`.covariate_shift`     two measures of internal covariate shift
:mod:`.landscape`           the loss along the gradient (smoothness)
:mod:`.batch_noise`         how noisy a batch's statistics are
:mod:`.inference`           running averages, predictions with batch statistics
:mod:`.layers`              layers that test a claim: noisy BN, a random input domain
:mod:`.distributed`         data-parallel runs over local processes
:mod:`.edge_cases`          the table of edge cases behind the reliability appendix
==========================  ==================================================================

>>> from bnlib.book import data, experiments, models, protocol, training
>>> from bnlib.book.notebook import glue
"""
