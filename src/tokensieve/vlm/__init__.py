"""Prune the visual tokens of vision-language models, before or inside the language model.

    from tokensieve import vlm
    model, processor = vlm.load("default")      # the small VLM, or a local folder
    with vlm.prune(model, "default", keep=0.25) as r:
        out = model.generate(**inputs, max_new_tokens=16)
"""

from .api import prune
from .load import load
from .methods import DEFAULT_METHOD, METHODS, Inside, Visual, VLMMethod, get_method
from .records import ImageRecord, Session

__all__ = ["DEFAULT_METHOD", "METHODS", "ImageRecord", "Inside", "Session", "VLMMethod", "Visual",
           "get_method", "load", "prune"]
