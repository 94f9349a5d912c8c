"""ComfyUI's ModelSamplingDiscrete node on the tiny random checkpoint: declared as ComfyUI declares it, a new model
view with the chosen schedule (the loaded model untouched), read by every sampler and scheduler node downstream.

The KSampler check is against an Euler loop written out here for a v-prediction model: the sigma table from SD's
betas, the UNet at each sigma's timestep on x / sqrt(sigma^2 + 1), x0 = x / (sigma^2 + 1) - v * sigma /
sqrt(sigma^2 + 1), CFG 6 on the estimates.
"""

import dataclasses

import pytest
import torch
from PIL import Image

from engine_fixtures import CHECKPOINT_NAME, env, sd_env  # noqa: F401
from nodegraph.executor import Executor
from nodegraph.nodes import Latent, RunContext, builtin_registry
from nodegraph.nodes.model_sampling import SAMPLING_CHOICES, ModelSamplingDiscrete, patch_model_sampling
from nodegraph.nodes.sampling import KSampler, SamplerCustom
from nodegraph.nodes.sigmas import BasicScheduler, KSamplerSelect
from nodegraph.sd import load_checkpoint
from nodegraph.sd.sampling import DiscreteSchedule, initial_noise
from nodegraph.server.comfy_shapes import object_info
from nodegraph.workflow import InvalidWorkflow

SEED, STEPS, CFG = 3, 3, 6.0


@pytest.fixture(scope="module")
def sd(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def conds(sd):
    return sd.encode_prompt(["a red circle"]), sd.encode_prompt([""])


def context(env) -> RunContext:
    return RunContext(env=env, node_id="n", workflow={})


def ksampler(env, model, conds, scheduler="simple", sampler_name="euler") -> torch.Tensor:
    return KSampler().run(context(env), model=model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name=sampler_name,
                          scheduler=scheduler, positive=conds[0], negative=conds[1],
                          latent_image=Latent(torch.zeros(1, 4, 8, 8)), denoise=1.0)["LATENT"].samples


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


# --- the declaration ------------------------------------------------------------------------------------------


def test_declared_with_comfyuis_name_inputs_choices_and_defaults(env):
    node = builtin_registry().get_comfy("ModelSamplingDiscrete")
    assert node is ModelSamplingDiscrete and node.TYPE == "ModelSamplingDiscrete" and not node.NATIVE
    assert (node.CATEGORY, node.DISPLAY_NAME, node.OUTPUTS) == ("model/patch", "ModelSamplingDiscrete",
                                                               {"MODEL": "MODEL"})
    specs = node.input_specs()
    assert list(specs) == ["model", "sampling", "zsnr"]
    assert (specs["model"].kind, specs["model"].type) == ("link", "MODEL")
    assert specs["sampling"].choices == ("eps", "v_prediction", "lcm", "x0", "img_to_img", "img_to_img_flow")
    assert (specs["sampling"].default, specs["zsnr"].type, specs["zsnr"].default) == ("eps", "BOOLEAN", False)
    listed = object_info(builtin_registry(), env)["ModelSamplingDiscrete"]
    assert list(listed["input"]["required"]) == ["model", "sampling", "zsnr"]
    assert listed["input"]["required"]["sampling"][0] == list(SAMPLING_CHOICES)
    assert listed["output"] == ["MODEL"]


# --- what it returns --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampling, prediction, original_steps", [
    ("eps", "eps", None), ("v_prediction", "v", None), ("lcm", "lcm", 50), ("x0", "x0", None),
    ("img_to_img", "img_to_img", None)])
@pytest.mark.parametrize("zsnr", [False, True])
def test_returns_a_new_model_with_that_schedule_and_leaves_the_input_as_loaded(sd_env, sd, sampling, prediction,
                                                                                original_steps, zsnr):
    patched = ModelSamplingDiscrete().run(context(sd_env), model=sd, sampling=sampling, zsnr=zsnr)["MODEL"]
    assert patched is not sd and sd.schedule == DiscreteSchedule()
    assert (patched.schedule.prediction, patched.schedule.zsnr, patched.schedule.original_steps) == (
        prediction, zsnr, original_steps)
    assert (patched.schedule.beta_start, patched.schedule.beta_end) == (sd.schedule.beta_start, sd.schedule.beta_end)
    assert patched.unet is sd.unet and patched.text_encoder is sd.text_encoder and patched.vae is sd.vae
    top = float(patched.schedule.sigma_max)
    assert 4518 < top < 4519 if zsnr else abs(top - 14.6146) < 1e-3


def test_a_patched_model_can_be_patched_again(sd):
    lcm = patch_model_sampling(sd, "lcm", zsnr=True)
    back = patch_model_sampling(lcm, "eps")
    assert back.schedule == sd.schedule and torch.equal(back.schedule.sigmas, sd.schedule.sigmas)


def test_img_to_img_flow_is_refused_when_the_workflow_is_checked(sd_env, sd):
    flow = {"version": 1, "nodes": {
        "ckpt": {"type": "LoadCheckpoint", "inputs": {"name": CHECKPOINT_NAME}},
        "ms": {"type": "ModelSamplingDiscrete", "inputs": {"model": ["ckpt", "model"], "sampling": "img_to_img_flow",
                                                           "zsnr": False}}}}
    with pytest.raises(InvalidWorkflow, match="img_to_img_flow is for flow-matching image-to-image models"):
        Executor(sd_env).validate(flow)
    with pytest.raises(ValueError, match="nodegraph does not load"):
        patch_model_sampling(sd, "img_to_img_flow")


# --- downstream nodes read the new schedule ---------------------------------------------------------------------


def hand_written_v_euler(sd, conds) -> torch.Tensor:
    """KSampler (euler, simple, 3 steps) for a v-prediction model, written out; raw VAE space."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1 - betas, 0)
    table = ((1 - alpha_bar) / alpha_bar).sqrt().float()
    timesteps = [999, 666, 333]  # "simple": every 1000/3-th entry from the top
    sigmas = torch.cat([table[timesteps], torch.zeros(1)])
    context = torch.cat(conds)
    x = initial_noise((1, 4, 8, 8), SEED) * (1 + sigmas[0] ** 2).sqrt()
    with torch.no_grad():
        for sigma, sigma_next, t in zip(sigmas[:-1], sigmas[1:], timesteps):
            model_input = x / (sigma**2 + 1).sqrt()
            v_cond, v_uncond = sd.unet(torch.cat([model_input] * 2), torch.tensor([float(t)] * 2), context).chunk(2)
            estimate_cond, estimate_uncond = (x / (sigma**2 + 1) - v * sigma / (sigma**2 + 1).sqrt()
                                              for v in (v_cond, v_uncond))
            denoised = estimate_uncond + CFG * (estimate_cond - estimate_uncond)
            x = x + (sigma_next - sigma) * (x - denoised) / sigma
    return x / sd.latent_scale


def test_ksampler_samples_a_v_prediction_model_as_a_hand_written_v_euler_loop(sd_env, sd, conds):
    patched = ModelSamplingDiscrete().run(context(sd_env), model=sd, sampling="v_prediction", zsnr=False)["MODEL"]
    ours = ksampler(sd_env, patched, conds)
    assert relative_error(ours, hand_written_v_euler(sd, conds)) <= 1e-5
    assert relative_error(ksampler(sd_env, sd, conds), ours) > 0.5, "the eps reading is another picture"


@pytest.mark.parametrize("sampling, zsnr", [("v_prediction", True), ("lcm", False)])
def test_basic_scheduler_and_sampler_custom_use_the_new_schedule(sd_env, sd, conds, sampling, zsnr):
    ctx = context(sd_env)
    patched = ModelSamplingDiscrete().run(ctx, model=sd, sampling=sampling, zsnr=zsnr)["MODEL"]
    sigmas = BasicScheduler().run(ctx, model=patched, scheduler="normal", steps=STEPS, denoise=1.0)["SIGMAS"]
    plain = BasicScheduler().run(ctx, model=sd, scheduler="normal", steps=STEPS, denoise=1.0)["SIGMAS"]
    if zsnr:
        assert 4518 < float(sigmas[0]) < 4519 and float(plain[0]) < 15
    else:  # lcm's normal schedule ends at its lowest distilled timestep, 19
        assert float(patched.schedule.timestep(sigmas[-2:-1])) == 19.0 and float(sd.schedule.timestep(plain[-2:-1])) == 0.0
    custom = SamplerCustom().run(ctx, model=patched, add_noise=True, noise_seed=SEED, cfg=CFG, positive=conds[0],
                                 negative=conds[1], sampler=KSamplerSelect().run(ctx, sampler_name="euler")["SAMPLER"],
                                 sigmas=sigmas, latent_image=Latent(torch.zeros(1, 4, 8, 8)))["output"].samples
    assert torch.equal(custom, ksampler(sd_env, patched, conds, scheduler="normal"))
    assert not torch.equal(custom, ksampler(sd_env, sd, conds, scheduler="normal"))


def api_prompt(sampling: str | None = None, zsnr: bool = False, seed: int = SEED) -> dict:
    """ComfyUI's default txt2img prompt, small, with a ModelSamplingDiscrete between the loader and KSampler."""
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT_NAME}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": STEPS, "cfg": CFG, "sampler_name": "euler", "scheduler": "normal", "denoise": 1,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ms", "images": ["8", 0]}},
    }
    if sampling is not None:
        prompt["10"] = {"class_type": "ModelSamplingDiscrete",
                        "inputs": {"model": ["4", 0], "sampling": sampling, "zsnr": zsnr}}
        prompt["3"]["inputs"]["model"] = ["10", 0]
    return prompt


def test_in_a_comfyui_prompt_eps_changes_nothing_and_the_loaded_model_stays_eps(sd_env):
    def picture(executor: Executor, prompt: dict) -> bytes:
        image = executor.run(prompt).outputs["9"]["images"][0]
        with Image.open(sd_env.output_dir / image["subfolder"] / image["filename"]) as saved:
            return saved.tobytes()

    fresh = picture(Executor(sd_env), api_prompt(seed=SEED + 1))
    executor = Executor(sd_env)  # one executor: the loaded checkpoint is cached across its runs
    plain = picture(executor, api_prompt())
    assert picture(executor, api_prompt("eps")) == plain
    assert picture(executor, api_prompt("v_prediction", zsnr=True)) != plain
    # a new seed samples again with the cached checkpoint: it is still the eps model it was loaded as
    assert picture(executor, api_prompt(seed=SEED + 1)) == fresh
