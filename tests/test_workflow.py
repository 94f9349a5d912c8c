"""Workflow validation: every kind of error is found before anything runs, all at once, naming node and input."""

import json
import os
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from engine_fixtures import CHECKPOINT_NAME, all_files, env, node, txt2img  # noqa: F401  (env is a fixture)
from nodegraph.executor import Executor
from nodegraph.nodes import builtin_registry
from nodegraph.workflow import InvalidWorkflow, WorkflowIssue, apply_overrides, read_workflow_file

WORKFLOWS = Path(__file__).parent.parent / "workflows"


@pytest.fixture
def valid_env(env):
    """Validation only lists file names: an empty placeholder stands in for the checkpoint and the input image."""
    (env.checkpoints_dir / CHECKPOINT_NAME).write_bytes(b"")
    Image.new("RGB", (8, 8)).save(env.input_dir / "example.png")
    return env


def issues_for(flow: dict, env) -> list[WorkflowIssue]:
    """The issues the executor refuses `flow` with; also checks that nothing was written."""
    with pytest.raises(InvalidWorkflow) as error:
        Executor(env).run(flow)
    assert all_files(env.output_dir) == [] and all_files(env.temp_dir) == []
    return error.value.issues


def only_issue(flow: dict, env, code: str, node_id: str | None, input_name: str | None, *words: str) -> WorkflowIssue:
    """The single issue of `flow`, checked to be `code` at `node_id`/`input_name`, with `words` in its message."""
    issues = issues_for(flow, env)
    assert len(issues) == 1, issues
    issue = issues[0]
    assert (issue.code, issue.node_id, issue.input) == (code, node_id, input_name)
    text = str(issue)
    for word in ([repr(node_id)] if node_id else []) + ([repr(input_name)] if input_name else []) + list(words):
        assert word in text, f"{word!r} not in {text!r}"
    return issue


def test_the_shipped_workflows_are_valid(valid_env):
    (valid_env.checkpoints_dir / "demo-shapes.safetensors").write_bytes(b"")
    executor = Executor(valid_env)
    for name in ("txt2img.json", "img2img.json"):
        valid = executor.validate(read_workflow_file(WORKFLOWS / name))
        assert valid.output_nodes == ["save"]
    comfy = executor.validate(read_workflow_file(WORKFLOWS / "comfyui_api_txt2img.json"))  # what ComfyUI's clients post
    assert (comfy.format, comfy.output_nodes) == ("api", ["9"])


def test_unknown_node_type(valid_env):
    flow = txt2img()
    flow["nodes"]["sample"]["type"] = "DDPMSampel"
    only_issue(flow, valid_env, "unknown_node_type", "sample", None, "unknown node type 'DDPMSampel'", "DDPMSample")


def test_unknown_input(valid_env):
    flow = txt2img()
    flow["nodes"]["sample"]["inputs"]["sed"] = 7
    only_issue(flow, valid_env, "unknown_input", "sample", "sed", "unknown input", "seed")


def test_missing_required_input(valid_env):
    flow = txt2img()
    del flow["nodes"]["decode"]["inputs"]["latent"]
    only_issue(flow, valid_env, "missing_input", "decode", "latent", "missing", "LATENT")


def test_missing_optional_input_takes_its_default(valid_env):
    flow = txt2img()
    del flow["nodes"]["sample"]["inputs"]["cfg"]
    assert Executor(valid_env).validate(flow).nodes["sample"].constants["cfg"] == 7.5


def test_link_to_unknown_node(valid_env):
    flow = txt2img()
    flow["nodes"]["decode"]["inputs"]["latent"] = ["sampler", "latent"]
    only_issue(flow, valid_env, "unknown_link_node", "decode", "latent", "'sampler'", "not in the workflow")


def test_link_to_unknown_output(valid_env):
    flow = txt2img()
    flow["nodes"]["decode"]["inputs"]["latent"] = ["sample", "image"]
    only_issue(flow, valid_env, "unknown_link_output", "decode", "latent", "no output 'image'", "latent")


def test_link_of_the_wrong_socket_type(valid_env):
    flow = txt2img()
    flow["nodes"]["decode"]["inputs"]["latent"] = ["pos", "conditioning"]
    only_issue(flow, valid_env, "socket_mismatch", "decode", "latent", "LATENT", "CONDITIONING")


def test_constant_where_a_link_is_expected(valid_env):
    flow = txt2img()
    flow["nodes"]["decode"]["inputs"]["latent"] = "sample"
    only_issue(flow, valid_env, "bad_link", "decode", "latent", "link", "LATENT")


def test_wrong_value_type(valid_env):
    flow = txt2img()
    flow["nodes"]["sample"]["inputs"]["steps"] = "20"
    only_issue(flow, valid_env, "wrong_type", "sample", "steps", "an integer", "'20'")


def test_fractional_number_for_an_integer_input(valid_env):
    flow = txt2img()
    flow["nodes"]["empty"]["inputs"]["batch_size"] = 1.5
    only_issue(flow, valid_env, "wrong_type", "empty", "batch_size", "an integer")


def test_link_where_a_constant_is_expected(valid_env):
    flow = txt2img()
    flow["nodes"]["sample"]["inputs"]["seed"] = ["empty", "latent"]
    only_issue(flow, valid_env, "wrong_type", "sample", "seed", "expected a constant", "an integer")


def test_value_out_of_bounds(valid_env):
    flow = txt2img()
    flow["nodes"]["sample"]["inputs"]["steps"] = 5000
    only_issue(flow, valid_env, "out_of_bounds", "sample", "steps", "<= 1000", "5000")


def test_size_not_a_multiple_of_8(valid_env):
    flow = txt2img()
    flow["nodes"]["empty"]["inputs"]["width"] = 60
    only_issue(flow, valid_env, "out_of_bounds", "empty", "width", "a multiple of 8", "60")


def test_denoise_of_zero_is_out_of_bounds(valid_env):
    flow = txt2img()
    flow["nodes"]["sample"]["inputs"]["denoise"] = 0.0
    only_issue(flow, valid_env, "out_of_bounds", "sample", "denoise", "> 0")


def test_denoise_too_small_for_the_step_count_runs_no_step(valid_env):
    flow = txt2img(steps=4)
    flow["nodes"]["sample"]["inputs"]["denoise"] = 0.2
    only_issue(flow, valid_env, "invalid_value", "sample", "denoise", "steps")


def test_checkpoint_not_among_the_files(valid_env):
    flow = txt2img(checkpoint="missing.safetensors")
    only_issue(flow, valid_env, "not_in_choices", "ckpt", "name", "'missing.safetensors'", repr(CHECKPOINT_NAME))


def test_fixed_choice_not_among_the_choices(valid_env):
    flow = txt2img()
    flow["nodes"]["scale"] = node("ImageScale", image=["decode", "image"], method="lanczos")
    only_issue(flow, valid_env, "not_in_choices", "scale", "method", "'lanczos'", "'bilinear'")


def test_pickled_checkpoints_are_not_offered(valid_env):
    (valid_env.checkpoints_dir / "old.ckpt").write_bytes(b"")
    only_issue(txt2img(checkpoint="old.ckpt"), valid_env, "not_in_choices", "ckpt", "name", "'old.ckpt'")


@pytest.mark.parametrize("name", ["../tiny.safetensors", "/etc/passwd", "a\0b.safetensors"])
def test_checkpoint_names_cannot_leave_the_checkpoints_folder(valid_env, name):
    only_issue(txt2img(checkpoint=name), valid_env, "not_in_choices", "ckpt", "name")


@pytest.mark.parametrize("prefix", ["../escape", "/tmp/escape", "a\\..\\b"])
def test_save_prefix_cannot_leave_the_output_folder(valid_env, prefix):
    only_issue(txt2img(prefix=prefix), valid_env, "invalid_value", "save", "prefix")


def test_save_prefix_cannot_follow_a_symlink_out_of_the_output_folder(valid_env, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", valid_env.output_dir / "link")
    only_issue(txt2img(prefix="link/x"), valid_env, "invalid_value", "save", "prefix", "outside")
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_cycle(valid_env):
    flow = txt2img()
    flow["nodes"]["grow"] = node("ImageScale", image=["shrink", "image"], width=64, height=64)
    flow["nodes"]["shrink"] = node("ImageScale", image=["grow", "image"], width=32, height=32)
    flow["nodes"]["preview"] = node("PreviewImage", images=["shrink", "image"])
    issue = only_issue(flow, valid_env, "cycle", "grow", "image", "cycle", "grow -> shrink -> grow")
    assert issue.node_type == "ImageScale"


def test_all_errors_are_reported_together_in_node_order(valid_env):
    flow = txt2img()
    flow["nodes"]["ckpt"]["inputs"]["name"] = "nope.safetensors"
    flow["nodes"]["empty"]["inputs"]["width"] = 7
    flow["nodes"]["sample"]["inputs"]["cfg"] = "high"
    flow["nodes"]["sample"]["inputs"]["steps"] = 0
    flow["nodes"]["save"]["inputs"]["images"] = ["decode", "latent"]
    issues = issues_for(flow, valid_env)
    assert [(i.node_id, i.input) for i in issues] == [
        ("ckpt", "name"), ("empty", "width"), ("sample", "steps"), ("sample", "cfg"), ("save", "images")]


def test_a_workflow_without_output_nodes_has_nothing_to_run(valid_env):
    flow = txt2img()
    del flow["nodes"]["save"]
    only_issue(flow, valid_env, "no_output", None, None, "SaveImage")


@pytest.mark.parametrize("change, where", [
    (lambda flow: flow.update(version=2), "version"),
    (lambda flow: flow.pop("nodes"), "nodes"),
    (lambda flow: flow["nodes"]["sample"].pop("type"), "nodes.sample.type"),
    (lambda flow: flow["nodes"]["sample"].update(inputs=[1, 2]), "nodes.sample.inputs"),
    (lambda flow: flow.update(extra=1), "extra"),
])
def test_file_format_errors_name_where_they_are(valid_env, change, where):
    flow = txt2img()
    change(flow)
    issues = issues_for(flow, valid_env)
    assert issues and all(issue.code == "bad_format" for issue in issues)
    assert any(where in str(issue) for issue in issues), issues


def test_issues_are_json_records():
    issue = WorkflowIssue("out_of_bounds", "out of bounds: expected <= 1000, got 5000", "sample", "DDPMSample", "steps")
    assert json.loads(json.dumps(issue.to_dict())) == {
        "code": "out_of_bounds", "message": "out of bounds: expected <= 1000, got 5000",
        "node_id": "sample", "node_type": "DDPMSample", "input": "steps"}
    assert str(issue) == "node 'sample' (DDPMSample), input 'steps': out of bounds: expected <= 1000, got 5000"


# --- reading files and --set overrides --------------------------------------------------------------------------


def test_reading_a_png_without_a_workflow_says_so(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(InvalidWorkflow, match="needs a 'workflow' chunk .* or a 'prompt' chunk .* it has neither"):
        read_workflow_file(tmp_path / "plain.png")


def test_reading_a_png_whose_chunks_hold_no_workflow_names_the_chunks(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", "{}")
    Image.new("RGB", (8, 8)).save(tmp_path / "comfy.png", pnginfo=info)
    with pytest.raises(InvalidWorkflow, match="its text chunks are 'prompt'"):
        read_workflow_file(tmp_path / "comfy.png")


def test_reading_a_png_whose_chunk_is_not_json_names_the_chunk(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("workflow", "{not json")
    Image.new("RGB", (8, 8)).save(tmp_path / "broken.png", pnginfo=info)
    with pytest.raises(InvalidWorkflow, match="broken.png: its 'workflow' chunk is not JSON"):
        read_workflow_file(tmp_path / "broken.png")


def test_reading_broken_json_names_the_file_and_line(tmp_path):
    (tmp_path / "broken.json").write_text('{"version": 1,\n "nodes": }')
    with pytest.raises(InvalidWorkflow, match="broken.json.*line 2"):
        read_workflow_file(tmp_path / "broken.json")


def test_overrides_parse_json_values_and_fall_back_to_text():
    flow = apply_overrides(txt2img(), ["sample.seed=7", "sample.cfg=4.5", "ckpt.name=other.safetensors",
                                       "decode.latent=[\"empty\", \"latent\"]"], builtin_registry())
    inputs = {node_id: entry["inputs"] for node_id, entry in flow["nodes"].items()}
    assert inputs["sample"]["seed"] == 7 and inputs["sample"]["cfg"] == 4.5
    assert inputs["ckpt"]["name"] == "other.safetensors"
    assert inputs["decode"]["latent"] == ["empty", "latent"]


def test_overrides_of_text_inputs_keep_the_text_as_given():
    flow = apply_overrides(txt2img(), ["pos.text=42", "neg.text=a=b"], builtin_registry())
    assert flow["nodes"]["pos"]["inputs"]["text"] == "42"
    assert flow["nodes"]["neg"]["inputs"]["text"] == "a=b"


def test_overrides_leave_the_original_untouched():
    original = txt2img()
    apply_overrides(original, ["sample.seed=7"], builtin_registry())
    assert original["nodes"]["sample"]["inputs"]["seed"] == 42


@pytest.mark.parametrize("assignment, words", [("nosuch.seed=1", ["'nosuch'"]), ("seed=1", ["NODE.INPUT=VALUE"]),
                                               ("sample.seed", ["NODE.INPUT=VALUE"])])
def test_bad_overrides_are_reported(assignment, words):
    with pytest.raises(InvalidWorkflow) as error:
        apply_overrides(txt2img(), [assignment], builtin_registry())
    assert error.value.issues[0].code == "bad_override"
    assert all(word in str(error.value) for word in words)
