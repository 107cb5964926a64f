"""Hashes of rendered distorted-MNIST data, pinned by ``tests/test_data_sets.py``.

``python -m testing.data_hashes`` prints ``{name: [hash, ...]}`` as JSON for every data set, so the
tests can render the same batches in child processes under another ``ATEN_CPU_CAPABILITY`` (which
torch reads once, at import) and compare bits across instruction sets."""
from __future__ import annotations

import hashlib
import json

# (batch, seed, step, rank, world_size) of the online batches hashed; a last hash covers the first 64
# images of build(name, "test", seed=0)
PINNED_CASES = [(64, 0, 0, 0, 1), (64, 0, 7, 0, 1), (256, 3, 123456, 1, 2)]


def batch_hash(b) -> str:
    """sha256 prefix of a batch's images, labels, digit labels and boxes (dtype, shape and bytes)."""
    m = hashlib.sha256()
    for t in (b.images, b.labels, b.digit_labels, b.boxes):
        if t is not None:
            m.update(str(t.dtype).encode())
            m.update(str(tuple(t.shape)).encode())
            m.update(t.contiguous().numpy().tobytes())
    return m.hexdigest()[:16]


# generator options whose rendering takes another path than the defaults', pinned across CPUs too:
# label -> (set, options)
OPTION_CASES = {"E[side=output]": ("E", {"side": "output"})}


def data_hashes(name: str, options: dict | None = None) -> list[str]:
    from repro.data import sets

    got = [batch_hash(sets.OnlineStream(name, bs, seed=seed, rank=rank, world_size=ws, options=options).batch(step))
           for bs, seed, step, rank, ws in PINNED_CASES]
    fixed = sets.build(name, "test", seed=0, device="cpu", n=64, options=options).images_u8.numpy().tobytes()
    return got + [hashlib.sha256(fixed).hexdigest()[:16]]


def all_hashes() -> dict[str, list[str]]:
    """Every set at its defaults, and :data:`OPTION_CASES`."""
    from repro.data import distort

    return {**{name: data_hashes(name) for name in distort.NAMES},
            **{label: data_hashes(name, opts) for label, (name, opts) in OPTION_CASES.items()}}


if __name__ == "__main__":
    print(json.dumps(all_hashes()))
