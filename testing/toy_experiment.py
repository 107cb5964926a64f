"""A tiny synthetic experiment for the training harness's tests (test_harness, test_checkpoint,
test_interrupt, test_outputs): a linearly separable 6x6 problem streamed as a pure function of
(seed, rank, step), an MLP and an ST + MLP, and a short SGD profile ``t`` with one milestone."""
import torch
from torch import nn

import stn_triton
from repro.harness import Experiment, Profile, classification_error


class ToyStream:
    """Online stream of a linearly separable toy problem: a pure function of (seed, rank, step)."""

    def __init__(self, batch_size, seed=0, rank=0, world_size=1, device="cpu"):
        self.bs, self.seed, self.rank, self.world, self.device = batch_size, seed, rank, world_size, device

    def batch(self, step):
        g = torch.Generator().manual_seed(1000003 * self.seed + step * self.world + self.rank)
        x = torch.randn(self.bs, 1, 6, 6, generator=g)
        y = (x[:, 0, :3].sum((1, 2)) > x[:, 0, 3:].sum((1, 2))).long()
        return x.to(self.device), y.to(self.device)


TOY_TEST = ToyStream(400, seed=99).batch(0)


def toy_model(name):
    layers = [nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 2)]
    if name == "st":
        loc = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.ReLU())
        return nn.Sequential(STOutputOnly(stn_triton.SpatialTransformer(loc, "affine")), *layers)
    return nn.Sequential(*layers)


class STOutputOnly(nn.Module):
    def __init__(self, st):
        super().__init__()
        self.st = st

    def forward(self, x):
        return self.st(x)[0]


def toy_experiment(lr=0.05, steps=40):
    prof = Profile("t", steps=steps, batch_size=32, lr=lr, optimizer="sgd", momentum=0.9, milestones=(30,),
                   log_every=10, ckpt_every=10, seeds=(0,))
    return Experiment(
        name="toy", models=("mlp", "st"), build_model=toy_model,
        train_data=lambda m, seed, rank, world_size, device, batch_size: ToyStream(batch_size, seed, rank, world_size, device),
        evaluate=lambda model, device, limit: classification_error(model, *TOY_TEST, device),
        profiles={"t": prof}, paper={"mlp": 1.0})
