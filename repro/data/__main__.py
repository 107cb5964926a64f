"""``python -m repro.data show NAME [--split test] [--seed 0] [--n 32] [--out FILE.png|DIR]``
``python -m repro.data build NAME [--split train|test|both] [--seed 0] [--device cpu|cuda]``
``python -m repro.data mnist`` (fetch / check real MNIST)
``python -m repro.data probe NAME [--n 10000] [--seed 0] [--json FILE]`` (difficulty statistics:
``repro/data/probe.py``)

``show``, ``build`` and ``probe`` take ``--option KEY=VALUE`` (repeatable): a generator option of
the set (``repro/data/options.py``: e.g. ``probe P --option corners=source --option sigma=3.5``).

``show`` writes a PNG grid of samples (boxes drawn for co-localisation, the two channels of
``addition`` side by side with a separator, labels in the titles) to
``runs/data/<NAME>_<split>_samples.png`` at the repository root (``--out``: another file, or a
folder to write that name into) and prints the path. NAME is one of
``R RTS P E TC addition coloc-T coloc-TC`` (fixed sets; ``--online`` shows an online batch
instead), ``svhn`` (``--svhn-dir``) or ``cub`` (``--cub-dir``).

Data cache: ``$STN_DATA_DIR`` or, by default, ``~/.cache/stn-triton`` (``--data-dir``): MNIST as
uint8 (~53 MB) and every fixed set built (uncompressed uint8: a 10k test set 8-71 MB, a 60k
training set up to ~420 MB; ~300 MB for the test sets the recipes use); each file records the
sha256 of its arrays and is rebuilt if it does not match.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

SHOW_N = 32  # images shown by default


def _grid_png(images, titles, boxes, out, ncol=8, cmap="gray"):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = len(images)
    nrow = (n + ncol - 1) // ncol
    aspect = images[0].shape[1] / images[0].shape[0] if n else 1.0
    fig, axes = plt.subplots(nrow, ncol, figsize=(ncol * 1.6 * aspect, nrow * 1.75), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i]
        ax.imshow(img, cmap=cmap if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(titles[i], fontsize=7)
        if boxes is not None:
            x0, y0, x1, y1 = [float(v) for v in boxes[i]]
            # imshow pixel i spans [i - 0.5, i + 0.5]: pixel-edge coordinates shift by -0.5
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="red", lw=1))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _mnist_panels(name, batch, n):
    import torch

    imgs = batch.images[:n].detach().cpu()
    if imgs.shape[1] == 2:  # addition: channels side by side, a grey separator bar
        sep = torch.full((imgs.shape[0], imgs.shape[2], 2), 0.5)
        panels = [torch.cat([im[0], s, im[1]], 1).numpy() for im, s in zip(imgs, sep)]
        titles = [f"{int(a)}+{int(b)}={int(y)}" for (a, b), y in zip(batch.digit_labels[:n].tolist(), batch.labels[:n].tolist())]
    else:
        panels = [im[0].numpy() for im in imgs]
        titles = [str(int(y)) for y in batch.labels[:n].tolist()]
    boxes = None if batch.boxes is None else batch.boxes[:n].cpu()
    return panels, titles, boxes


def cmd_show(args):
    from . import distort
    from .sets import OnlineStream, make

    from repro import paths

    fname = f"{args.name}_{'online' if args.online else args.split}_samples.png"
    if args.out is None:
        out = paths.RUNS_DIR / "data" / fname
    else:
        out = Path(args.out)
        if out.is_dir() or args.out.endswith(("/", os.sep)):
            out = out / fname
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.name in distort.NAMES:
        if args.online:
            batch = OnlineStream(args.name, args.n, seed=args.seed, device=args.device or "cpu",
                                 options=args.option).batch(args.step)
        else:
            ds = make(args.name, args.split, args.seed, device=args.device, verbose=True, options=args.option)
            batch = ds.get(slice(0, args.n))
        panels, titles, boxes = _mnist_panels(args.name, batch, args.n)
        _grid_png(panels, titles, boxes, out)
    elif args.name == "svhn":
        from .svhn import SVHN
        if not args.svhn_dir:
            sys.exit("show svhn needs --svhn-dir DIR (the SVHN format-1 root with train/ test/ extra/)")
        ds = SVHN(args.svhn_dir, args.split, size=args.size or 64, limit=args.n, val_size=0 if args.split == "train" else 5000)
        panels, titles = [], []
        for i in range(min(args.n, len(ds))):
            img, lab, length = ds[i]
            panels.append(img.permute(1, 2, 0).numpy())
            titles.append("".join(str(int(d)) for d in lab[:int(length)]))
        _grid_png(panels, titles, None, out)
    elif args.name == "cub":
        from .cub import CUB
        if not args.cub_dir:
            sys.exit("show cub needs --cub-dir DIR (the CUB_200_2011 root with images.txt, images/ ...)")
        ds = CUB(args.cub_dir, args.split, train=(args.split == "train"), size=args.size or 224)
        panels, titles = [], []
        for i in range(min(args.n, len(ds))):
            img, lab = ds[i]
            if img.dim() == 4:  # 10-crop views: show the first
                img = img[0]
            panels.append(img.permute(1, 2, 0).clamp(0, 1).numpy())
            titles.append(str(int(lab)))
        _grid_png(panels, titles, None, out, ncol=4)
    else:
        sys.exit(f"unknown data set {args.name!r}: choose one of {' '.join(distort.NAMES)} svhn cub")
    print(f"wrote {out}")


def cmd_build(args):
    from .sets import make

    splits = ("train", "test") if args.split == "both" else (args.split,)
    for split in splits:
        t0 = time.perf_counter()
        ds = make(args.name, split, args.seed, device=args.device, options=args.option)
        print(f"{args.name}/{split}/seed{args.seed}: {len(ds)} images {tuple(ds.images_u8.shape[1:])} "
              f"in {time.perf_counter() - t0:.1f} s")


def cmd_mnist(args):
    from .mnist import load_mnist_arrays

    t0 = time.perf_counter()
    arrays, source = load_mnist_arrays()
    x, y = arrays["train_images"], arrays["train_labels"]
    print(f"MNIST from {source} in {time.perf_counter() - t0:.1f} s: train {x.shape}, test {arrays['test_images'].shape}, "
          f"first train labels {y[:10].tolist()}, first test labels {arrays['test_labels'][:10].tolist()}, "
          f"train mean {x.mean() / 255:.4f}")


def cmd_probe(args):
    import json

    from .options import describe
    from .probe import probe

    t0 = time.perf_counter()
    r = probe(args.name, n=args.n, seed=args.seed, options=args.option)
    r["wall_time_s"] = round(time.perf_counter() - t0, 1)
    d = r["data"]
    opts = f", options {describe(d['options'])}" if d["options"] else ""
    print(f"{d['set']} (data version {d['version']}{opts}, {r['draws']} draws, seed {r['seed']}, "
          f"{r['wall_time_s']} s):")
    for k, v in r["stats"].items():
        print(f"  {k:24s} {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1) + "\n")
        print(f"wrote {args.json}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m repro.data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mnist-dir", help="directory with the four MNIST IDX files (else STN_MNIST_DIR / cache / wheel)")
    p.add_argument("--data-dir", help="cache directory (else $STN_DATA_DIR, default ~/.cache/stn-triton)")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("show", help="write a PNG grid of samples")
    s.add_argument("name")
    s.add_argument("--split", default="test")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--n", type=int, default=SHOW_N, help=f"number of samples (default {SHOW_N})")
    s.add_argument("--out", help="PNG file, or a folder (default: runs/data/ at the repository root)")
    s.add_argument("--device")
    s.add_argument("--online", action="store_true", help="show an OnlineStream batch (training digits)")
    s.add_argument("--step", type=int, default=0)
    s.add_argument("--svhn-dir")
    s.add_argument("--cub-dir")
    s.add_argument("--size", type=int)
    b = sub.add_parser("build", help="build and cache a fixed set")
    b.add_argument("name")
    b.add_argument("--split", default="both")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--device")
    sub.add_parser("mnist", help="fetch / verify real MNIST")
    pr = sub.add_parser("probe", help="difficulty statistics of a distorted set (repro/data/probe.py)")
    pr.add_argument("name")
    pr.add_argument("--n", type=int, default=10_000, help="draws (default 10000)")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--json", help="also write the result as JSON to this file")
    for cmd in (s, b, pr):
        cmd.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                         help="a generator option of the set (repeatable; repro/data/options.py)")
    args = p.parse_args(argv)
    if args.mnist_dir:
        os.environ["STN_MNIST_DIR"] = args.mnist_dir
    if args.data_dir:
        os.environ["STN_DATA_DIR"] = args.data_dir
    from .cub import CUBLayoutError
    from .mnist import MnistError
    from .svhn import SVHNLayoutError

    try:
        {"show": cmd_show, "build": cmd_build, "mnist": cmd_mnist, "probe": cmd_probe}[args.cmd](args)
    except (CUBLayoutError, SVHNLayoutError, MnistError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
