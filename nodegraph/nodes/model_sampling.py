"""ComfyUI's ModelSamplingDiscrete: sample a model as another prediction type, optionally with zero terminal SNR.

The node changes how the sampler reads the UNet, not the UNet: it returns a view of the incoming model with a new
DiscreteSchedule (its betas, another prediction type and zsnr setting) and every other part shared. The cached model
stays as it was. Everything downstream that reads the model's schedule (KSampler, KSamplerAdvanced, SamplerCustom,
BasicScheduler, SDTurboScheduler) then uses the new one: its sigma table, its timesteps, its x0 estimate.
"""

import dataclasses
from typing import Literal

from pydantic import Field, field_validator

from nodegraph.nodes import Link, Node, NodeInputs, RunContext

# ComfyUI's choices, in its order (comfy_extras/nodes_model_advanced.py)
SAMPLING_CHOICES = ("eps", "v_prediction", "lcm", "x0", "img_to_img", "img_to_img_flow")
PREDICTION_OF = {"eps": "eps", "v_prediction": "v", "lcm": "lcm", "x0": "x0", "img_to_img": "img_to_img"}
# What needs a kind of model that nodegraph does not load, refused when the workflow is checked.
UNSUPPORTED = {
    "img_to_img_flow": "img_to_img_flow is for flow-matching image-to-image models (ComfyUI's IMG_TO_IMG_FLOW: "
                       "sampling starts from the image itself and ends inverted), which nodegraph does not load; "
                       "for Stable Diffusion models choose " + ", ".join(PREDICTION_OF),
}


def patch_model_sampling(model, sampling: str, zsnr: bool = False):
    """`model` with the schedule of ModelSamplingDiscrete's `sampling` choice (a new object; `model` unchanged)."""
    if sampling in UNSUPPORTED:
        raise ValueError(UNSUPPORTED[sampling])
    if sampling not in PREDICTION_OF:
        raise ValueError(f"unknown sampling {sampling!r}; expected one of {', '.join(SAMPLING_CHOICES)}")
    return dataclasses.replace(model, schedule=model.schedule.with_prediction(PREDICTION_OF[sampling], zsnr))


class ModelSamplingDiscrete(Node):
    CATEGORY = "model/patch"
    DESCRIPTION = ("Sample the model as another prediction type: eps (noise), v_prediction (e.g. SD 2.x 768-v "
                   "models, or v-prediction fine-tunes of SD 1.x and SDXL), lcm (latent consistency models, on "
                   "their 50 distilled timesteps), x0 or img_to_img; zsnr rescales the noise schedule to zero "
                   "terminal SNR (for models trained so, usually with v_prediction).")
    OUTPUTS = {"MODEL": "MODEL"}

    class Inputs(NodeInputs):
        model: Link["MODEL"] = Field(description="the model to sample differently")
        sampling: Literal[SAMPLING_CHOICES] = Field("eps", description="what the model predicts")
        zsnr: bool = Field(False, description="zero terminal SNR: the last timestep is (almost) pure noise")

        @field_validator("sampling")
        @classmethod
        def _is_supported(cls, sampling: str) -> str:
            if sampling in UNSUPPORTED:
                raise ValueError(UNSUPPORTED[sampling])
            return sampling

    def run(self, ctx: RunContext, model, sampling, zsnr):
        return {"MODEL": patch_model_sampling(model, sampling, zsnr)}


NODES = [ModelSamplingDiscrete]
