"""How the parity tests compare results."""

import torch


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected||, in float64."""
    return float((actual.double() - expected.double()).norm() / expected.double().norm())
