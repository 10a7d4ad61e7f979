"""Where a step computes: the one parser of the config's `device` values, used by training and
evaluation alike.

`cuda` and `cuda:0` must name the same device: torch compares `torch.device("cuda")` (no index)
and `torch.device("cuda:0")` as different, although a tensor moved to the former reports the
latter. So every CUDA device is resolved to an explicit index here and made the current device
(so that streams and events are on it); the training code then never compares device names.
"""
from __future__ import annotations

import os

import torch

from scripts.lib.featio.errors import FeatgapError


def resolve_device(name: str) -> torch.device:
    """`auto` → the current CUDA device when present, else CPU; `cuda`/`cuda:N` must exist.

    The result always carries an index for CUDA, and that device becomes the current one."""
    name = str(name).strip()
    if name == "cpu":
        return torch.device("cpu")
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        name = "cuda"
    if name != "cuda" and not name.startswith("cuda:"):
        raise FeatgapError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if not torch.cuda.is_available():
        raise FeatgapError(f"device={name!r} but no CUDA device is available (use auto or cpu)")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise FeatgapError(f"device={name!r} is not a valid CUDA device name ({err})") from None
    index = torch.cuda.current_device() if device.index is None else device.index
    if not 0 <= index < torch.cuda.device_count():
        raise FeatgapError(f"device={name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def configure_determinism(device: torch.device, threads: int, seed: int) -> None:
    """Same seed → same bytes: fixed CPU threads, deterministic kernels, seeded RNGs.

    The CPU threads are set on CUDA too: a CUDA job's CPU-side work (the temperature fit, the host
    placement's gathers, statistics) would otherwise take torch's default pool, every core of
    the node, whatever train.threads (and the job's allocation) says. On CUDA, cuBLAS is
    deterministic only with a fixed workspace (CUBLAS_WORKSPACE_CONFIG, read when cuBLAS starts,
    so it is set before the first matmul); TF32 stays off so that float32 evaluation is float32."""
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, threads))
    if device.type != "cpu":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def _torch_cpu_check(name: str) -> bool:
    # torch's own CPU feature checks are private, hence the guard: a torch without one reports False.
    check = getattr(torch.cpu, name, None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def cpu_has_bf16_matrix_units() -> bool:
    """AMX-BF16 tiles (Intel Sapphire Rapids and later): oneDNN runs bf16 matmuls on them at ~8x
    the float32 rate (measured here on an earlier machine: 1.49 TFLOP/s on 2 cores)."""
    return _torch_cpu_check("_is_amx_tile_supported")


def cpu_has_native_bf16() -> bool:
    """bf16 dot products in hardware: AMX-BF16 tiles, or AVX512_BF16 (`vdpbf16ps`; Intel Cooper
    Lake, AMD Zen 4 and later), on which oneDNN multiplies bf16 at ~2-3x the float32 rate (an AMD
    EPYC with AVX512_BF16, 2 threads: 368 against 132 GFLOP/s). Without either, oneDNN converts bf16
    to float32 and computes there, slower than float32 throughout."""
    return cpu_has_bf16_matrix_units() or _torch_cpu_check("_is_avx512_bf16_supported")


def training_autocast(device: torch.device, precision: str) -> torch.dtype | None:
    """The dtype a training step autocasts its matmuls to (None: float32 throughout).

    `auto` takes bf16 where the hardware runs it natively: CUDA (tensor cores) and CPUs with
    bf16 dot products (AMX-BF16 or AVX512_BF16: cpu_has_native_bf16); `bf16` insists, `float32`
    never autocasts."""
    if precision not in ("auto", "bf16", "float32"):
        raise FeatgapError(f"train.precision must be auto, bf16 or float32, got {precision!r}")
    if precision == "float32":
        return None
    if precision == "bf16" or device.type == "cuda" or cpu_has_native_bf16():
        return torch.bfloat16
    return None
