"""Inpainting as ComfyUI does it: with a noise mask on the latent, every sampler repaints the masked part and keeps
the rest of the latent. Both ways to get a mask onto a latent feed it: SetLatentNoiseMask and VAEEncodeForInpaint."""

import pytest
import safetensors
import torch
from PIL import Image

from engine_fixtures import CHECKPOINT_NAME, env, node, sd_env, workflow  # noqa: F401
from nodegraph.executor import Executor
from nodegraph.nodes import Latent, RunContext
from nodegraph.nodes.latent import SetLatentNoiseMask
from nodegraph.nodes.sampling import KSampler
from nodegraph.nodes.vae import VAEEncode, VAEEncodeForInpaint
from nodegraph.sd import load_checkpoint
from nodegraph.sd.sampling import SAMPLER_NAMES, initial_noise

SEED = 7
SIZE = 64  # pixels: 8 x 8 latent cells, the left 4 columns masked
# uni_pc ends its last step at sigma 0.001 instead of 0, as ComfyUI's does (its lambda is infinite at 0): the kept
# part is the input latent plus what is left of the starting noise at that sigma.
ENDS_SHORT_OF_ZERO = {"uni_pc", "uni_pc_bh2"}
UNI_PC_LAST_SIGMA = 0.001


@pytest.fixture(scope="module")
def sd(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def prompts(sd):
    return sd.encode_prompt(["a red circle"]), sd.encode_prompt([""])


def picture() -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, SIZE), torch.linspace(0, 1, SIZE), indexing="ij")
    return torch.stack([xx, yy, 1 - xx * yy]).unsqueeze(0)


def left_half_mask() -> torch.Tensor:
    mask = torch.zeros(1, SIZE, SIZE)
    mask[..., : SIZE // 2] = 1.0
    return mask


def masked_latent(sd, source: str) -> Latent:
    if source == "SetLatentNoiseMask":
        encoded = VAEEncode().run(None, vae=sd, image=picture())["latent"]
        return SetLatentNoiseMask().run(None, samples=encoded, mask=left_half_mask())["LATENT"]
    # VAEEncodeForInpaint greys the left half and grows the mask by 6 pixels, which stays inside latent column 3
    return VAEEncodeForInpaint().run(None, pixels=picture(), vae=sd, mask=left_half_mask(), grow_mask_by=6)["LATENT"]


def sample(sd, prompts, latent: Latent, sampler_name: str, env) -> Latent:
    positive, negative = prompts
    ctx = RunContext(env=env, node_id="k", workflow={})
    return KSampler().run(ctx, model=sd, seed=SEED, steps=3, cfg=6.0, sampler_name=sampler_name, scheduler="karras",
                          positive=positive, negative=negative, latent_image=latent, denoise=1.0)["LATENT"]


@pytest.mark.parametrize("source", ["SetLatentNoiseMask", "VAEEncodeForInpaint"])
@pytest.mark.parametrize("sampler_name", SAMPLER_NAMES)
def test_every_sampler_keeps_the_unmasked_half_and_repaints_the_masked_one(sd, prompts, env, sampler_name, source):
    start = masked_latent(sd, source)
    result = sample(sd, prompts, start, sampler_name, env)
    kept, given = result.samples[..., 4:], start.samples[..., 4:]
    if sampler_name in ENDS_SHORT_OF_ZERO:
        leftover = UNI_PC_LAST_SIGMA * initial_noise(start.samples.shape, SEED, None)[..., 4:] / sd.latent_scale
        ratio = (kept - given) / leftover
        assert ratio.min() > 0.95 and ratio.max() < 1.0
    else:
        assert torch.allclose(kept, given, rtol=1e-5, atol=1e-4), (kept - given).abs().max()
    assert (result.samples[..., :4] - start.samples[..., :4]).abs().mean() > 0.1
    assert result.noise_mask is start.noise_mask  # the latent keeps its mask, as ComfyUI's does


def test_without_a_mask_the_same_sampler_changes_the_whole_latent(sd, prompts, env):
    start = VAEEncode().run(None, vae=sd, image=picture())["latent"]
    result = sample(sd, prompts, start, "euler", env)
    assert (result.samples[..., 4:] - start.samples[..., 4:]).abs().mean() > 0.1


def test_inpainting_runs_as_a_workflow_of_comfyuis_nodes(sd_env):
    Image.fromarray((picture()[0].permute(1, 2, 0) * 255).round().byte().numpy()).save(sd_env.input_dir / "photo.png")
    mask = Image.new("RGB", (SIZE, SIZE), (0, 0, 0))
    mask.paste((255, 255, 255), (0, 0, SIZE // 2, SIZE))
    mask.save(sd_env.input_dir / "mask.png")
    flow = workflow(
        ckpt=node("CheckpointLoaderSimple", ckpt_name=CHECKPOINT_NAME),
        pos=node("CLIPTextEncode", text="a red circle", clip=["ckpt", "CLIP"]),
        neg=node("CLIPTextEncode", text="", clip=["ckpt", "CLIP"]),
        image=node("ComfyUI.LoadImage", image="photo.png"),
        mask=node("LoadImageMask", image="mask.png", channel="red"),
        encode=node("VAEEncodeForInpaint", pixels=["image", "IMAGE"], vae=["ckpt", "VAE"], mask=["mask", "MASK"],
                    grow_mask_by=6),
        sample=node("KSampler", model=["ckpt", "MODEL"], seed=SEED, steps=3, cfg=6.0, sampler_name="dpmpp_2m",
                    scheduler="karras", positive=["pos", "CONDITIONING"], negative=["neg", "CONDITIONING"],
                    latent_image=["encode", "LATENT"], denoise=1.0),
        before=node("SaveLatent", samples=["encode", "LATENT"], filename_prefix="before"),
        after=node("SaveLatent", samples=["sample", "LATENT"], filename_prefix="after"),
    )
    Executor(sd_env).run(flow)

    def saved(name):
        with safetensors.safe_open(sd_env.output_dir / f"{name}_00001_.latent", "pt") as file:
            return file.get_tensor("latent_tensor")

    before, after = saved("before"), saved("after")
    assert torch.allclose(after[..., 4:], before[..., 4:], rtol=1e-5, atol=1e-4)
    assert (after[..., :4] - before[..., :4]).abs().mean() > 0.1
