import pytest
import torch

from nodegraph.sd import load_checkpoint


@pytest.fixture(scope="session")
def sd(tiny_checkpoint):
    """Our models on the tiny random checkpoint, fp32 on the CPU (the precision parity is measured in)."""
    return load_checkpoint(tiny_checkpoint, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def conds(sd):
    """(positive, negative) conditioning of a prompt pair, for the sampler tests."""
    return sd.encode_prompt(["a red circle on a white background"]), sd.encode_prompt(["blurry"])
