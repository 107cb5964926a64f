"""Independent float64 references for the warp: stock PyTorch ops only (``F.affine_grid`` +
``F.grid_sample``, or an explicitly built homography grid for projective theta), and the random
transforms the tests draw."""
import torch
import torch.nn.functional as F


def random_theta(n, projective=False, dtype=torch.float32, device="cpu", strength=0.4):
    theta = torch.eye(3, dtype=torch.float64)[None].repeat(n, 1, 1)
    theta[:, :2] += strength * torch.randn(n, 2, 3, dtype=torch.float64)
    if projective:
        theta[:, 2, :2] += 0.15 * torch.randn(n, 2, dtype=torch.float64)
    else:
        theta = theta[:, :2]
    return theta.to(dtype=dtype, device=device)


def homography_grid(theta, size, align_corners):
    """``F.affine_grid`` for (N, 2, 3) theta; for (N, 3, 3) the homography's grid from two
    ``F.affine_grid`` calls: (u, v) from rows 0-1 over (w, w) from row 2, stock ops only."""
    uv = F.affine_grid(theta[:, :2], size, align_corners=align_corners)
    if theta.shape[1] == 2:
        return uv
    return uv / F.affine_grid(theta[:, [2, 2]], size, align_corners=align_corners)


def reference(x, theta, size, mode, padding_mode, align_corners):
    """float64 reference built from stock PyTorch ops only."""
    n, c = x.shape[:2]
    x64, t64 = x.detach().double(), theta.detach().double()
    grid = homography_grid(t64, (n, c, *size), align_corners)
    return F.grid_sample(x64, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)


def reference_grads(x, theta, size, mode, padding_mode, align_corners, grad_out):
    x64 = x.detach().double().requires_grad_()
    t64 = theta.detach().double().requires_grad_()
    n, c = x.shape[:2]
    grid = homography_grid(t64, (n, c, *size), align_corners)
    out = F.grid_sample(x64, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    return torch.autograd.grad(out, [x64, t64], grad_out.double())


def run_warp(x, theta, size, mode="bilinear", padding_mode="zeros", align_corners=False, grad_out=None):
    """``stn_triton.warp`` on fresh leaves: (out, grad_x, grad_theta), the grads None without grad_out."""
    import stn_triton

    x = x.detach().requires_grad_()
    theta = theta.detach().requires_grad_()
    out = stn_triton.warp(x, theta, size, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    if grad_out is None:
        return out, None, None
    gx, gt = torch.autograd.grad(out, [x, theta], grad_out)
    return out, gx, gt
