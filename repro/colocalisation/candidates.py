"""Co-localisation over candidate windows: eq. (1) relaxed, so that the optimisation sees every window.

The localiser of :mod:`repro.colocalisation` is an attention spatial transformer at the final scale 1/3 (a 28 px window of the 84 px canvas), but its
translation is the *soft-argmax* over a grid of candidate windows (every ``stride`` px, 15 x 15 at
the default 4 px) of scores that the supplement's localisation layers compute for each window:

    score(window) = FC 1 . ReLU . FC 8 . ReLU . FC 8 . maxpool 2x2 . ReLU . conv 8@9x9 stride 4 (window)
    p_n = softmax_k score(window_k of I_n),   t_n = sum_k p_n(k) centre_k,   theta_n = [[1/3, 0, t_x], [0, 1/3, t_y]]

(the last FC is zero-initialised, so every image starts at the centre window -- the identity's
centre at the digit's scale). At a 4 px stride the windows' conv 9x9 stride 4 outputs are windows of
the one 19 x 19 output over the whole image, so the scorer runs fully convolutionally (one conv per
image, not 225): :class:`CandidateScorer`, checked against the per-window net in the tests.

**Why a relaxation.** With the supplement's regression localiser (retired; findings.md), eq. (1) gives gradient only through the
image gradient under the current window: a window on background or clutter never learns that the
digit is 20 px away (findings: TC stays at 0-15 %). Here every candidate window's descriptor is
computed once (the encoder is frozen; :func:`candidate_descriptors`), and eq. (1) is evaluated
between *all* windows of the two images of a pair:

    H_n,m,r(i, j) = max(0, |e(I_n^i) - e(I_m^j)|^2 - |e(I_n^i) - e(I_n^r)|^2 + alpha)   (eq. (1), windows i, j; r random)
    loss = E_(n, m, r) sum_i p_n(i) softmin^(q_m)_j H(i, j),
    softmin^(q)_j H(i, j) = sum_j w_ij H(i, j),  w_i = softmax_j(-H(i, j) / tau + log q_m(j))

i.e. each window of the anchor is charged the hinge of its *best match* in the other image, the
match weighted by where that image's localiser currently looks. At the start (q uniform) a digit
window has an exact-class match somewhere in the other image and an empty or clutter window has
only other empty / clutter windows, so the digits win; as q sharpens, the soft-min becomes eq. (1)
at the two localised windows. The plain expectation E_(i~p, j~q) H (tau -> infinity) was tried
first and collapses onto empty windows, the most numerous alike windows (findings.md).

Descriptors are projected onto their top ``pca_dims`` principal directions (uncentred, a
randomised SVD) so that a step's (B, 225, 225) distance tensor is a batched matmul; the median
relative error of the projected squared distances is recorded in every result (~2-5 %).

The optimiser is Adam (ours) or SGD with momentum (the paper's), over the scorer's parameters;
every optimisation returns :func:`optimisation_record` (the final windows against the true boxes,
snapshots for the figure, the loss history).
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from repro.colocalisation.encoder import Descriptor
from repro.colocalisation.geometry import CANVAS, CROP, attention_box, ink_inside, iou, window_theta

OPTIMIZERS = ("adam", "sgd")  # ours (default) | the paper's

CONV_STRIDE = 4  # the supplement's localisation conv: 8 filters 9x9, stride 4


def candidate_positions(stride: int = 4) -> torch.Tensor:
    """Top-left corners (x, y) in px (G*G, 2), x fastest, of the 28 px windows every ``stride`` px
    over the 84 px canvas (0, stride, ... <= 56): 15 x 15 at 4 px."""
    if stride < 1 or stride % CONV_STRIDE:
        raise ValueError(f"candidate stride must be a positive multiple of {CONV_STRIDE} px, got {stride!r}")
    p = torch.arange(0, CANVAS - CROP + 1, stride, dtype=torch.float32)
    y, x = torch.meshgrid(p, p, indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], 1)


def candidate_centres(stride: int = 4) -> torch.Tensor:
    """The candidate windows' centres (G*G, 2) in normalised [-1, 1] coordinates (align_corners=False)."""
    return (candidate_positions(stride) + CROP / 2) * 2 / CANVAS - 1


def candidate_thetas(stride: int = 4) -> torch.Tensor:
    """The candidate windows as attention thetas (G*G, 2, 3), scale 1/3."""
    centre = candidate_centres(stride)
    return window_theta(torch.full((centre.shape[0],), CROP / CANVAS), centre)


def candidate_crops(images: torch.Tensor, stride: int = 4) -> torch.Tensor:
    """Every candidate window of every image (N, G*G, C, 28, 28), sampled by the spatial transformer
    (``stn_triton.warp``; the windows lie on the pixel grid, so these are the pixels, up to the float
    rounding of the sampling coordinates)."""
    from stn_triton import warp

    th = candidate_thetas(stride).to(images)
    k = th.shape[0]
    return torch.stack([warp(img[None].expand(k, *img.shape), th, (CROP, CROP)) for img in images])


@torch.no_grad()
def candidate_descriptors(images: torch.Tensor, desc: nn.Module, stride: int = 4, dims: int = 384,
                          chunk: int = 2048) -> tuple[torch.Tensor, float]:
    """e(.) of every candidate window, projected onto the top ``dims`` right singular vectors of the
    whole set (N, G*G, dims), and the median relative error of squared distances between 2,000
    random pairs of windows after the projection (a fidelity check recorded with the result)."""
    crops = candidate_crops(images, stride)
    n, k = crops.shape[:2]
    flat = crops.flatten(0, 1)
    e = torch.cat([desc(flat[s:s + chunk]) for s in range(0, flat.shape[0], chunk)])
    if dims and dims < e.shape[1]:
        _, _, v = torch.pca_lowrank(e, q=dims, center=False, niter=3)
        f = e @ v
    else:
        f = e
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, e.shape[0], (2, 2000), generator=g)
    d_true = (e[a] - e[b]).pow(2).sum(1)
    d_proj = (f[a] - f[b]).pow(2).sum(1)
    keep = d_true > 1e-6
    err = ((d_proj - d_true).abs() / d_true)[keep].median().item() if keep.any() else 0.0
    return f.reshape(n, k, -1), err


class CandidateScorer(nn.Module):
    """The supplement's localisation layers (conv 8@9x9 stride 4 - ReLU - max-pool 2 - FC 8 - ReLU -
    FC 8 - ReLU) and a 1-unit zero-initialised score, applied to every candidate 28 px window at once.
    A window at (x, y) = stride * (a, b) covers conv outputs (a', b') = (a, b) * stride / 4 + 0..4 of
    the image's conv map; its 2x2 max-pool (floor, rows/cols 0..3) is the stride-1 2x2 max-pool of the
    map at offsets 0 and 2; the FC layers are 1x1 convolutions over the 32 pooled features."""

    def __init__(self, stride: int = 4):
        super().__init__()
        candidate_positions(stride)  # validates the stride
        self.step = stride // CONV_STRIDE
        self.conv = nn.Conv2d(1, 8, 9, stride=CONV_STRIDE)
        self.fc = nn.Sequential(nn.Conv2d(32, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU())
        self.score = nn.Conv2d(8, 1, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)
        self.g = (CANVAS - CROP) // stride + 1

    def window_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 32, G, G): the flattened pooled conv block of every candidate window."""
        m = F.max_pool2d(F.relu(self.conv(x)), 2, stride=1)  # (N, 8, 18, 18): every 2x2 max
        s, g = self.step, self.g
        parts = [m[:, :, dy:dy + s * (g - 1) + 1:s, dx:dx + s * (g - 1) + 1:s] for dy in (0, 2) for dx in (0, 2)]
        return torch.cat(parts, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores (N, G*G), windows in :func:`candidate_positions` order (x fastest)."""
        return self.score(self.fc(self.window_features(x))).flatten(1)


class CandidateLocaliser(nn.Module):
    """An attention spatial transformer whose window (scale 1/3) is centred at the soft-argmax of
    :class:`CandidateScorer`'s window scores. ``theta(x)`` like a spatial transformer's localiser;
    ``forward(x)`` returns (28x28 crop, theta)."""

    def __init__(self, stride: int = 4):
        super().__init__()
        self.scorer = CandidateScorer(stride)
        self.register_buffer("centres", candidate_centres(stride), persistent=False)

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        return self.scorer(x).softmax(1)

    def theta(self, x: torch.Tensor) -> torch.Tensor:
        p = self.probs(x)
        return window_theta(torch.full_like(p[:, 0], CROP / CANVAS), p @ self.centres.to(p))

    def forward(self, x: torch.Tensor):
        from stn_triton import warp

        th = self.theta(x)
        return warp(x, th, (CROP, CROP)), th


def pair_hinges(f_n: torch.Tensor, f_m: torch.Tensor, f_r: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """eq. (1)'s hinge between every window i of I_n and every window j of I_m (B, K, K), with the
    negative window r of I_n (B, D): max(0, |f_n,i - f_m,j|^2 - |f_n,i - f_r|^2 + alpha)."""
    sq_n, sq_m = f_n.pow(2).sum(-1), f_m.pow(2).sum(-1)
    d_pos = (sq_n[:, :, None] + sq_m[:, None, :] - 2 * f_n @ f_m.transpose(1, 2)).clamp(min=0)
    d_neg = (f_n - f_r[:, None]).pow(2).sum(-1)
    return F.relu(d_pos - d_neg[:, :, None] + alpha)


def relaxed_loss(h: torch.Tensor, p: torch.Tensor, q: torch.Tensor, tau: float) -> torch.Tensor:
    """sum_i p(i) softmin^(q)_j h(i, j), averaged over the batch (module docstring); with one-hot p
    and q it is h at the two chosen windows, i.e. eq. (1)."""
    w = torch.softmax(-h / tau + q.clamp(min=1e-30).log()[:, None, :], dim=2)
    return (p * (w * h).sum(2)).sum(1).mean()


@torch.no_grad()
def predict_boxes(st: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return attention_box(st.theta(images))


def make_optimizer(params, prof) -> torch.optim.Optimizer:
    """The profile's optimiser over ``params`` ."""
    if prof.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {prof.optimizer!r}")
    return (torch.optim.Adam(params, lr=prof.lr) if prof.optimizer == "adam"
            else torch.optim.SGD(params, lr=prof.lr, momentum=prof.momentum))


def optimiser_step(opt: torch.optim.Optimizer, loss: torch.Tensor, losses: list, step: int) -> None:
    """One step on ``loss``, its value appended to ``losses``; a non-finite loss stops the optimisation."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    losses.append(loss.item())
    if not math.isfinite(losses[-1]):
        raise FloatingPointError(f"non-finite co-localisation loss at step {step}")


def snapshot(st: nn.Module, images: torch.Tensor, boxes: torch.Tensor, track, step: int) -> dict:
    """The boxes of the tracked images and the fraction localised at ``step`` (the figure's frames)."""
    pb = predict_boxes(st, images)
    return {"step": step, "boxes": pb[list(track)].tolist(), "localised": (iou(pb, boxes) > 0.5).float().mean().item()}


def optimisation_record(st: nn.Module, images: torch.Tensor, boxes: torch.Tensor, losses: list, wall: float,
                        steps: int, snaps: list) -> dict:
    """The result of one optimisation : the final windows against the true boxes."""
    pb = predict_boxes(st, images)
    ious = iou(pb, boxes)
    with torch.no_grad():  # how much of each image's ink the final window holds (0: an empty, black crop)
        ink_in = ink_inside(images, pb)
    return {"localised_pct": round(100.0 * (ious > 0.5).float().mean().item(), 1),
            "empty_window_pct": round(100.0 * (ink_in < 0.05).float().mean().item(), 1),
            "mean_ink_inside": round(ink_in.mean().item(), 4), "final_boxes": [[round(v, 2) for v in b] for b in pb.tolist()],
            "mean_iou": round(ious.mean().item(), 4), "final_loss": losses[-1] if losses else None,
            "wall_time_s": round(wall, 1), "steps": steps, "snapshots": snaps,
            "loss_history": [round(x, 4) for x in losses[::max(1, len(losses) // 50)]]}




def colocalise_candidates(images: torch.Tensor, boxes: torch.Tensor, enc: nn.Module, prof, seed: int = 0,
                          track: tuple[int, ...] = (0, 1, 2), log=print) -> dict:
    """One co-localisation optimisation with :class:`CandidateLocaliser` over ``images`` (N, 1, 84, 84);
    ``boxes`` only for the metric. Returns :func:`optimisation_record` and the relaxation's own numbers."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    desc = Descriptor(enc, prof.descriptor)
    t0 = time.perf_counter()
    feats, pca_err = candidate_descriptors(images, desc, prof.cand_stride, prof.pca_dims)
    t_desc = time.perf_counter() - t0
    st = CandidateLocaliser(prof.cand_stride)
    opt = make_optimizer(st.parameters(), prof)
    n, k = feats.shape[:2]
    snaps = [snapshot(st, images, boxes, track, 0)]
    losses = []
    total = prof.steps
    for step in range(total):
        i = torch.randint(0, n, (prof.batch,), generator=g)
        j = (i + torch.randint(1, n, (prof.batch,), generator=g)) % n  # m != n
        r = torch.randint(0, k, (prof.batch,), generator=g)  # the negative: a random window of I_n
        pq = st.probs(images[torch.cat([i, j])])
        loss = relaxed_loss(pair_hinges(feats[i], feats[j], feats[i, r], prof.alpha),
                            pq[:prof.batch], pq[prof.batch:], prof.tau)
        optimiser_step(opt, loss, losses, step)
        if (step + 1) % prof.snapshot_every == 0 or step + 1 == total:
            snaps.append(snapshot(st, images, boxes, track, step + 1))
            ok = snaps[-1]["localised"]
            if log is not None and ((step + 1) % (prof.snapshot_every * 5) == 0 or step + 1 == total):
                log(f"  step {step + 1}: loss {sum(losses[-prof.snapshot_every:]) / prof.snapshot_every:.3f}, "
                    f"localised {100 * ok:.0f}%")
    record = optimisation_record(st, images, boxes, losses, time.perf_counter() - t0, total, snaps)
    with torch.no_grad():
        p = st.probs(images)
    return record | {"descriptor_time_s": round(t_desc, 1), "candidates": k, "pca_median_rel_error": round(pca_err, 4),
                     "mean_max_prob": round(p.max(1).values.mean().item(), 4)}
