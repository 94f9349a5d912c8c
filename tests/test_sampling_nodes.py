"""The KSampler family of nodes on a small random checkpoint: ComfyUI's inputs, one implementation, clear errors."""

import copy

import pytest
import torch

from engine_fixtures import CHECKPOINT_NAME, all_files, env, node, sd_env, workflow  # noqa: F401
from nodegraph.executor import Executor, Interrupted, NodeFailed
from nodegraph.nodes import Environment, Latent, builtin_registry
from nodegraph.sd.sampling import SAMPLER_NAMES, SCHEDULER_NAMES
from nodegraph.workflow import InvalidWorkflow

COMMON = dict(ckpt=node("LoadCheckpoint", name=CHECKPOINT_NAME),
              pos=node("CLIPEncode", clip=["ckpt", "clip"], text="a red circle"),
              neg=node("CLIPEncode", clip=["ckpt", "clip"], text=""),
              empty=node("EmptyLatent", width=64, height=64, batch_size=1))
CONDITIONING = dict(positive=["pos", "conditioning"], negative=["neg", "conditioning"])


def with_output(latent_link: list, **nodes) -> dict:
    """COMMON + the given sampling nodes, decoded from `latent_link` into a saved PNG."""
    return workflow(**copy.deepcopy(COMMON), **nodes,
                    decode=node("VAEDecode", vae=["ckpt", "vae"], latent=latent_link),
                    save=node("SaveImage", images=["decode", "image"], prefix="k"))


def ksampler_flow(**inputs) -> dict:
    settings = dict(seed=3, steps=3, cfg=6.0, sampler_name="euler", scheduler="normal", denoise=1.0) | inputs
    return with_output(["sample", "LATENT"], sample=node("KSampler", model=["ckpt", "model"], **CONDITIONING,
                                                          latent_image=["empty", "latent"], **settings))


def custom_flow(sampler_name="euler", scheduler="normal", steps=3, denoise=1.0, seed=3) -> dict:
    return with_output(
        ["sample", "output"],
        select=node("KSamplerSelect", sampler_name=sampler_name),
        sigmas=node("BasicScheduler", model=["ckpt", "model"], scheduler=scheduler, steps=steps, denoise=denoise),
        sample=node("SamplerCustom", model=["ckpt", "model"], add_noise=True, noise_seed=seed, cfg=6.0, **CONDITIONING,
                    sampler=["select", "SAMPLER"], sigmas=["sigmas", "SIGMAS"], latent_image=["empty", "latent"]))


def test_ksampler_inputs_follow_comfyui():
    specs = builtin_registry().get("KSampler").input_specs()
    assert specs["sampler_name"].choices == SAMPLER_NAMES and specs["scheduler"].choices == SCHEDULER_NAMES
    assert SAMPLER_NAMES[:3] == ("euler", "euler_ancestral", "heun") and SCHEDULER_NAMES[:2] == ("simple", "sgm_uniform")
    assert (specs["seed"].default, specs["seed"].maximum) == (0, 2**64 - 1)
    assert (specs["steps"].default, specs["steps"].minimum, specs["steps"].maximum) == (20, 1, 10000)
    assert (specs["cfg"].default, specs["cfg"].minimum, specs["cfg"].maximum) == (8.0, 0.0, 100.0)
    assert (specs["sampler_name"].default, specs["scheduler"].default, specs["denoise"].default) == ("euler", "normal", 1.0)
    advanced = builtin_registry().get("KSamplerAdvanced").input_specs()
    assert advanced["add_noise"].choices == ("enable", "disable")
    assert advanced["return_with_leftover_noise"].choices == ("disable", "enable")
    assert (advanced["start_at_step"].default, advanced["end_at_step"].default) == (0, 10000)
    karras = builtin_registry().get("KarrasScheduler").input_specs()
    assert (karras["sigma_max"].default, karras["sigma_min"].default, karras["rho"].default) == (14.614642, 0.0291675, 7.0)
    assert builtin_registry().get("SDTurboScheduler").input_specs()["steps"].maximum == 10


def test_ksampler_writes_a_picture_and_reports_each_step_with_a_preview(sd_env):
    events = []
    result = Executor(sd_env).run(ksampler_flow(steps=4, sampler_name="heun"), on_event=events.append)
    progress = [e for e in events if e.type == "progress" and e.node_id == "sample"]
    assert [(e.step, e.total) for e in progress] == [(i, 4) for i in range(1, 5)]
    assert all(e.preview is not None and e.preview.size == (8, 8) for e in progress)
    assert len(result.outputs["save"]["images"]) == 1 and len(all_files(sd_env.output_dir)) == 1


@pytest.mark.parametrize("sampler_name", SAMPLER_NAMES)
def test_every_sampler_runs_from_a_node_to_a_finite_latent(sd_env, sampler_name):
    from nodegraph.sd import load_checkpoint
    from nodegraph.nodes import RunContext
    from nodegraph.nodes.sampling import KSampler
    sd = load_checkpoint(sd_env.checkpoints_dir / CHECKPOINT_NAME, device="cpu", dtype=torch.float32)
    positive, negative = sd.encode_prompt(["a red circle"]), sd.encode_prompt([""])
    ctx = RunContext(env=sd_env, node_id="k", workflow={})
    latent = KSampler().run(ctx, model=sd, seed=1, steps=4, cfg=6.0, sampler_name=sampler_name, scheduler="karras",
                            positive=positive, negative=negative, latent_image=Latent(torch.zeros(1, 4, 8, 8)),
                            denoise=1.0)["LATENT"].samples
    assert latent.shape == (1, 4, 8, 8) and torch.isfinite(latent).all() and latent.abs().mean() > 0.01


def test_sampler_custom_with_a_basic_scheduler_is_ksampler(sd_env):
    from nodegraph.nodes import RunContext
    from nodegraph.nodes.sampling import KSampler, SamplerCustom
    from nodegraph.nodes.sigmas import BasicScheduler, KSamplerSelect
    from nodegraph.sd import load_checkpoint
    sd = load_checkpoint(sd_env.checkpoints_dir / CHECKPOINT_NAME, device="cpu", dtype=torch.float32)
    ctx = RunContext(env=sd_env, node_id="k", workflow={})
    conds = dict(positive=sd.encode_prompt(["a red circle"]), negative=sd.encode_prompt([""]))
    start = Latent(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)))
    for sampler_name, denoise in (("dpmpp_2m", 1.0), ("euler_ancestral", 0.6)):
        expected = KSampler().run(ctx, model=sd, seed=5, steps=5, cfg=6.0, sampler_name=sampler_name,
                                  scheduler="karras", latent_image=start, denoise=denoise, **conds)["LATENT"]
        sampler = KSamplerSelect().run(ctx, sampler_name=sampler_name)["SAMPLER"]
        sigmas = BasicScheduler().run(ctx, model=sd, scheduler="karras", steps=5, denoise=denoise)["SIGMAS"]
        outputs = SamplerCustom().run(ctx, model=sd, add_noise=True, noise_seed=5, cfg=6.0, sampler=sampler,
                                      sigmas=sigmas, latent_image=start, **conds)
        assert torch.equal(outputs["output"].samples, expected.samples)
        # stopped above sigma 0, the output keeps its noise; denoised_output is the last step's estimate of x0
        high = SamplerCustom().run(ctx, model=sd, add_noise=True, noise_seed=5, cfg=6.0, sampler=sampler,
                                   sigmas=sigmas[:3], latent_image=start, **conds)
        assert not torch.allclose(high["output"].samples, high["denoised_output"].samples, atol=1e-3)


def test_split_sigmas_share_the_split_step_and_the_halves_run_as_the_whole(sd_env):
    from nodegraph.nodes.sigmas import SplitSigmas
    sigmas = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.0])
    halves = SplitSigmas().run(None, sigmas=sigmas, step=2)
    assert halves["high_sigmas"].tolist() == [10.0, 5.0, 2.0] and halves["low_sigmas"].tolist() == [2.0, 1.0, 0.0]


def test_an_interrupt_inside_sampling_stops_the_run_and_writes_nothing(sd_env):
    executor = Executor(sd_env)

    def interrupt_at_first_step(event):
        if event.type == "progress":
            executor.interrupt()

    with pytest.raises(Interrupted):
        executor.run(ksampler_flow(steps=3, sampler_name="dpmpp_sde"), on_event=interrupt_at_first_step)
    assert all_files(sd_env.output_dir) == []
    assert executor.run(ksampler_flow(steps=3, sampler_name="dpmpp_sde")).outputs["save"]["images"]


# --- bad input -----------------------------------------------------------------------------------------------------


def refused(flow: dict, env: Environment):
    with pytest.raises(InvalidWorkflow) as error:
        Executor(env).run(flow)
    assert all_files(env.output_dir) == []
    return error.value.issues


def test_an_unknown_sampler_or_scheduler_is_refused_with_the_choices(sd_env):
    (issue,) = refused(ksampler_flow(sampler_name="euler_a"), sd_env)
    assert (issue.node_id, issue.input, issue.code) == ("sample", "sampler_name", "not_in_choices")
    assert "'dpmpp_2m'" in issue.message and "'uni_pc_bh2'" in issue.message and "'euler_a'" in issue.message
    (issue,) = refused(ksampler_flow(scheduler="karas"), sd_env)
    assert (issue.input, issue.code) == ("scheduler", "not_in_choices") and "'karras'" in issue.message
    (issue,) = refused(custom_flow(sampler_name="dpm++"), sd_env)
    assert (issue.node_id, issue.input) == ("select", "sampler_name")


def advanced_flow(start: int, end: int, steps: int = 20) -> dict:
    return with_output(["sample", "LATENT"], sample=node(
        "KSamplerAdvanced", model=["ckpt", "model"], add_noise="enable", noise_seed=1, steps=steps, cfg=6.0,
        sampler_name="euler", scheduler="normal", **CONDITIONING, latent_image=["empty", "latent"],
        start_at_step=start, end_at_step=end, return_with_leftover_noise="disable"))


def test_a_step_range_that_runs_no_step_is_refused(sd_env):
    (issue,) = refused(advanced_flow(12, 12), sd_env)
    assert (issue.node_id, issue.input) == ("sample", "end_at_step") and "start_at_step 12 >= end_at_step 12" in issue.message
    (issue,) = refused(advanced_flow(20, 10000), sd_env)
    assert "no step is left" in issue.message


def test_denoise_that_runs_no_step_is_refused(sd_env):
    (issue,) = refused(ksampler_flow(denoise=0.0), sd_env)
    assert (issue.input, issue.code) == ("denoise", "invalid_value") and "runs no step" in issue.message


def test_sigmas_of_the_wrong_kind_fail_the_sampler_clearly_and_nothing_is_written(sd_env):
    with pytest.raises(NodeFailed) as failure:
        Executor(sd_env).run(custom_flow(denoise=0.0))  # BasicScheduler gives ComfyUI's empty list
    assert failure.value.node_id == "sample" and "sigmas is empty" in failure.value.message
    flow = custom_flow()
    flow["nodes"]["split"] = node("SplitSigmas", sigmas=["sigmas", "SIGMAS"], step=99)
    flow["nodes"]["sample"]["inputs"]["sigmas"] = ["split", "low_sigmas"]
    with pytest.raises(NodeFailed, match="sigmas is empty"):
        Executor(sd_env).run(flow)
    assert all_files(sd_env.output_dir) == []


def test_a_sigmas_link_to_a_latent_is_a_socket_mismatch(sd_env):
    flow = custom_flow()
    flow["nodes"]["sample"]["inputs"]["sigmas"] = ["empty", "latent"]
    (issue,) = refused(flow, sd_env)
    assert (issue.node_id, issue.input, issue.code) == ("sample", "sigmas", "socket_mismatch")
