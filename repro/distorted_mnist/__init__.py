"""Distorted MNIST (main paper section 4.1, Table 1, and TC): the recipe is :mod:`.recipe`
(models, schedules, data, the paper's numbers), the table and figure :mod:`.table`, the command line
``python -m repro.distorted_mnist`` :mod:`.__main__`."""
