"""``nearest_upsample_2x`` equals ``F.interpolate(mode="nearest")`` forwards and backwards."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffkit.models.backbones.layers import nearest_upsample_2x


def test_values_and_gradients_equal_torch_nearest_interpolation():
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    ours = nearest_upsample_2x(x)
    theirs = F.interpolate(x, scale_factor=2, mode="nearest")
    assert torch.equal(ours, theirs)
    grad = torch.randn_like(ours)
    (g_ours,) = torch.autograd.grad(ours, x, grad)
    (g_theirs,) = torch.autograd.grad(theirs, x, grad)
    assert torch.allclose(g_ours, g_theirs, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(nearest_upsample_2x, (x,))
