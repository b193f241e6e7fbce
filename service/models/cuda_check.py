"""Why CUDA does not work, in words an operator can act on. The usual cause on a GPU node is an NVIDIA driver older
than the CUDA the image's onnxruntime-gpu was built for (deploy/Dockerfile.gpu: CUDA 13); onnxruntime then falls
back to the CPU, or with execution_provider=cuda the server refuses to start, and the reason should be one line."""

from __future__ import annotations

CUDA_MAJOR = 13  # deploy/cuda13.txt: onnxruntime-gpu for CUDA 13
MIN_DRIVER = "580"  # NVIDIA's oldest Linux driver for CUDA 13.0 (580.65.06)


def driver_problem() -> str:
    """What is wrong with the NVIDIA driver, as NVML tells it; "" when it is new enough or NVML cannot tell (no GPU,
    no driver, nvidia-ml-py not installed: the caller's generic reason stands)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # ImportError, or NVMLError of every kind: no driver, no GPU, no permission
        return ""
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
    except Exception:
        return ""
    finally:
        pynvml.nvmlShutdown()
    return too_old(driver.decode() if isinstance(driver, bytes) else driver, cuda)


def too_old(driver: str, cuda: int) -> str:
    """cuda: the newest CUDA the driver supports, as NVML gives it (12020 for 12.2)."""
    if cuda >= CUDA_MAJOR * 1000:
        return ""
    return (
        f"the NVIDIA driver {driver} supports CUDA up to {cuda // 1000}.{cuda % 1000 // 10}; this image needs "
        f"CUDA {CUDA_MAJOR}: driver {MIN_DRIVER} or newer"
    )
