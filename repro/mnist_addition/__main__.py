"""``python -m repro.mnist_addition``: the command line of the MNIST-addition recipe
(:mod:`repro.mnist_addition.recipe`): ``--transform affine|tps`` and the shared harness options."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import sys

from repro.harness.cli import main as cli_main, recipe_options
from repro.mnist_addition import recipe
from repro.mnist_addition.recipe import DEFAULT_OUT, EXPERIMENT, NOTES, TRANSFORMS, build_model


def _recipe_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--transform", default="affine", choices=TRANSFORMS,
                   help="transformer of the ST models: affine (default) | tps (the supplement's figure)")
    return p


def main(argv=None) -> int:
    recipe_parser = _recipe_parser()
    opts, argv = recipe_options(argv, recipe.__doc__, recipe_parser, EXPERIMENT, DEFAULT_OUT)
    if opts is None:  # --help
        return 0
    _, rest = recipe_parser.parse_known_args(argv)  # the rest goes to the harness
    exp = dataclasses.replace(EXPERIMENT, build_model=functools.partial(build_model, transform=opts.transform))
    return cli_main(exp, DEFAULT_OUT, rest, notes=NOTES)


if __name__ == "__main__":
    sys.exit(main())
