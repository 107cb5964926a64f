"""Evaluation shared by the recipes: top-1 classification error on a fixed test set."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def classification_error(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device,
                         batch_size: int = 1000, limit: int | None = None) -> dict:
    """Top-1 error (percent) of ``model`` on (images, labels); evaluation mode, no grad."""
    was = model.training
    model.eval()
    n = len(labels) if limit is None else min(limit, len(labels))
    wrong = torch.zeros((), dtype=torch.long, device=device)
    for i in range(0, n, batch_size):
        x = images[i:min(i + batch_size, n)].to(device)
        y = labels[i:min(i + batch_size, n)].to(device)
        wrong += (model(x).argmax(1) != y).sum()
    model.train(was)
    return {"error": 100.0 * wrong.item() / n, "n_test": n}
