"""Region masks: the neighbourhood of light sources."""

from __future__ import annotations

import pytest
import torch

from udcguard.attacks.regions import lights_mask, region_mask


def test_lights_mask_covers_the_light_and_its_neighbourhood() -> None:
    x = torch.full((2, 3, 20, 20), 0.3)
    x[0, :, 5, 7] = 1.0  # one saturated light in image 0, none in image 1
    m = lights_mask(x, threshold=0.9, dilate_px=2)
    assert m.shape == (2, 1, 20, 20) and set(m.unique().tolist()) <= {0.0, 1.0}
    assert m[0, 0, 3:8, 5:10].eq(1).all() and m[0].sum() == 25  # a 5 x 5 square
    assert m[1].sum() == 0
    assert torch.equal(lights_mask(x, threshold=0.9, dilate_px=0)[0, 0].nonzero(), torch.tensor([[5, 7]]))


def test_luma_weights_decide() -> None:
    x = torch.zeros(1, 3, 4, 4)
    x[0, 1, 0, 0] = 1.0  # pure green: luma 0.7152
    x[0, 2, 1, 1] = 1.0  # pure blue: luma 0.0722
    assert lights_mask(x, threshold=0.7, dilate_px=0)[0, 0].nonzero().tolist() == [[0, 0]]


def test_region_names() -> None:
    x = torch.rand(1, 3, 8, 8)
    assert region_mask(x, "full") is None
    with pytest.raises(ValueError, match="unknown region 'sky'; valid: full, lights"):
        region_mask(x, "sky")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        lights_mask(torch.rand(1, 1, 8, 8))
