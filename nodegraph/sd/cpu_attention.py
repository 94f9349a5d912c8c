"""Our bf16 attention kernel for CPUs with AVX512-BF16 and no AMX (kernels/attention.cpp), built on first use.

On such CPUs PyTorch's flash-attention kernel is the slowest part of a UNet step; with AMX, PyTorch's own kernels
use the tile units and stay in charge. The kernel is compiled once per source version with the system's C++
compiler into the user cache folder and loaded with ctypes. Without a compiler, or where the CPU or the tensors do
not fit, `attention` returns None and the caller uses PyTorch's scaled_dot_product_attention. NODEGRAPH_CPU_ATTENTION=0
turns it off."""

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).parent / "kernels" / "attention.cpp"
FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mfma"]
MAX_HEAD_SIZE = 160
MIN_SCORES = 2**18  # below this many scores starting threads costs more than PyTorch's kernel takes

log = logging.getLogger(__name__)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor | None:
    """q [B,N,C], k/v [B,M,C] (C = heads x head size), bf16 on the CPU -> [B,N,C]; None where the kernel does not
    apply (then nothing was computed)."""
    batch, queries, channels = q.shape
    head_size = channels // heads
    if not (q.device.type == k.device.type == v.device.type == "cpu" and q.dtype == k.dtype == v.dtype == torch.bfloat16):
        return None
    if head_size % 2 or head_size > MAX_HEAD_SIZE or batch * heads * queries * k.shape[1] < MIN_SCORES or k.stride() != v.stride():
        return None
    if any(t.stride(-1) != 1 for t in (q, k, v)) or (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))):
        return None
    library = kernel()
    if library is None:
        return None
    out = torch.empty(batch, queries, channels, dtype=torch.bfloat16)
    status = library.nodegraph_attention_bf16(
        q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), batch, heads, queries, k.shape[1], head_size,
        q.stride(1), q.stride(0), k.stride(1), k.stride(0), out.stride(1), out.stride(0), head_size ** -0.5,
        torch.get_num_threads())
    return out if status == 0 else None


@functools.cache
def kernel() -> ctypes.CDLL | None:
    """The loaded kernel, or None where it should not or cannot run here (the reason is logged once)."""
    if os.environ.get("NODEGRAPH_CPU_ATTENTION", "1") == "0":
        return None
    flags = cpu_flags()
    if "avx512_bf16" not in flags or "amx_bf16" in flags:
        return None
    try:
        library = ctypes.CDLL(str(build()))
    except subprocess.CalledProcessError as error:
        log.warning("CPU attention kernel did not compile, using PyTorch's: %s", (error.stderr or "").strip()[-2000:] or error)
        return None
    except OSError as error:
        log.warning("CPU attention kernel unavailable, using PyTorch's: %s", error)
        return None
    library.nodegraph_attention_bf16.restype = ctypes.c_int
    library.nodegraph_attention_bf16.argtypes = ([ctypes.c_void_p] * 4 + [ctypes.c_int] * 5 + [ctypes.c_int64] * 6
                                                 + [ctypes.c_float, ctypes.c_int])
    return library if library.nodegraph_attention_supported() else None


def build() -> Path:
    """Compile the kernel into the cache folder unless this source and these flags were compiled before."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise OSError("no C++ compiler (g++) found")
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join([compiler, *FLAGS]).encode()).hexdigest()[:16]
    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nodegraph"
    target = folder / f"attention-{digest}.so"
    if not target.exists():
        log.info("compiling the CPU attention kernel into %s (once, about 10 s)", target)
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as scratch:  # built aside, then renamed: never half-written
            built = Path(scratch) / target.name
            subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(built)], check=True, capture_output=True, text=True)
            built.replace(target)
    return target


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()
