"""What machine the calibration ran on: GPU through NVML, CUDA and torch versions, host."""

from __future__ import annotations

import platform
import re
from datetime import UTC, datetime
from typing import Any

import torch


def gpu_key(nvml_name: str, memory_bytes: int = 0) -> str:
    """A GPU registry name from the NVML name: ``NVIDIA H200`` → ``h200``, A100 80 GB → ``a100-80gb``."""
    n = nvml_name.upper()
    if "H200" in n:
        return "h200"
    if "H100" in n:
        return "h100-80gb"
    if "A100" in n:
        return "a100-80gb" if ("80GB" in n or memory_bytes > 60e9) else "a100-40gb"
    return re.sub(r"[^a-z0-9]+", "-", nvml_name.lower()).strip("-")


def _nvml(index: int) -> dict[str, Any]:
    import pynvml

    pynvml.nvmlInit()
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        out: dict[str, Any] = {}

        def grab(key: str, fn: Any, *args: Any) -> None:
            try:
                v = fn(*args)
                out[key] = v.decode() if isinstance(v, bytes) else v
            except pynvml.NVMLError as exc:
                out[key] = f"unavailable ({exc})"

        grab("name", pynvml.nvmlDeviceGetName, h)
        grab("driver", pynvml.nvmlSystemGetDriverVersion)
        grab("cuda_driver_version", pynvml.nvmlSystemGetCudaDriverVersion)
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        out["memory_total_bytes"], out["memory_used_bytes_at_start"] = int(mem.total), int(mem.used)
        for key, clk in (("sm", pynvml.NVML_CLOCK_SM), ("mem", pynvml.NVML_CLOCK_MEM)):
            grab(f"clock_{key}_max_mhz", pynvml.nvmlDeviceGetMaxClockInfo, h, clk)
            grab(f"clock_{key}_now_mhz", pynvml.nvmlDeviceGetClockInfo, h, clk)
        try:
            cur, pend = pynvml.nvmlDeviceGetMigMode(h)
            out["mig_mode"], out["mig_mode_pending"] = int(cur), int(pend)
        except pynvml.NVMLError as exc:
            out["mig_mode"] = f"unavailable ({exc})"
        grab("pcie_gen_current", pynvml.nvmlDeviceGetCurrPcieLinkGeneration, h)
        grab("pcie_gen_max", pynvml.nvmlDeviceGetMaxPcieLinkGeneration, h)
        grab("pcie_width_current", pynvml.nvmlDeviceGetCurrPcieLinkWidth, h)
        grab("pcie_width_max", pynvml.nvmlDeviceGetMaxPcieLinkWidth, h)
        grab("power_limit_mw", pynvml.nvmlDeviceGetPowerManagementLimit, h)
        grab("temperature_c", pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU)
        return out
    finally:
        pynvml.nvmlShutdown()


def discover(device: torch.device) -> dict[str, Any]:
    """Metadata of the device the run uses (NVML on CUDA, the host's processor on CPU)."""
    info: dict[str, Any] = {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "host": platform.platform(),
        "host_cpus": __import__("os").cpu_count(),
    }
    if device.type != "cuda":
        info.update(gpu="cpu", gpu_name=platform.processor() or platform.machine(), sms=1)
        return info
    idx = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(idx)
    info.update(
        gpu_name=props.name, sms=props.multi_processor_count, memory_bytes=props.total_memory,
        compute_capability=f"{props.major}.{props.minor}",
        l2_bytes=getattr(props, "L2_cache_size", None), cudnn=torch.backends.cudnn.version(),
    )
    try:
        info["nvml"] = _nvml(idx)
    except Exception as exc:  # NVML missing or refused: the run goes on with torch's view
        info["nvml"] = f"unavailable ({type(exc).__name__}: {exc})"
    info["gpu"] = gpu_key(props.name, props.total_memory)
    return info
