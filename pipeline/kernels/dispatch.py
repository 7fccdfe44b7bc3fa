"""The one place that chooses between the CPU and the GPU implementation of a kernel.

Kernels take numpy or cupy arrays. ``array_module(x)`` gives the matching array library and
``ndimage_module(x)`` the matching ``scipy.ndimage`` twin, so kernels contain no ``if gpu:``
branches: the array type decides (numpy → CPU, cupy → GPU). cupy is imported lazily and only
when a cupy array is actually passed in.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np


def is_device_array(x: Any) -> bool:
    """True for arrays that live on a GPU (cupy), without importing cupy."""
    return type(x).__module__.split(".")[0] == "cupy"


def array_module(x: Any) -> ModuleType:
    """numpy for host arrays, cupy for device arrays."""
    if is_device_array(x):
        import cupy

        return cupy
    return np


def ndimage_module(x: Any) -> ModuleType:
    """scipy.ndimage for host arrays, cupyx.scipy.ndimage for device arrays."""
    if is_device_array(x):
        import cupyx.scipy.ndimage as cndi

        return cndi
    import scipy.ndimage as ndi

    return ndi


def to_host(x: Any) -> np.ndarray:
    """A numpy copy of a numpy or cupy array (no copy for numpy)."""
    if is_device_array(x):
        return x.get()  # type: ignore[no-any-return]
    return np.asarray(x)


def gpu_available() -> bool:
    """True when cupy imports and sees at least one CUDA device."""
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount()) > 0
    except Exception:
        return False
