"""Vision-token reduction: prune or merge the patch tokens of a ViT-family encoder.

    from tokensieve import vision
    with vision.reduce(model, "default", keep=0.5):
        features = model(pixel_values)
"""

from .api import apply, reduce, remove
from .backbone import load_vision_model, vision_preprocessing
from .families import Family, detect, install_tap
from .methods import DEFAULT_METHOD, METHODS, VisionMethod, get_method
from .reduce import Reducer, VisionTrace

__all__ = ["DEFAULT_METHOD", "METHODS", "Family", "Reducer", "VisionMethod", "VisionTrace", "apply",
           "detect", "get_method", "install_tap", "load_vision_model", "reduce", "remove",
           "vision_preprocessing"]
