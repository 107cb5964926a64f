"""``python -m repro.mnist_addition``: the command line of the MNIST-addition recipe
(:mod:`repro.mnist_addition.recipe`): ``--transform affine|tps`` and the shared harness options."""
from __future__ import annotations

import argparse
import sys

from repro.harness.cli import main as cli_main, recipe_options
from repro.mnist_addition import recipe
from repro.mnist_addition.recipe import DEFAULT_OUT, EXPERIMENT, NOTES, TRANSFORMS, experiment


def _recipe_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--transform", default="affine", choices=TRANSFORMS,
                   help="transformer of the ST models: affine (default) | tps (the supplement's figure)")
    p.add_argument("--min-width", type=int, default=None, metavar="N",
                   help="FCN-family classifier width floor (the supplement's 128-256 units; default: none, the "
                        "400k budget's width: FCN 109, 2xST-FCN 90); recorded in every result as config.min_width")
    return p


def main(argv=None) -> int:
    recipe_parser = _recipe_parser()
    opts, argv = recipe_options(argv, recipe.__doc__, recipe_parser, EXPERIMENT, DEFAULT_OUT)
    if opts is None:  # --help
        return 0
    _, rest = recipe_parser.parse_known_args(argv)  # the rest goes to the harness
    if opts.min_width is not None and not 1 <= opts.min_width <= 4096:
        print(f"error: --min-width must be in 1..4096, got {opts.min_width}", file=sys.stderr)
        return 2
    exp = experiment(opts.transform, opts.min_width)
    return cli_main(exp, DEFAULT_OUT, rest, notes=NOTES)


if __name__ == "__main__":
    sys.exit(main())
