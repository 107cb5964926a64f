"""Checkpoint files: atomic, hashed, loaded with ``weights_only=True``.

A checkpoint is one file holding ``{"format": FORMAT, "sha256": hex, "payload": uint8 tensor}``,
where ``payload`` is the ``torch.save`` serialisation of the checkpoint dict (plain tensors,
dicts, lists, tuples, numbers and strings only) and ``sha256`` is its hash. It is written to a
temporary file in the same folder, flushed to disk and renamed over the old one, so a reader sees
either the previous checkpoint or the new one, never half of one. On load the hash is checked
before the payload is deserialised; a damaged, truncated or otherwise unreadable file raises
:class:`CheckpointError` naming the file and the way out (delete it, or rerun with ``--restart``).

Files written before this format (a plain ``torch.save`` of the training checkpoint dict, no hash:
``model`` and ``optimizer`` state dicts, an integer ``step``) still load, with a warning on stderr
that they cannot be verified. Anything else without the format field -- another dict, a tensor, an
empty or truncated file -- is refused with :class:`CheckpointError`: nothing is loaded unverified
unless it is that recognised earlier format.
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


def _first_line(e: BaseException) -> str:
    """The exception's first message line, or its type when it has no message (e.g. EOFError of an empty file)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def is_earlier_format(obj) -> bool:
    """A training checkpoint written before the hashed format (a171558): a plain dict with ``model`` and
    ``optimizer`` state dicts and an integer ``step``."""
    return (isinstance(obj, dict) and "format" not in obj and isinstance(obj.get("model"), dict)
            and isinstance(obj.get("optimizer"), dict) and isinstance(obj.get("step"), int))


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
        size = path.stat().st_size if path.exists() else 0
        what = "is empty (0 bytes)" if size == 0 else f"is unreadable ({_first_line(e)})"
        raise CheckpointError(f"checkpoint {path} {what}. {_way_out(path)}") from None
    if not isinstance(outer, dict):
        raise CheckpointError(f"{path} is not a checkpoint (it holds a {type(outer).__name__}). {_way_out(path)}")
    if "format" not in outer:
        if not is_earlier_format(outer):
            raise CheckpointError(f"{path} is not a checkpoint of this project (no format field, and not the earlier "
                                  f"unhashed training checkpoint: keys {sorted(map(str, outer))[:8]}); it cannot be "
                                  f"verified, so it is not loaded. {_way_out(path)}")
        print(f"warning: old-format checkpoint {path} (no content hash): loaded without verification; "
              f"the next checkpoint is written in the hashed format.", file=sys.stderr)
        return outer
    if outer.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {str(outer.get('format'))[:60]!r}, this version reads "
                              f"{FORMAT!r}. {_way_out(path)}")
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
        raise CheckpointError(f"checkpoint {path} cannot be deserialised ({_first_line(e)}). {_way_out(path)}") from None


def remove_checkpoint(path: str | os.PathLike) -> bool:
    """Delete ``path`` if present; True when something was deleted."""
    path = Path(path)
    if path.exists():
        path.unlink()
        return True
    return False
