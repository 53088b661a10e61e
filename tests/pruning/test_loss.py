"""pruning.loss: the shared classification loss, with the auxiliary heads of GoogLeNet/Inception-v3."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import googlenet

from db.errors import LatlabError
from pruning.loss import ClassificationLoss, split_outputs


def test_auxiliary_heads_add_weighted_losses() -> None:
    torch.manual_seed(0)
    model = googlenet(num_classes=5, init_weights=False).train()
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    out = model(x)
    logits, aux = split_outputs(out)
    assert logits.shape == (2, 5) and len(aux) == 2
    ce = nn.CrossEntropyLoss(label_smoothing=0.1)
    expected = ce(logits, y) + 0.4 * (ce(aux[0], y) + ce(aux[1], y))
    assert torch.allclose(ClassificationLoss(0.1, aux_weight=0.4)(out, y), expected)
    assert torch.allclose(ClassificationLoss(0.1)(logits, y), ce(logits, y))  # a plain tensor: no auxiliary term
    with pytest.raises(LatlabError, match="returned dict"):
        split_outputs({"out": logits})
