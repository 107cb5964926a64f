"""SVHN multi-digit recognition (main paper Table 2): the recipe is :mod:`.recipe`, the MNIST-built
stand-in :mod:`.synthetic` (the real format-1 reader is :mod:`repro.data.svhn`), the step timing
:mod:`.benchmark`, the command line ``python -m repro.svhn`` :mod:`.__main__`."""
