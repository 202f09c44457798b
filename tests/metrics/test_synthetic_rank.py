"""The spectrum metrics see the known intrinsic rank of the synthetic low-rank images."""

from __future__ import annotations

from maskrank.data.synthetic import make_low_rank_images
from maskrank.metrics import energy_rank, numerical_rank, singular_values, spectrum_metrics


def test_numerical_rank_of_synthetic_images_is_the_intrinsic_rank():
    num_classes, class_rank = 4, 3
    images, labels, bases = make_low_rank_images(
        num_classes=num_classes, class_rank=class_rank, num_samples=600, image_size=16, in_chans=3
    )
    assert images.shape == (600, 3, 16, 16) and bases.shape == (4, 3, 768)
    intrinsic = num_classes * class_rank
    centred = (images.float() - 128.0).reshape(600, -1)  # (N, C*H*W); uint8 rounding is the noise
    sv = singular_values(centred, method="gram")  # one 600x600 eigvalsh (cheaper than the SVD)
    assert numerical_rank(sv=sv, tau=1e-2) == intrinsic
    assert energy_rank(sv=sv, q=0.99) <= intrinsic
    # One class alone spans its class_rank-dimensional subspace.
    one_class = centred[labels == 0]
    assert spectrum_metrics(one_class)["numerical_rank_1e-3"] >= class_rank
    assert numerical_rank(one_class, tau=1e-2) == class_rank
