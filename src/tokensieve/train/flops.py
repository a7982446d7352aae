"""Analytic FLOP count of a Llama-style decoder step (one multiply-add = 2 FLOPs).

Counted: the attention projections (q, o with ``heads`` heads, k, v with ``kv_heads``:
grouped-query attention), the attention scores and weighted sum over a causal sequence
(position ``i`` attends to ``i + 1`` positions), the gated MLP (gate, up, down) and the LM
head per row it runs on. Not counted (small): norms, rotary embeddings, softmax,
activations, residual adds, the embedding lookup. The backward of a part that gets
gradients costs 2x its forward (gradients of its input and of its weights); the body
always runs backward over every position (attention mixes them), the head only over the
rows it ran on with gradients.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import UsageError


@dataclass(frozen=True)
class ModelShape:
    """The sizes that set a decoder's FLOPs."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    head_dim: int | None = None

    def __post_init__(self):
        for k, v in asdict(self).items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise UsageError(f"model shape {k} must be a positive whole number, got {v!r}.")

    @property
    def dim(self) -> int:
        """Width of one attention head."""
        return self.head_dim or self.hidden // self.heads

    @classmethod
    def from_config(cls, config) -> ModelShape:
        """From a Hugging Face Llama-style config (``hidden_size``, ``intermediate_size``,
        ``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads``,
        ``vocab_size``, optional ``head_dim``)."""
        c = getattr(config, "text_config", None) or config
        try:
            return cls(hidden=c.hidden_size, intermediate=c.intermediate_size,
                       layers=c.num_hidden_layers, heads=c.num_attention_heads,
                       kv_heads=getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
                       vocab=c.vocab_size, head_dim=getattr(c, "head_dim", None))
        except AttributeError as exc:
            raise UsageError(f"not a Llama-style decoder config ({exc}); give a ModelShape.") \
                from None


def layer_token_flops(shape: ModelShape) -> int:
    """Forward FLOPs of one layer per token, without the attention over the sequence."""
    d, h = shape.dim, shape.hidden
    proj = 2 * h * (shape.heads * d) * 2 + 2 * h * (shape.kv_heads * d) * 2  # q, o; k, v
    return proj + 3 * 2 * h * shape.intermediate                              # gate, up, down


def attention_flops(shape: ModelShape, seq_len: int) -> int:
    """Forward FLOPs of one layer's scores (q.k) and weighted sum (p.v) over a causal
    sequence of ``seq_len``: 2 x 2 x heads x head_dim x (1 + 2 + ... + seq_len)."""
    return 4 * shape.heads * shape.dim * seq_len * (seq_len + 1) // 2


def body_forward_flops(shape: ModelShape, seq_len: int, batch: int = 1) -> int:
    """Forward FLOPs of all layers for ``batch`` sequences of ``seq_len`` positions."""
    per_seq = shape.layers * (seq_len * layer_token_flops(shape) + attention_flops(shape, seq_len))
    return batch * per_seq


def head_row_flops(shape: ModelShape) -> int:
    """Forward FLOPs of the LM head on one row."""
    return 2 * shape.hidden * shape.vocab


@dataclass(frozen=True)
class StepFlops:
    """FLOPs one training step spends. ``head_rows``: rows the head ran on with gradients
    (forward and backward), ``scored_rows``: rows it ran on without (the selection pass),
    ``reference_rows``: rows the reference model's head ran on."""

    body_forward: int
    body_backward: int
    head_forward: int
    head_backward: int
    scoring: int
    reference: int
    head_rows: int
    scored_rows: int
    reference_rows: int

    @property
    def total(self) -> int:
        return (self.body_forward + self.body_backward + self.head_forward + self.head_backward
                + self.scoring + self.reference)

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def step_flops(shape: ModelShape, batch: int, seq_len: int, head_rows: int,
               scored_rows: int = 0, reference: ModelShape | None = None,
               reference_rows: int = 0) -> StepFlops:
    """The FLOPs of a step over ``batch`` x ``seq_len`` positions whose head ran on
    ``head_rows`` rows with gradients and ``scored_rows`` without, plus a ``reference``
    model's forward (body over every position, head on ``reference_rows`` rows)."""
    body = body_forward_flops(shape, seq_len, batch)
    ref = 0
    if reference is not None:
        ref = body_forward_flops(reference, seq_len, batch) + reference_rows * head_row_flops(
            reference)
    row = head_row_flops(shape)
    return StepFlops(body_forward=body, body_backward=2 * body, head_forward=head_rows * row,
                     head_backward=2 * head_rows * row, scoring=scored_rows * row,
                     reference=ref, head_rows=int(head_rows), scored_rows=int(scored_rows),
                     reference_rows=int(reference_rows) if reference is not None else 0)
