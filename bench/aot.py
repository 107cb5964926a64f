"""Ahead-of-time compilation of the kernels for real GPU targets, on a machine without a GPU.

The Triton interpreter accepts code the real compiler rejects, so every kernel is also compiled
with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` and the cubin is read
with the ``cuobjdump`` bundled in Triton's wheel: registers, local memory (spills), and the
global load/store instructions (with their vector widths) in the SASS.

What to compile is listed in ``bench/aot_configs.py``: one :class:`KernelConfig` per
specialisation. Benchmark tooling: nothing under ``stn_triton`` imports this module.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

ARCHS = (80, 90)
_DTYPES = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16", "fp64": "*fp64", "i64": "*i64", "i32": "*i32"}


@dataclasses.dataclass
class KernelConfig:
    """One specialisation of a kernel: pointer dtypes by argument name, constexpr values."""

    label: str
    fn: object  # a @triton.jit function
    pointers: dict  # arg name -> "fp32" | "fp16" | "bf16" | "fp64" | "i64" | "i32"
    constexprs: dict
    # Representative runtime values of integer args (strides, sizes), specialised the way the JIT
    # specialises a real launch: a value of 1 becomes a constant, a multiple of 16 gets the
    # tt.divisibility=16 hint. Pointers always get the hint (torch allocations are 16-aligned).
    specialize: dict = dataclasses.field(default_factory=dict)
    num_warps: int = 4  # as the launchers use by default (kernels.policy.launch_config)

    def all_constexprs(self) -> dict:
        return {**self.constexprs, **{k: 1 for k, v in self.specialize.items() if v == 1}}

    def signature(self) -> dict:
        consts = self.all_constexprs()
        sig = {}
        for name in self.fn.arg_names:
            if name in consts:
                sig[name] = "constexpr"
            elif name in self.pointers:
                sig[name] = _DTYPES[self.pointers[name]]
            else:
                sig[name] = "i32"
        return sig

    def attrs(self) -> dict:
        names = self.fn.arg_names
        hinted = set(self.pointers) | {k for k, v in self.specialize.items() if v != 1 and v % 16 == 0}
        return {(names.index(k),): [["tt.divisibility", 16]] for k in hinted}


# Per-SM limits of the targets (CUDA occupancy-calculator rules): warp slots, resident blocks,
# 32-bit registers (allocated per warp in units of 256), shared memory (1 KiB reserved per block).
_SM_LIMITS = {80: dict(warps=64, blocks=32, regs=65536, smem=164 * 1024),
              90: dict(warps=64, blocks=32, regs=65536, smem=228 * 1024)}


def occupancy(registers: int, num_warps: int, shared_bytes: int, arch: int) -> float:
    """Theoretical occupancy: the fraction of an SM's warp slots that resident blocks of this
    kernel fill, limited by registers, shared memory and the block count. Static evidence only: a
    gather-bound kernel can hide latency with fewer warps if each has many loads in flight."""
    lim = _SM_LIMITS[arch]
    regs_per_warp = -(-registers * 32 // 256) * 256
    by_regs = (lim["regs"] // max(regs_per_warp, 1)) // num_warps
    by_smem = lim["smem"] // (shared_bytes + 1024)
    blocks = min(by_regs, by_smem, lim["warps"] // num_warps, lim["blocks"])
    return blocks * num_warps / lim["warps"]


@dataclasses.dataclass
class CompileReport:
    label: str
    kernel: str
    arch: int
    registers: int
    spill_bytes: int  # LOCAL memory per thread: spills (and local arrays)
    shared_bytes: int
    num_warps: int
    global_loads: int
    global_stores: int
    atomics: int
    load_widths: dict  # bits -> count (LDG.E, LDG.E.64, LDG.E.128 ...)
    store_widths: dict
    occupancy: float  # theoretical, see occupancy()
    # int64 specialisations (INDEX_64, or kernels that always index in int64): pointer offsets
    # computed with 32-bit arithmetic (int32_offset_arithmetic); None where not checked
    int32_offsets: list | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def cuobjdump_path() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def _width(op: str) -> int:
    m = re.search(r"\.(64|128)\b", op)
    return int(m.group(1)) if m else 32


_SHAPE_OPS = {"tt.splat", "tt.broadcast", "tt.expand_dims", "tt.reshape", "ttg.convert_layout"}
_DEF = re.compile(r"^\s*(%[\w]+) = ([\w.]+) (.*)$")


def int32_offset_arithmetic(ttir: str) -> list[str]:
    """Pointer offsets computed in 32-bit arithmetic: the ``tt.addptr`` lines of ``ttir`` whose
    offset is i32 and comes (through splat / broadcast / expand_dims / reshape) from an integer
    operation rather than from a constant, a kernel argument or a loop variable. In an int64
    specialisation every such line is an offset that can wrap past 2**31."""
    defs = {}
    for line in ttir.splitlines():
        m = _DEF.match(line)
        if m:
            body = m.group(3).split(" loc(")[0]
            defs[m.group(1)] = (m.group(2), re.findall(r"%[\w]+", body.split(" : ")[0]), line.strip())
    bad = []
    for name, (op, operands, line) in defs.items():
        if op != "tt.addptr" or len(operands) != 2:
            continue
        offset_type = line.split(" loc(")[0].rsplit(",", 1)[-1].strip()
        if not re.search(r"i32>?$", offset_type):
            continue
        src = operands[1]
        while src in defs and defs[src][0] in _SHAPE_OPS:
            src = defs[src][1][0]
        if src in defs and defs[src][0] != "arith.constant":
            bad.append(f"{line.split(' loc(')[0]}   <- {defs[src][2].split(' loc(')[0]}")
    return bad


def compile_config(cfg: KernelConfig, arch: int) -> CompileReport:
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silence 3.9's default-change warning
    src = ASTSource(cfg.fn, cfg.signature(), cfg.all_constexprs(), cfg.attrs())
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": cfg.num_warps})
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        usage = subprocess.run([cuobjdump_path(), "--dump-resource-usage", path], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([cuobjdump_path(), "--dump-sass", path], capture_output=True, text=True, check=True).stdout
    regs = int(re.search(r"REG:(\d+)", usage).group(1))
    local = int(re.search(r"LOCAL:(\d+)", usage).group(1))
    shared = int(re.search(r"SHARED:(\d+)", usage).group(1))
    loads, stores = {}, {}
    n_atom = 0
    for op in re.findall(r"\b((?:LDG|STG|REDG|RED|ATOMG)\.[A-Z0-9._]+|LDG|STG)\b", sass):
        if op.startswith("LDG"):
            loads[_width(op)] = loads.get(_width(op), 0) + 1
        elif op.startswith("STG"):
            stores[_width(op)] = stores.get(_width(op), 0) + 1
        else:
            n_atom += 1
    return CompileReport(
        label=cfg.label, kernel=cfg.fn.__name__, arch=arch, registers=regs, spill_bytes=local, shared_bytes=shared,
        num_warps=compiled.metadata.num_warps, global_loads=sum(loads.values()), global_stores=sum(stores.values()),
        atomics=n_atom, load_widths=loads, store_widths=stores,
        occupancy=occupancy(regs, compiled.metadata.num_warps, shared, arch),
        int32_offsets=int32_offset_arithmetic(compiled.asm["ttir"]) if cfg.constexprs.get("INDEX_64", True) else None,
    )
