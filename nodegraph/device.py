"""Device and dtype policy, decided here and nowhere else."""

import torch


def cpu_has_fast_bf16() -> bool:
    """True when the CPU multiplies bf16 matrices natively (AMX or AVX512-BF16), where bf16 runs ~4x fp32."""
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        return False
    if "AMX" in capability.upper():
        return True
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:
        return False
    return any(flag in flags for flag in (" amx_bf16", " avx512_bf16"))


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """None picks CUDA when present, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


DTYPE_NAMES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_dtype(device: torch.device, dtype: torch.dtype | str | None = None) -> torch.dtype:
    """None picks fp16 on CUDA, bf16 on CPUs with native bf16 matrix support, else fp32."""
    if isinstance(dtype, str):
        if dtype == "auto":
            dtype = None
        elif dtype in DTYPE_NAMES:
            dtype = DTYPE_NAMES[dtype]
        else:
            raise ValueError(f"unknown dtype {dtype!r}: expected one of auto, {', '.join(DTYPE_NAMES)}")
    if dtype is not None:
        return dtype
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


def pick_vae_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The SD 1.x VAE overflows in fp16 (NaN/black images at 512px), so fp16 requests run it in fp32; bf16 is safe."""
    if dtype == torch.float16:
        return torch.float32
    return dtype
