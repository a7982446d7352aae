"""KV-cache compression for Hugging Face causal LMs (``from tokensieve import kv``)."""

from .api import Answers, answer, chat_parts, check_model, compress, number_spans, sentence_spans
from .cache import CompressedCache, CompressedLayer
from .plan import Plan
from .policies import DEFAULT_POLICY, POLICIES, Policy, get_policy

__all__ = ["DEFAULT_POLICY", "POLICIES", "Answers", "CompressedCache", "CompressedLayer", "Plan",
           "Policy", "answer", "chat_parts", "check_model", "compress", "get_policy",
           "number_spans", "sentence_spans"]
