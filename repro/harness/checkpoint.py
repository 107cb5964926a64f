"""Checkpoint files: atomic, hashed, loaded with ``weights_only=True``.

A checkpoint is one file holding ``{"format": FORMAT, "sha256": hex, "payload": uint8 tensor}``,
where ``payload`` is the ``torch.save`` serialisation of the checkpoint dict (plain tensors,
dicts, lists, tuples, numbers and strings only) and ``sha256`` is its hash. It is written to a
temporary file in the same folder, flushed to disk and renamed over the old one, so a reader sees
either the previous checkpoint or the new one, never half of one. On load the hash is checked
before the payload is deserialised; a damaged, truncated or otherwise unreadable file raises
:class:`CheckpointError` naming the file and the way out (delete it, or rerun with ``--restart``).

Files written before this format (a plain ``torch.save`` of the checkpoint dict, no hash) still
load, with a warning on stderr that they cannot be verified.
"""
from __future__ import annotations

import hashlib
import io
import os
import sys
from pathlib import Path

import torch

FORMAT = "stn-triton-checkpoint-v2"


class CheckpointError(RuntimeError):
    """A checkpoint file is damaged, truncated or not a checkpoint."""


def _way_out(path: Path) -> str:
    return (f"Delete {path} (the run then starts from step 0), or rerun with --restart "
            f"(ignores and deletes the checkpoints of the runs it trains).")


def save_checkpoint(obj: dict, path: str | os.PathLike) -> None:
    """Write ``obj`` to ``path`` atomically, with the sha256 of its serialisation."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    payload = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    outer = {"format": FORMAT, "sha256": hashlib.sha256(data).hexdigest(), "payload": payload}
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(outer, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """The checkpoint dict at ``path``, hash-verified (see the module docstring)."""
    path = Path(path)
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)  # (old format: tensors on the CPU)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 -- truncated / damaged zip, unpickling error, ...
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
                              f"{_way_out(path)}") from None
    if not isinstance(outer, dict):
        raise CheckpointError(f"{path} is not a checkpoint (it holds a {type(outer).__name__}). {_way_out(path)}")
    if outer.get("format") != FORMAT:  # written before hashes: a plain torch.save of the dict
        print(f"warning: old-format checkpoint {path} (no content hash): loaded without verification; "
              f"the next checkpoint is written in the hashed format.", file=sys.stderr)
        return outer
    payload = outer.get("payload")
    if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8:
        raise CheckpointError(f"checkpoint {path} has no payload. {_way_out(path)}")
    data = payload.numpy().tobytes()
    got = hashlib.sha256(data).hexdigest()
    if got != outer.get("sha256"):
        raise CheckpointError(f"checkpoint {path} is damaged: its content has sha256 {got[:16]}..., the file records "
                              f"{str(outer.get('sha256'))[:16]}.... {_way_out(path)}")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 -- hash matched, so this is a file written with foreign content
        raise CheckpointError(f"checkpoint {path} cannot be deserialised ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}). {_way_out(path)}") from None


def remove_checkpoint(path: str | os.PathLike) -> bool:
    """Delete ``path`` if present; True when something was deleted."""
    path = Path(path)
    if path.exists():
        path.unlink()
        return True
    return False
