"""k-diffusion's samplers (PyPI k-diffusion 0.1.1.post1, installed with --no-deps) as the reference for ours.

`import k_diffusion.sampling` does not work as is: the package's __init__ imports every submodule (models, evaluation,
...), and k_diffusion.utils imports torchvision, which we do not install. Only sampling.py (and the few helpers of
utils.py it calls) are needed, so the package is registered as an empty module pointing at its directory, and the
modules its import needs but never calls are stubbed for the moment of the import only: a torchvision stub left in
sys.modules would break diffusers, which checks for torchvision by importing it.
"""

import importlib
import importlib.util
import os
import sys
import types

import pytest

# Imported by k_diffusion.sampling or .utils, but not used by any sampler: stubbed when they are not installed.
STUBBABLE = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional", "torchdiffeq")


class _Stub(types.ModuleType):
    """A module whose every attribute is another stub, so `from stub import name` works; using one fails loudly."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stub(f"{self.__name__}.{name}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self.__name__} is a stub made to import k_diffusion.sampling; it cannot be used")


def missing(what: str) -> None:
    """Skip the test for lack of a reference, except on CI (CI=true), where a missing reference is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is required on CI", pytrace=False)
    pytest.skip(f"{what} is not installed")


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def kdiffusion_sampling() -> types.ModuleType:
    """k_diffusion.sampling, imported without the package's __init__; skips (fails on CI) when not installed."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        missing("k-diffusion")
    for needed in ("scipy", "torchsde"):  # what the samplers themselves use
        if not _installed(needed):
            missing(f"{needed} (for k-diffusion)")
    if "k_diffusion" not in sys.modules:
        package = types.ModuleType("k_diffusion")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["k_diffusion"] = package
    stubs = [name for name in STUBBABLE if name not in sys.modules and not _installed(name)]
    for name in stubs:
        sys.modules[name] = _Stub(name)
        parent, _, child = name.rpartition(".")
        if parent in stubs:
            setattr(sys.modules[parent], child, sys.modules[name])
    try:
        return importlib.import_module("k_diffusion.sampling")
    finally:
        for name in stubs:
            sys.modules.pop(name, None)
