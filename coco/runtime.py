"""Where and how the computations run: device, precision, seeds, DataLoader settings, memory.

Each decision is made here, once, and everything else asks:

* :func:`resolve_device`: CUDA, then Apple's MPS, then the CPU.
* :func:`amp_settings` (training) and :func:`inference_settings` (forward-only passes): mixed precision and
  memory format for a device, with the measurements behind them.
* :func:`seed_everything`, :func:`derived_seed`, :func:`rng_state`: reproducible runs, and resumed runs that
  draw the same numbers as uninterrupted ones.
* :func:`loader_settings`: DataLoader workers, pinned memory and prefetching for a device.
* :func:`available_memory_bytes`, :func:`current_memory_bytes`, :func:`peak_memory_bytes`,
  :func:`free_disk_bytes`: what the resource guard (``costs.py``) and the benchmark read.
"""
from __future__ import annotations

import contextlib
import os
import platform
import random
import shutil
import sys
from pathlib import Path
from typing import Mapping

import numpy as np
import torch


# ----------------------------------------------------------------------------------------------------------
# Device and precision
# ----------------------------------------------------------------------------------------------------------
def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA if available, else Apple's MPS, else the CPU. An unavailable explicit device raises."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available on this machine (use --device auto)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device {name!r} requested but MPS is not available on this machine (use --device auto)")
    return device


def amp_settings(device: torch.device, enabled: bool = True):
    """(autocast dtype or None, GradScaler or None) for training and evaluation: on CUDA bf16 where supported,
    else fp16 + scaler; on CPUs with native bfloat16, bf16 (measured faster than float32 for every model tried,
    study/cpu_precision.py); float32 on other CPUs (autocast is slower there) and on MPS (support varies)."""
    if not enabled:
        return None, None
    if device.type == "cpu":
        return (torch.bfloat16 if cpu_has_native_bf16() else None), None
    if device.type != "cuda":
        return None, None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, None  # bf16 has float32's range: no loss scaling needed
    return torch.float16, torch.amp.GradScaler("cuda")


def uses_channels_last(device: torch.device, enabled: bool = True) -> bool:
    """Whether training and evaluation run NHWC on ``device`` (CUDA and CPU; not MPS)."""
    return enabled and device.type in ("cuda", "cpu")


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), so oneDNN runs it fast."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    try:
        return any(probe() for probe in probes if probe is not None)
    except RuntimeError:
        return False


def inference_settings(device: torch.device, enabled: bool = True) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, channels_last) for forward-only passes (feature caching, prediction).

    CUDA: as :func:`amp_settings`, channels_last. CPU: bfloat16 + channels_last where the CPU has native
    bfloat16 (measured on a 2-core CPU with AVX512-BF16, study/cpu_precision.py: EfficientNet-Lite0 at 224 px
    20.5 img/s in float32, 76.5 img/s this way), float32 + channels_last elsewhere (33.6 img/s there); float32 on
    MPS.
    """
    if device.type == "cuda":
        return amp_settings(device, enabled)[0], True
    if device.type == "cpu":
        return (torch.bfloat16 if enabled and cpu_has_native_bf16() else None), True
    return None, False


def autocast(device: torch.device, amp_dtype):
    """``torch.autocast`` for ``amp_dtype``, or a no-op context for None (full precision)."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


# Forward-only passes over images on a CPU run fastest in small batches, whose activations stay in the caches:
# measured on a 2-core CPU (bfloat16, channels_last), EfficientNet-Lite2 at 384 px 40 img/s in batches of 8 and
# 13 img/s in batches of 128; EfficientNet-Lite0 at 224 px 170-214 img/s in batches of 8-16, 59 img/s in 128.
_CPU_BATCH_PIXELS = 820_000  # about 5 images of 384 x 384, 16 of 224 x 224


def inference_batch_size(device: torch.device, image_size: int, batch_size: int) -> int:
    """Images per batch of a forward-only pass (feature cache, evaluation, prediction): twice the training batch on
    CUDA, which needs large batches; on other devices as many as keep about ``_CPU_BATCH_PIXELS`` pixels."""
    if torch.device(device).type == "cuda":
        return 2 * batch_size
    return int(min(2 * batch_size, max(1, _CPU_BATCH_PIXELS // (image_size * image_size))))


def to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A batch of images on ``device`` (non-blocking from pinned memory), NHWC when ``channels_last``."""
    images = images.to(device, non_blocking=True)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


# ----------------------------------------------------------------------------------------------------------
# Seeds
# ----------------------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's (all devices) random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derived_seed(seed: int, *keys: int) -> int:
    """A seed drawn from ``seed`` and ``keys`` alone (e.g. an epoch: that epoch's shuffling, augmentation and
    dropout; a view and a chunk of the feature cache), so a resumed run draws what an uninterrupted one draws."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def rng_state() -> dict:
    """Every generator's state, for a checkpoint."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def determinism(enabled: bool, device: torch.device):
    """Deterministic kernels inside the block when ``enabled``; the previous global settings come back after."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for repeatable sums
        # warn_only: a few CUDA backward kernels have no deterministic version; warn rather than stop.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    else:
        torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed input size: autotuning pays off
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = previous[2], previous[3]


# ----------------------------------------------------------------------------------------------------------
# Loaders and memory
# ----------------------------------------------------------------------------------------------------------
def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # Windows, macOS
        return os.cpu_count() or 1


def loader_settings(device, num_workers: int | None = None, n_cpus: int | None = None) -> dict:
    """DataLoader keyword arguments (``num_workers``, ``pin_memory``, ``persistent_workers``,
    ``prefetch_factor``) for ``device``; ``num_workers`` overrides the automatic choice.

    Automatic: on CUDA the main process only feeds the GPU, so all cores but one decode (8 at most: beyond that
    these small models wait on the GPU). On the CPU the training step itself uses every core and loading takes
    ~2.5 ms of a ~150 ms per-image step, so a worker only takes cores from the step: measured on 2 cores, end to
    end was 0.98 of the step alone with one worker and 1.00 without, and a worker costs memory and start-up
    time. So none up to 4 cores, then a quarter of them. Persistent workers start once per run, not once per
    epoch (spawn start-up is slow on Windows). Workers unpickle the dataset and its transforms (spawn on
    Windows and macOS): everything the project hands to a DataLoader is a module-level class.
    """
    device = torch.device(device)
    if num_workers is None:
        n_cpus = n_cpus or cpu_count()
        if device.type == "cuda":
            num_workers = min(8, max(1, n_cpus - 1))
        else:
            num_workers = 0 if n_cpus <= 4 else min(4, n_cpus // 4)
    return {"num_workers": num_workers, "pin_memory": device.type == "cuda", "persistent_workers": num_workers > 0,
            "prefetch_factor": 4 if num_workers > 0 else None}


def available_memory_bytes() -> int:
    """RAM available to this process now (psutil where installed, else sysconf; 0 if unknown)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.virtual_memory().available)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return 0


def current_memory_bytes() -> int:
    """This process's resident memory now (Linux /proc, else psutil where installed, else its peak so far)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as file:
            return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        pass
    try:
        import psutil
    except ImportError:
        return peak_memory_bytes()
    return int(psutil.Process().memory_info().rss)


def free_disk_bytes(path) -> int:
    """Free space on the file system that holds ``path`` (or its nearest existing parent folder)."""
    path = Path(path).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return int(shutil.disk_usage(path).free)


def peak_memory_bytes(device=None) -> int:
    """Peak GPU memory allocated by tensors on a CUDA ``device``, else this process's peak resident memory."""
    if device is not None and torch.device(device).type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        import resource
    except ImportError:  # Windows
        import psutil
        return int(psutil.Process().memory_info().peak_wset)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS: bytes, Linux: KiB


def hardware_info(device: torch.device) -> dict:
    """What a run records about where it ran."""
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
