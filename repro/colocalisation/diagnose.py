"""The fixed-window diagnostic behind findings.md: eq. (1) evaluated with every image's window held at
one configuration (the true boxes, the emptiest corners, the centre, a common offset from the true
boxes), i.e. which configuration the objective itself prefers with this encoder.
``python -m repro.colocalisation --diagnose`` writes ``diagnose.json``."""
from __future__ import annotations

import torch
from torch import nn

from repro.colocalisation.encoder import Descriptor, triplet_loss
from repro.colocalisation.geometry import CANVAS, CROP, box_theta, random_crop_theta
from repro.colocalisation.recipe import VARIANTS


def emptiest_corner_boxes(images: torch.Tensor) -> torch.Tensor:
    """Per image, the 28x28 corner window holding the least ink (a stand-in for 'an empty crop')."""
    c = CANVAS - CROP
    cands = torch.tensor([[0, 0], [c, 0], [0, c], [c, c]], dtype=torch.float32)
    out = []
    for img in images:
        inks = [img[0, y:y + CROP, x:x + CROP].sum() for x, y in cands.int().tolist()]
        x, y = cands[int(torch.stack(inks).argmin())]
        out.append(torch.stack([x, y, x + CROP, y + CROP]))
    return torch.stack(out)




@torch.no_grad()
def expected_loss(images: torch.Tensor, theta: torch.Tensor, desc: nn.Module, alpha: float = 1.0,
                  samples: int = 2000, seed: int = 0) -> float:
    """Monte-Carlo mean of the eq. (1) hinge when every image's window is fixed at ``theta``
    (random pairs n != m, random same-size negatives inside the image)."""
    from stn_triton import warp

    g = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    e_t = desc(warp(images, theta, (CROP, CROP)))
    tot = 0.0
    for _ in range(0, samples, 250):
        i = torch.randint(0, n, (250,), generator=g)
        j = (i + torch.randint(1, n, (250,), generator=g)) % n
        th_r = random_crop_theta(theta[i, 0, 0], g)
        e_r = desc(warp(images[i], th_r, (CROP, CROP)))
        tot += triplet_loss(e_t[i], e_t[j], e_r, alpha, reduction="sum").item()
    return tot / (250 * ((samples + 249) // 250))


def offset_landscape(enc: nn.Module, variant: str, digit: int, offsets=(-8, -4, 0, 4, 8), seed: int = 0,
                     samples: int = 1000, descriptor: str = "layer-l2", n: int = 100) -> dict:
    """eq. (1) (:func:`expected_loss`, the same triplets for every cell) with every image's window at
    its true box moved by one common offset (dx, dy) px: where, among windows that all hold their
    digit, the objective itself has its minimum. ``{"offsets": [...], "hinge": rows dy x cols dx}``."""
    from repro.data import colocalisation_set

    desc = Descriptor(enc, descriptor)
    ds = colocalisation_set(variant, digit, seed=seed, n=n)
    grid = [[round(expected_loss(ds.images, box_theta(ds.boxes + torch.tensor([dx, dy, dx, dy], dtype=ds.boxes.dtype)),
                                 desc, samples=samples, seed=seed), 4) for dx in offsets] for dy in offsets]
    return {"variant": variant, "digit": digit, "offsets": list(offsets), "hinge": grid}


def diagnose(enc: nn.Module, variants=VARIANTS, digits=range(10), seed: int = 0, samples: int = 1000,
             descriptor: str = "concat") -> dict:
    """eq. (1) evaluated at the true boxes, at each image's emptiest 28x28 corner, and at the centred
    initial window: which configuration does the objective (with this encoder) prefer?"""
    from repro.data import colocalisation_set

    desc = Descriptor(enc, descriptor)
    out = {}
    for v in variants:
        for d in digits:
            ds = colocalisation_set(v, d, seed=seed)
            x = ds.images
            centre = torch.tensor([[28.0, 28, 56, 56]]).expand(x.shape[0], 4)
            out[f"{v}/{d}"] = {k: round(expected_loss(x, box_theta(b), desc, samples=samples, seed=seed), 2)
                               for k, b in (("true_boxes", ds.boxes), ("emptiest_corner", emptiest_corner_boxes(x)),
                                            ("centre", centre))}
            print(f"[diagnose] {v} digit {d}: {out[f'{v}/{d}']}", flush=True)
    return out
