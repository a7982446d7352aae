"""HTTP service and OpenAI-compatible compressing proxy (``tokensieve serve``).

Needs the ``serve`` extra: ``pip install tokensieve[serve]``."""

from .app import create_app
from .config import ServeConfig

__all__ = ["ServeConfig", "create_app", "run"]


def run(config: ServeConfig) -> None:
    """Start uvicorn on ``create_app(config)`` (blocks)."""
    import uvicorn

    if config.threads > 0:
        import torch

        torch.set_num_threads(config.threads)

    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level="info")
