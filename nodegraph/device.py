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
    """The SD VAEs overflow in fp16 (NaN or black images: SD 1.x's at 512px, SDXL's almost always), so an fp16 request
    runs the VAE as ComfyUI does (its VAE working dtypes are bf16 and fp32): bf16 where the device has it, else fp32."""
    if dtype == torch.float16:
        return torch.bfloat16 if device_has_bf16(device) else torch.float32
    return dtype


def device_has_bf16(device: torch.device) -> bool:
    """Whether a GPU runs bf16 natively (Ampere and later). On the CPU an fp16 request stays fp32 for the VAE, as
    ComfyUI runs CPUs in fp32: bf16 is what a user asks for by name there."""
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
