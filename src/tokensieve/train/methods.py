"""Token selectors for training, registered by name (``"eslm:signal=entropy"``).

A method reads the :class:`~tokensieve.train.signals.TokenSignals` of a batch's labelled
tokens and returns a :class:`Selection`: which of them the loss learns from and, for
weighting methods, with what weight. Budgets use the engine's rounding rule
(:func:`~tokensieve.engine.budget.keep_count`) and ranking (:func:`select_top_k`: scores
quantised, ties kept by position), so the same batch gives the same selection whatever the
thread count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..engine.budget import check_keep, keep_count
from ..engine.select import ranked, select_top_k
from ..engine.spec import build_from_spec
from ..errors import UsageError
from .signals import TokenSignals


@dataclass
class Selection:
    """``keep`` (N,) bool over the batch's labelled tokens; ``weights`` (N,) float32 or
    ``None`` (plain mean); ``info``: what the method wants to report (e.g. quadrants)."""

    keep: torch.Tensor
    weights: torch.Tensor | None = None
    info: dict = field(default_factory=dict)


class TrainMethod:
    """Base class. ``needs``: the signals it reads ("loss", "entropy", "reference",
    "frequency"); ``keeps_all``: every labelled token is learned (``keep`` must be 1.0);
    ``drops_samples``: it drops whole samples, which a training step then skips (see
    :func:`~tokensieve.train.model.causal_lm_loss`)."""

    name = "base"
    needs: frozenset[str] = frozenset()
    keeps_all = False
    drops_samples = False

    def select(self, s: TokenSignals, keep: float) -> Selection:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    return select_top_k(scores.float(), k)


class AllTokens(TrainMethod):
    """Baseline: every labelled token (the ordinary causal-LM loss)."""

    name = "all"
    keeps_all = True

    def select(self, s, keep):
        return Selection(torch.ones(s.n, dtype=torch.bool, device=s.targets.device))


class RandomTokens(TrainMethod):
    """Baseline: ``keep_count(keep, N)`` labelled tokens drawn uniformly, seeded by
    ``seed`` (the same seed and batch give the same tokens on any device)."""

    name = "random"

    def select(self, s, keep):
        g = torch.Generator().manual_seed(int(s.seed))
        return Selection(_top(torch.rand(s.n, generator=g), keep_count(keep, s.n))
                         .to(s.targets.device))


class ESLM(TrainMethod):
    """ESLM, risk-averse selective language modelling (ESLM: "Risk-Averse Selective
    Language Modeling for Efficient Pretraining", 2025): per batch keep the tokens whose
    ``signal`` (the loss, or the predictive ``entropy``) is at or above the value-at-risk
    threshold for ``keep``, i.e. the ``keep_count(keep, N)`` highest of the batch's labelled
    tokens; the loss is their mean, a conditional value at risk (CVaR) of the token losses."""

    name = "eslm"

    def __init__(self, signal: str = "loss"):
        if signal not in ("loss", "entropy"):
            raise UsageError(f"eslm signal is 'loss' or 'entropy', got {signal!r}.")
        self.signal = signal
        self.needs = frozenset({signal})

    def select(self, s, keep):
        return Selection(_top(getattr(s, self.signal), keep_count(keep, s.n)))

    def __repr__(self) -> str:
        return f"ESLM(signal={self.signal!r})"


class ExcessLoss(TrainMethod):
    """Rho-1 style excess loss (Lin et al. 2024, "Not All Tokens Are What You Need",
    arXiv 2404.07965): keep the ``keep_count(keep, N)`` tokens whose loss exceeds
    a reference model's loss on the same token the most."""

    name = "excess"
    needs = frozenset({"loss", "reference"})

    def select(self, s, keep):
        return Selection(_top(s.loss - s.reference, keep_count(keep, s.n)))


class PowerLawDecay(TrainMethod):
    """Power-law decay loss (PDL; Shao et al. 2025, arXiv 2505.16900): every labelled token
    is learned, its cross-entropy weighted by ``(f + 1) ** -alpha`` where ``f`` is the
    corpus frequency of the target token (see
    :func:`~tokensieve.train.frequencies.token_frequencies`; the paper's smoothing
    constant is 1 here). The loss is the weighted mean ``sum(w * ce) / sum(w)`` (the paper
    sums; the mean keeps the loss on the cross-entropy scale, so learning rates carry over,
    and ``alpha=0`` is the ordinary loss)."""

    name = "pdl"
    needs = frozenset({"frequency"})
    keeps_all = True

    def __init__(self, alpha: float = 0.5):
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha >= 0:
            raise UsageError(f"pdl alpha is a number >= 0, got {alpha!r}.")
        self.alpha = float(alpha)

    def select(self, s, keep):
        w = (s.frequency.double() + 1.0).pow(-self.alpha).float()
        return Selection(torch.ones(s.n, dtype=torch.bool, device=s.targets.device), w)

    def __repr__(self) -> str:
        return f"PowerLawDecay(alpha={self.alpha})"


def _ascending_ranks(x: np.ndarray) -> np.ndarray:
    """0 = smallest; equal values (as quantised) rank by position."""
    r = np.empty(len(x), dtype=np.int64)
    r[ranked(-x)] = np.arange(len(x))
    return r


class QTuning(TrainMethod):
    """Q-Tuning (Wang et al. 2025, "Winning the Pruning Gamble: A Unified Approach to Joint
    Sample and Token Pruning for Efficient Supervised Fine-Tuning", arXiv 2509.23873; read
    from the paper's abstract and project page, gszfwsb.github.io/Q-tuning).

    Each sample is placed on the error-uncertainty plane: error = the mean loss of its
    labelled tokens (the log of its perplexity; only ranks matter), uncertainty = their mean
    predictive entropy. With ``c`` samples in each band, "high" is the top ``c`` of the batch
    and "low" the bottom ``c``: high error + low uncertainty is a *misconception*, low error
    + high uncertainty *calibration*, high + high *harmful noise*, low + low *redundant*. The
    thresholds (the batch quantiles, ``c``) widen up to the median split until the kept
    samples (misconception and calibration only) reach ``keep_count(samples, B)``; samples
    entering at the same ``c`` are taken farthest from the diagonal first, then in batch
    order. Fewer are kept when fewer lie off the diagonal; when none does (a batch of one,
    or error and uncertainty in the same order), no quadrant can be told apart and every
    sample is "unplaced": token-pruned like a misconception sample.
    Calibration samples are kept whole; inside each misconception sample the
    ``keep_count(keep, n)`` tokens with the highest loss are kept (``context`` > 0 mixes in
    the neighbours' loss: ``(1 - context) * l_i + context * (l_{i-1} + l_{i+1}) / 2``, the
    paper's context-aware token score). ``keep`` is therefore the token keep inside
    misconception samples, ``samples`` the sample keep.

    ``info["quadrant"]``: per sample, "misconception" / "calibration" (kept), "noise" /
    "redundant" (dropped, both above / below the median), "middle" (dropped, between the
    thresholds), "unplaced" (see above) or "empty" (no labelled token)."""

    name = "qtuning"
    needs = frozenset({"loss", "entropy"})
    drops_samples = True

    def __init__(self, samples: float = 0.5, context: float = 0.0):
        self.samples = check_keep(samples, "qtuning samples")
        if isinstance(context, bool) or not isinstance(context, int | float) \
                or not 0 <= context <= 1:
            raise UsageError(f"qtuning context is a weight in [0, 1], got {context!r}.")
        self.context = float(context)

    def _quadrants(self, err: np.ndarray, unc: np.ndarray):
        """(kept sample indices, their quadrant names) for the samples with tokens."""
        b = len(err)
        re, ru = _ascending_ranks(err), _ascending_ranks(unc)
        mis = np.maximum(b - re, ru + 1)        # band size at which it enters "misconception"
        cal = np.maximum(re + 1, b - ru)        # ... "calibration"
        level = np.minimum(mis, cal)
        far = np.abs(re - ru)
        order = np.lexsort((np.arange(b), -far, level))
        eligible = int((level <= b // 2).sum())
        if eligible == 0:  # every sample on the diagonal: no quadrant can be told apart
            return np.arange(b), {i: "unplaced" for i in range(b)}
        chosen = order[:min(keep_count(self.samples, b), eligible)]
        names = {int(i): "misconception" if mis[i] <= cal[i] else "calibration" for i in chosen}
        for i in range(b):
            if i not in names:
                hi_e, hi_u = re[i] >= b / 2, ru[i] >= b / 2
                names[i] = ("noise" if hi_e and hi_u else "redundant"
                            if not (hi_e or hi_u) else "middle")
        return chosen, names

    def select(self, s, keep):
        dev = s.targets.device
        bsz = s.n_samples
        count = torch.zeros(bsz, dtype=torch.float64, device=dev).index_add_(
            0, s.sample, torch.ones(s.n, dtype=torch.float64, device=dev))
        err = torch.zeros_like(count).index_add_(0, s.sample, s.loss.double())
        unc = torch.zeros_like(count).index_add_(0, s.sample, s.entropy.double())
        present = (count > 0).cpu().numpy()
        idx = np.flatnonzero(present)
        c = count.cpu().numpy()[idx]
        chosen, names = self._quadrants(err.cpu().numpy()[idx] / c, unc.cpu().numpy()[idx] / c)
        quadrant = ["empty"] * bsz
        for j, name in names.items():
            quadrant[int(idx[j])] = name
        mask = torch.zeros(s.n, dtype=torch.bool, device=dev)
        for j in chosen:
            b = int(idx[j])
            where = (s.sample == b).nonzero().squeeze(-1)
            if quadrant[b] == "calibration":  # kept whole
                mask[where] = True
                continue
            loss = s.loss[where].float()
            if self.context > 0 and loss.numel() > 1:
                prev = torch.cat([loss[:1], loss[:-1]])
                nxt = torch.cat([loss[1:], loss[-1:]])
                loss = (1 - self.context) * loss + self.context * (prev + nxt) / 2
            mask[where[_top(loss, keep_count(keep, where.numel()))]] = True
        return Selection(mask, info={"quadrant": quadrant})

    def __repr__(self) -> str:
        return f"QTuning(samples={self.samples}, context={self.context})"


METHODS: dict[str, type[TrainMethod]] = {
    cls.name: cls for cls in (AllTokens, RandomTokens, ESLM, ExcessLoss, PowerLawDecay, QTuning)
}
DEFAULT_METHOD = "eslm"


def get_method(method: str | TrainMethod) -> TrainMethod:
    """A method instance from a name with optional settings ("eslm:signal=entropy"), or
    the instance itself."""
    if isinstance(method, TrainMethod):
        return method
    return build_from_spec(method, METHODS, DEFAULT_METHOD, what="training method")


__all__ = ["DEFAULT_METHOD", "METHODS", "Selection", "TrainMethod", "get_method"]
