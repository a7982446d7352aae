"""A linear probe (multinomial logistic regression) on frozen features, in torch."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LinearProbe:
    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def predict(self, feats: torch.Tensor) -> torch.Tensor:
        z = (feats.float() - self.mean) / self.std
        return (z @ self.weight + self.bias).argmax(-1)


def train_probe(feats: torch.Tensor, labels: torch.Tensor, *, l2: float = 1e-3,
                steps: int = 200) -> LinearProbe:
    """Fit on standardised features with full-batch L-BFGS (deterministic)."""
    x = feats.float()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    n_classes = int(labels.max()) + 1
    w = torch.zeros(z.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=steps, line_search_fn="strong_wolfe")
    y = labels.long()

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LinearProbe(w.detach(), b.detach(), mean, std)
