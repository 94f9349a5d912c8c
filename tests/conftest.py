import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the fixture builders in tests/ import as plain modules
sys.path.insert(1, str(Path(__file__).parent.parent))  # and tools/ as a package, from the repository root

from checkpoints import TinyConfig, write_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_config() -> TinyConfig:
    return TinyConfig()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_config) -> Path:
    """A small random-weight SD 1.x checkpoint (latent factor 8) in the original single-file layout, fp32."""
    return write_checkpoint(tmp_path_factory.mktemp("checkpoints") / "tiny.safetensors", tiny_config)
