"""``train``: learn only from the informative tokens.

:func:`selective_loss` selects the labelled tokens of a batch by a method ("all",
"random", "eslm", "excess", "pdl", "qtuning") at a ``keep`` fraction and returns the loss
over them with the mask it used; given hidden states and the LM head, the head runs with
gradients only on the selected rows. :class:`SelectiveTrainer` (Hugging Face) and
:func:`selective_step` (plain PyTorch) train any causal LM with it and count the FLOPs each
step spends (:func:`step_flops`). :class:`SampleScorer` scores whole samples by their
informative tokens (T-SHIRT's selective IFD) for data selection; the file-level
``tokensieve.dataset.select.select_dataset`` (``tokensieve train select``) keeps the best.
"""

from .flops import ModelShape, StepFlops, body_forward_flops, head_row_flops, step_flops
from .frequencies import token_frequencies
from .loss import SelectiveLoss, selective_loss, token_losses
from .methods import DEFAULT_METHOD, METHODS, Selection, TrainMethod, get_method
from .model import causal_lm_loss, model_shape, split_causal_lm
from .select import SampleScore, SampleScorer, informative_loss, selective_ifd
from .signals import Head, TokenSignals
from .trainer import SelectiveTrainer, StepResult, selective_step

__all__ = ["DEFAULT_METHOD", "METHODS", "Head", "ModelShape", "SampleScore", "SampleScorer",
           "SelectiveLoss", "SelectiveTrainer", "Selection", "StepFlops", "StepResult",
           "TokenSignals", "TrainMethod", "body_forward_flops", "causal_lm_loss", "get_method",
           "head_row_flops", "informative_loss", "model_shape", "selective_ifd",
           "selective_loss", "selective_step", "split_causal_lm", "step_flops",
           "token_frequencies", "token_losses"]
