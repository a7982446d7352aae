"""Prune the visual tokens of vision-language models, before or inside the language model.

    from tokensieve import vlm
    with vlm.prune(model, "default", keep=0.25) as r:
        out = model.generate(**inputs, max_new_tokens=16)
"""

from .api import prune
from .methods import DEFAULT_METHOD, METHODS, Inside, Visual, VLMMethod, get_method
from .records import ImageRecord, Session

__all__ = ["DEFAULT_METHOD", "METHODS", "ImageRecord", "Inside", "Session", "VLMMethod", "Visual",
           "get_method", "prune"]
