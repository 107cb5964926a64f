"""A training schedule (:class:`Profile`) and what the harness needs to know about one experiment
(:class:`Experiment`: model factory, data source, evaluation, profiles, the paper's numbers)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Profile:
    """A training schedule. ``milestones``: steps at which the lr is multiplied by ``gamma``."""

    name: str
    steps: int
    batch_size: int
    lr: float
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    optimizer: str = "sgd"  # sgd | adam
    momentum: float = 0.0
    weight_decay: float = 0.0
    loc_lr_mult: float = 1.0  # learning-rate multiplier for spatial-transformer parameters
    seeds: tuple[int, ...] = (0,)
    log_every: int = 100
    ckpt_every: int = 1000
    eval_every: int = 0  # 0: only at the end
    eval_limit: int | None = None  # test examples for intermediate evals
    final_eval_limit: int | None = None  # test examples for the final eval (None: the whole test set)
    warmup: int = 0  # linear lr warm-up steps
    note: str = ""

    def lr_at(self, step: int) -> float:
        k = sum(1 for m in self.milestones if step >= m)
        lr = self.lr * (self.gamma ** k)
        if self.warmup and step < self.warmup:
            lr *= (step + 1) / self.warmup
        return lr

    def replace(self, **kw) -> "Profile":
        """``dataclasses.replace`` ignoring ``None`` values; ``_scale_steps=N`` sets ``steps=N`` and
        scales the milestones and warm-up proportionally (the schedule keeps its shape)."""
        kw = {k: v for k, v in kw.items() if v is not None}
        n = kw.pop("_scale_steps", None)
        if n is not None and n != self.steps:
            f = n / self.steps
            kw.setdefault("milestones", tuple(max(1, round(m * f)) for m in self.milestones))
            kw.setdefault("warmup", round(self.warmup * f))
            kw["steps"] = n
        return dataclasses.replace(self, **kw)

    def describe(self) -> str:
        opt = f"{self.optimizer}" + (f" momentum {self.momentum}" if self.optimizer == "sgd" else "")
        sched = (f"x{self.gamma} at {', '.join(f'{m:,}' for m in self.milestones)}" if self.milestones
                 else "constant")
        s = (f"{self.steps:,} steps, batch {self.batch_size}, {opt}, lr {self.lr} ({sched}"
             f"{f', {self.warmup} warm-up' if self.warmup else ''}), loc-net lr x{self.loc_lr_mult}, "
             f"seeds {list(self.seeds)}")
        return s


@dataclass
class Experiment:
    """What the harness needs to know about one experiment.

    * ``build_model(name)`` -> nn.Module (called under ``torch.manual_seed(seed)``).
    * ``train_data(name, seed, rank, world_size, device, batch_size)`` -> object with
      ``batch(step)`` returning ``(x, y)`` or an object with ``.images`` / ``.labels``; it must be
      a pure function of its arguments and ``step``; ``batch_size`` is per rank.
    * ``evaluate(model, device, limit)`` -> dict with at least ``"error"`` (percent).
    * ``loss_fn(logits, y)`` -> scalar (default cross-entropy); ``metric_fn(logits, y)`` -> number of
      correct predictions (default argmax accuracy).
    * ``profiles``: name -> :class:`Profile`; ``model_overrides``: (profile, model) -> Profile
      field overrides (e.g. a cheaper CNN in the quick profile).
    * ``paper``: model -> the paper's number (percent error), for the table.
    * ``visualise(models, out_dir, device)``: optional figure of trained models.
    * ``data``: what the training and test data are (``repro.data.sets.data_record``: set, version,
      generator options), recorded in every result.json / checkpoint; a result or checkpoint of
      other data is not resumed.
    * ``config``: recipe options that change the models (e.g. a width floor), recorded and checked alike.
    """

    name: str
    models: tuple[str, ...]
    build_model: Callable[[str], nn.Module]
    train_data: Callable[..., Any]
    evaluate: Callable[..., dict]
    profiles: dict[str, Profile]
    paper: dict[str, float] = field(default_factory=dict)
    model_overrides: dict[tuple[str, str], dict] = field(default_factory=dict)
    loss_fn: Callable = F.cross_entropy
    metric_fn: Callable | None = None
    visualise: Callable | None = None
    paper_profile_note: str = ""
    metric_name: str = "error"
    data: dict | None = None
    config: dict | None = None

    def profile(self, profile: str, model: str, **overrides) -> Profile:
        if profile not in self.profiles:
            raise ValueError(f"profile must be one of {sorted(self.profiles)}, got {profile!r}")
        p = self.profiles[profile]
        p = p.replace(**self.model_overrides.get((profile, model), {}))
        return p.replace(**overrides)
