"""Import timm beside the CPU build of torch 2.13.0 that this project pins.

Why this exists: timm imports torchvision at `import timm` (timm/layers/norm_act.py takes
FrozenBatchNorm2d from torchvision.ops.misc), and the only torchvision for torch 2.13.0 on PyPI
(0.28.0) is the CUDA 13 build: its C++ extension `_C.so` links libtorch_cuda.so/libc10_cuda.so,
which the CPU wheel lacks, so torchvision skips it (`extension._has_ops()` is False) and then
fails in `_meta_registrations.py`, whose two `register_fake("torchvision::nms"/"qnms")` calls are
the only ones not guarded by `_has_ops()`: "RuntimeError: operator torchvision::nms does not exist".

The fix here declares those two operator schemas (no kernels) and imports again, and only when
that exact error occurs, so a matching install (the CUDA torch 2.13.0 on a GPU machine) is
untouched. What stays unavailable on the CPU wheel: torchvision's C++ ops (nms, roi_align, …) and
torchvision.io's image decoders (image.so is CUDA-linked too). The extract step uses neither:
images are decoded with PIL and preprocessed by timm's transforms (torchvision.transforms v1,
pure Python on PIL images).
"""

from __future__ import annotations

import sys

import torch

# Kept at module level: a torch.library.Library removes its definitions when collected.
_SHIM_LIBRARIES: list[torch.library.Library] = []
_MISSING_OP = "operator torchvision::nms does not exist"


def import_torchvision():
    """Import torchvision, declaring its nms/qnms schemas first when its C++ ops cannot load."""
    try:
        import torchvision
    except RuntimeError as error:
        if _MISSING_OP not in str(error):
            raise
        # The failed import left half-initialised modules behind; drop them before retrying.
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
        _SHIM_LIBRARIES.append(library)
        import torchvision
    return torchvision


def import_timm():
    """Import timm (and timm.data) after making torchvision importable."""
    import_torchvision()
    import timm
    import timm.data  # used as timm.data.*: named here, not left to timm's own imports

    return timm


def torchvision_has_ops() -> bool:
    """Whether torchvision's C++ ops loaded (False on the CPU torch wheel with PyPI's torchvision)."""
    return bool(import_torchvision().extension._has_ops())
