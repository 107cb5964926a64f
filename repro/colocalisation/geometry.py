"""Windows on the co-localisation canvas: an 84x84 image (:data:`CANVAS`) holding one 28x28 digit
(:data:`CROP`). A window is an attention theta [[s, 0, x], [0, s, y]] (normalised coordinates,
``align_corners=False``) or, equivalently, a pixel-edge box (x0, y0, x1, y1); the metric is their
intersection over union with the true box. Also the *ink reference* (:func:`ink_centroid_boxes`):
boxes from ink statistics alone, the yardstick the table shows beside eq. (1)'s result."""
from __future__ import annotations

import torch

CANVAS = 84
CROP = 28


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of boxes (..., 4) = (x0, y0, x1, y1), x1 >= x0, y1 >= y0."""
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = iw * ih
    area = lambda t: (t[..., 2] - t[..., 0]).clamp(min=0) * (t[..., 3] - t[..., 1]).clamp(min=0)  # noqa: E731
    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


def attention_box(theta: torch.Tensor, width: int = CANVAS, height: int = CANVAS) -> torch.Tensor:
    """The source window of an attention (or any axis-aligned affine) theta (N, 2, 3) as pixel-edge
    boxes (N, 4): normalised [-1, 1] (align_corners=False) maps to [0, W] / [0, H]."""
    sx, tx, sy, ty = theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2]
    x0, x1 = (tx - sx.abs() + 1) * width / 2, (tx + sx.abs() + 1) * width / 2
    y0, y1 = (ty - sy.abs() + 1) * height / 2, (ty + sy.abs() + 1) * height / 2
    return torch.stack([x0, y0, x1, y1], -1)


def window_theta(scale: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Attention thetas [[s, 0, cx], [0, s, cy]] (N, 2, 3): square windows whose side is ``scale`` (N,)
    times the image's, centred at ``centre`` (N, 2) = (x, y) in normalised [-1, 1] coordinates
    (align_corners=False). The one place the co-localisation code builds a window theta: the
    localiser, the random negatives, the boxes of the diagnosis and the encoder's training windows."""
    z = torch.zeros_like(scale)
    return torch.stack([torch.stack([scale, z, centre[:, 0]], 1), torch.stack([z, scale, centre[:, 1]], 1)], 1)


def box_theta(boxes: torch.Tensor, width: int = CANVAS) -> torch.Tensor:
    """Square pixel-edge boxes (N, 4) -> attention thetas (inverse of :func:`attention_box`)."""
    s = (boxes[:, 2] - boxes[:, 0]) / width
    tx = (boxes[:, 0] + boxes[:, 2]) / width - 1
    ty = (boxes[:, 1] + boxes[:, 3]) / width - 1
    return window_theta(s, torch.stack([tx, ty], 1))


def random_crop_theta(scale: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """eq. (1)'s negatives I_n^rand: attention thetas with the given scales (N,) (gradient kept) whose
    centre is uniform inside the image (the window may reach past the edge, where it samples zeros)."""
    u = torch.rand(scale.shape[0], 2, generator=g).to(scale) * 2 - 1
    return window_theta(scale, u)


def ink_inside(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Fraction of each image's total intensity inside its box (pixel centres inside the box)."""
    h, w = images.shape[-2:]
    yc = torch.arange(h, dtype=images.dtype) + 0.5
    xc = torch.arange(w, dtype=images.dtype) + 0.5
    inx = (xc[None] >= boxes[:, 0:1]) & (xc[None] < boxes[:, 2:3])  # (N, W)
    iny = (yc[None] >= boxes[:, 1:2]) & (yc[None] < boxes[:, 3:4])  # (N, H)
    mask = (iny[:, :, None] & inx[:, None, :]).to(images.dtype)
    img = images.sum(1)
    return (img * mask).flatten(1).sum(1) / img.flatten(1).sum(1).clamp(min=1e-12)


@torch.no_grad()
def ink_centroid_boxes(images: torch.Tensor, size: float = CROP, iters: int = 10, context: float = 1.25) -> torch.Tensor:
    """A no-learning reference, not co-localisation: per image, a ``size`` px square box at the
    centroid of all its ink, then moved ``iters`` times to the centroid of the ink within
    ``context`` x the box around its centre (a mean shift). Pixel-edge boxes (N, 4).

    It needs no encoder and no optimisation; it uses what these images are made of (one MNIST digit,
    which MNIST centres by its centre of mass in the 28 px frame, the largest blob of ink among the
    clutter). The table shows it beside eq. (1)'s result as the level the IoU > 0.5 metric on these
    images can reach by ink statistics alone."""
    h, w = images.shape[-2:]
    img = images.sum(1)  # (N, H, W)
    yc = torch.arange(h, dtype=img.dtype) + 0.5
    xc = torch.arange(w, dtype=img.dtype) + 0.5

    def centroid(centre: torch.Tensor, half: float) -> torch.Tensor:
        inx = ((xc[None] >= centre[:, :1] - half) & (xc[None] < centre[:, :1] + half)).to(img.dtype)
        iny = ((yc[None] >= centre[:, 1:] - half) & (yc[None] < centre[:, 1:] + half)).to(img.dtype)
        m = img * iny[:, :, None] * inx[:, None, :]
        mass = m.flatten(1).sum(1)
        c = torch.stack([(m.sum(1) * xc).sum(1), (m.sum(2) * yc).sum(1)], 1) / mass.clamp(min=1e-12)[:, None]
        return torch.where((mass > 0)[:, None], c, centre)  # an empty window stays where it is

    c = centroid(torch.tensor([[w / 2, h / 2]], dtype=img.dtype).expand(img.shape[0], 2), float(max(h, w)))
    for _ in range(iters):
        c = centroid(c, context * size / 2)
    return torch.cat([c - size / 2, c + size / 2], 1)

