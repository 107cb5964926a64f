"""CUB-200-2011 fine-grained classification (main paper Table 3): the recipe is :mod:`.recipe` (the
data reader is :mod:`repro.data.cub`, the model :mod:`stn_triton.models.cub`), the command line
``python -m repro.cub`` :mod:`.__main__`."""
