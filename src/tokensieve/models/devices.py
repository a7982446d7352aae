"""A user's device and dtype names, checked and made canonical before any model is loaded."""

from __future__ import annotations


def resolve_dtype(dtype: str, device: str = "cpu"):
    """'auto' is bfloat16 where the hardware runs it fast (CUDA, or a CPU with native bf16:
    there SmolLM2 scores ~2.5x faster with surprisal within ~0.03 nats of float32), else
    float32 (also on MPS); 'float32' / 'bfloat16' / 'float16' force one."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16
        if device.startswith("mps"):
            return torch.float32
        try:
            fast = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            fast = False
        return torch.bfloat16 if fast else torch.float32
    if dtype not in ("float32", "bfloat16", "float16"):
        from ..errors import UsageError

        raise UsageError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16.")
    return getattr(torch, dtype)


DEVICES = ("cpu", "cuda", "cuda:N", "mps", "auto")


def resolve_device(device: str = "cpu") -> str:
    """A user's device name as a canonical torch device string ('cpu', 'cuda:0', 'mps'), or a
    :class:`UsageError` that names the problem and the fix. 'auto' is the first of CUDA, MPS
    and CPU that this machine has; 'cuda' means the current CUDA device."""
    import torch

    from ..errors import UsageError

    if not isinstance(device, str | torch.device):
        raise UsageError(f"device must be a string such as 'cpu', 'cuda' or 'auto', got "
                         f"{type(device).__name__}.")
    name = str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return f"cuda:{torch.cuda.current_device()}"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"unknown device {device!r}; use one of: {', '.join(DEVICES)}.") from None
    if dev.type == "cpu":
        return "cpu"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"device {device!r} is not available: this machine has no usable CUDA GPU "
                f"(torch {torch.__version__} reports none); use device='cpu', or 'auto' to take a "
                "GPU only when there is one."
            )
        count = torch.cuda.device_count()
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if index >= count:
            raise UsageError(f"device {device!r} does not exist: this machine has {count} CUDA "
                             f"device(s), cuda:0 to cuda:{count - 1}.")
        return f"cuda:{index}"
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UsageError(f"device {device!r} is not available: MPS needs an Apple-silicon Mac "
                             "with a PyTorch build that has MPS; use device='cpu' or 'auto'.")
        return "mps"
    backend = getattr(torch, dev.type, None)
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        raise UsageError(f"device {device!r} is not available on this machine; use one of: "
                         f"{', '.join(DEVICES)}.")
    return str(dev)
