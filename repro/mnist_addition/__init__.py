"""MNIST addition (supplement section 1.1): the recipe is :mod:`.recipe` (models, schedules, data,
the paper's numbers), the command line ``python -m repro.mnist_addition`` is :mod:`.__main__`."""
