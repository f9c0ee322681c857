"""What every benchmark records about the machine it ran on, so a figure names its machine."""

from __future__ import annotations

import os
import platform


def machine() -> dict:
    """CPU model and the flags that decide CPU kernels, cores, memory, GPU, library versions."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")
    info = {
        "cpu": model,
        "cpu_flags": [f for f in wanted if f in flags],
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except ImportError:
        pass
    try:
        import ray

        info["ray"] = ray.__version__
    except ImportError:
        pass
    return info


def describe(info: dict) -> str:
    """One line for a table header: 'AMD EPYC (avx512_bf16), 2 CPUs, no GPU, torch 2.14.1'."""
    flags = f" ({', '.join(info['cpu_flags'])})" if info.get("cpu_flags") else ""
    gpu = info.get("gpu") or "no GPU"
    return f"{info['cpu']}{flags}, {info['cpus']} CPUs, {gpu}, torch {info.get('torch')}"
