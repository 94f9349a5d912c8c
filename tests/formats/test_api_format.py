"""ComfyUI's API format: converted to our native workflow, validated with the file's node ids, every problem at once."""

import copy

import pytest
from pydantic import Field

from engine_fixtures import env  # noqa: F401  (a fixture)
from formats_builders import default_prompt
from formats_standins import standin_registry
from nodegraph.executor import Executor
from nodegraph.formats import detect_format, to_native
from nodegraph.nodes import Link, Node, NodeInputs, NodeRegistry
from nodegraph.workflow import InvalidWorkflow


def issues_of(prompt: dict, env) -> list:
    with pytest.raises(InvalidWorkflow) as error:
        Executor(env, standin_registry()).validate(prompt)
    return error.value.issues


def where(issues) -> list[tuple]:
    return [(issue.code, issue.node_id, issue.node_type, issue.input) for issue in issues]


# --- conversion --------------------------------------------------------------------------------------------------


def test_links_by_output_index_become_links_by_output_name():
    native = to_native(default_prompt(), standin_registry()).native
    assert native["nodes"]["8"] == {"type": "VAEDecode", "inputs": {"samples": ["3", "LATENT"], "vae": ["4", "VAE"]}}
    assert native["nodes"]["6"]["inputs"]["clip"] == ["4", "CLIP"]


def test_validate_keeps_the_prompt_as_given_and_says_its_format(env):
    prompt = default_prompt()
    valid = Executor(env, standin_registry()).validate(prompt)
    assert valid.source is prompt and valid.format == "api"
    assert valid.prompt == default_prompt()
    assert valid.nodes["3"].constants["cfg"] == 8.0 and valid.output_nodes == ["9"]


def test_class_types_are_looked_up_in_comfyuis_namespace():
    class VAEDecode(Node):  # ours: another input name, so not ComfyUI's VAEDecode
        COMFY_TYPE = None
        OUTPUTS = {"image": "IMAGE"}

        class Inputs(NodeInputs):
            latent: Link["LATENT"]

        def run(self, ctx, latent):
            return {"image": None}

    class ComfyVAEDecode(Node):
        TYPE, COMFY_TYPE = "ComfyUI.VAEDecode", "VAEDecode"
        OUTPUTS = {"IMAGE": "IMAGE"}

        class Inputs(NodeInputs):
            samples: Link["LATENT"]

        def run(self, ctx, samples):
            return {"IMAGE": None}

    class Latent(Node):
        OUTPUTS = {"LATENT": "LATENT"}

        def run(self, ctx):
            return {"LATENT": None}

    registry = NodeRegistry([VAEDecode, ComfyVAEDecode, Latent])
    prompt = {"1": {"class_type": "Latent", "inputs": {}}, "2": {"class_type": "VAEDecode",
                                                               "inputs": {"samples": ["1", 0]}}}
    assert to_native(prompt, registry).native["nodes"]["2"] == {"type": "ComfyUI.VAEDecode",
                                                                "inputs": {"samples": ["1", "LATENT"]}}


def test_literal_lists_are_unwrapped_and_never_taken_for_links(env):
    prompt = default_prompt()
    prompt["9"]["inputs"]["filename_prefix"] = {"__value__": "wrapped"}
    assert to_native(prompt, standin_registry()).native["nodes"]["9"]["inputs"]["filename_prefix"] == "wrapped"
    prompt["8"]["inputs"]["vae"] = {"__value__": ["4", 2]}
    prompt["6"]["inputs"]["text"] = {"__value__": ["a", "b"]}
    issues = issues_of(prompt, env)
    assert sorted(where(issues)) == [("bad_link", "8", "VAEDecode", "vae"),
                                     ("wrong_type", "6", "CLIPTextEncode", "text")]
    assert "['a', 'b']" in str(InvalidWorkflow(issues))
    assert "expected a link [node_id, output_index] to a VAE output" in str(InvalidWorkflow(issues))


@pytest.mark.parametrize("name, given, converted", [
    ("cfg", 7, 7.0), ("cfg", "7.5", 7.5), ("denoise", "1", 1.0), ("steps", "12", 12), ("steps", 12.0, 12),
])
def test_comfyuis_lossless_conversions_are_accepted(env, name, given, converted):
    prompt = default_prompt()
    prompt["3"]["inputs"][name] = given
    valid = Executor(env, standin_registry()).validate(prompt)
    value = valid.nodes["3"].constants[name]
    assert value == converted and type(value) is type(converted)


@pytest.mark.parametrize("name, given", [("steps", 12.5), ("steps", "12.0"), ("steps", "many"), ("cfg", "nan"),
                                         ("steps", True), ("seed", "1e3")])
def test_lossy_or_unreadable_values_are_refused(env, name, given):
    prompt = default_prompt()
    prompt["3"]["inputs"][name] = given
    assert where(issues_of(prompt, env)) == [("wrong_type", "3", "KSampler", name)]


def test_inputs_a_node_does_not_declare_are_ignored_as_comfyui_ignores_them(env):
    prompt = default_prompt()
    prompt["3"]["inputs"]["control_after_generate"] = "randomize"
    prompt["9"]["inputs"]["upload"] = "image"
    prompt["9"]["is_changed"] = ["abc"]
    valid = Executor(env, standin_registry()).validate(prompt)
    assert "control_after_generate" not in valid.nodes["3"].constants


def test_python_callers_may_key_nodes_and_link_by_int():
    prompt = {int(node_id): entry for node_id, entry in default_prompt().items()}
    prompt[8]["inputs"]["samples"] = [3, 0]
    native = to_native(prompt, standin_registry())
    assert native.issues == [] and native.native["nodes"]["8"]["inputs"]["samples"] == ["3", "LATENT"]


# --- bad input: every problem at once, node ids and class types as in the file ------------------------------------


def test_unknown_class_type_is_named_with_close_matches_and_its_consumers_stay_quiet(env):
    prompt = default_prompt()
    prompt["5"]["class_type"] = "EmptyLatentImag"
    issues = issues_of(prompt, env)
    assert where(issues) == [("unknown_node_type", "5", "EmptyLatentImag", None)]
    assert "'EmptyLatentImag'" in str(issues[0]) and "did you mean 'EmptyLatentImage'" in str(issues[0])


def test_link_to_a_node_that_is_not_in_the_prompt(env):
    prompt = default_prompt()
    prompt["8"]["inputs"]["vae"] = ["40", 2]
    issues = issues_of(prompt, env)
    assert where(issues) == [("unknown_link_node", "8", "VAEDecode", "vae")]
    assert "node '40'" in str(issues[0])


def test_output_index_out_of_range_lists_the_outputs_there_are(env):
    prompt = default_prompt()
    prompt["8"]["inputs"]["vae"] = ["4", 3]
    issues = issues_of(prompt, env)
    assert where(issues) == [("unknown_link_output", "8", "VAEDecode", "vae")]
    assert "node '4' (CheckpointLoaderSimple) has no output 3; its outputs: 0 MODEL, 1 CLIP, 2 VAE" in str(issues[0])


def test_link_to_an_output_of_another_type(env):
    prompt = default_prompt()
    prompt["8"]["inputs"]["vae"] = ["4", 1]
    issues = issues_of(prompt, env)
    assert where(issues) == [("socket_mismatch", "8", "VAEDecode", "vae")]
    assert "expected a link to a VAE output, but output 1 of node '4' (CheckpointLoaderSimple) is CLIP" \
        in str(issues[0])


@pytest.mark.parametrize("entry, words", [
    ("KSampler", "expected {\"class_type\""),
    ({"inputs": {}}, "has no class_type"),
    ({"class_type": 3, "inputs": {}}, "class_type must be a string"),
    ({"class_type": "KSampler", "inputs": [1, 2]}, "inputs must be an object"),
])
def test_malformed_entries_are_named(env, entry, words):
    prompt = default_prompt()
    prompt["10"] = entry
    issues = issues_of(prompt, env)
    assert [(issue.code, issue.node_id) for issue in issues] == [("bad_format", "10")]
    assert words in str(issues[0])


@pytest.mark.parametrize("link", [["4"], ["4", 0, 1], ["4", "0"], [None, 0], ["4", True]])
def test_malformed_links_are_named(env, link):
    prompt = default_prompt()
    prompt["8"]["inputs"]["vae"] = link
    issues = issues_of(prompt, env)
    assert where(issues) == [("bad_link", "8", "VAEDecode", "vae")]
    assert "[node_id, output_index]" in str(issues[0])


def test_every_problem_is_reported_together_with_the_files_ids_and_class_types(env):
    prompt = default_prompt()
    prompt["3"]["inputs"].update(steps=0, sampler_name="euler_x", cfg="high")  # bounds, choices, type
    del prompt["3"]["inputs"]["positive"]  # missing
    prompt["5"]["class_type"] = "NoSuchNode"  # unknown; KSampler's latent_image link to it stays quiet
    prompt["8"]["inputs"]["vae"] = ["4", 7]  # output index
    prompt["9"]["inputs"]["images"] = ["99", 0]  # missing node
    prompt["10"] = {"inputs": {}}  # malformed
    assert sorted(where(issues_of(prompt, env))) == sorted([
        ("out_of_bounds", "3", "KSampler", "steps"), ("not_in_choices", "3", "KSampler", "sampler_name"),
        ("wrong_type", "3", "KSampler", "cfg"), ("missing_input", "3", "KSampler", "positive"),
        ("unknown_node_type", "5", "NoSuchNode", None), ("unknown_link_output", "8", "VAEDecode", "vae"),
        ("unknown_link_node", "9", "SaveImage", "images"), ("bad_format", "10", None, None),
    ])


def test_a_value_for_an_input_nodegraph_takes_as_a_value_only_is_refused_when_linked(env):
    prompt = default_prompt()
    prompt["3"]["inputs"]["seed"] = ["5", 0]  # ComfyUI lets a widget input take a link; ours take values
    issues = issues_of(prompt, env)
    assert where(issues) == [("wrong_type", "3", "KSampler", "seed")]
    assert "expected a constant" in str(issues[0])


def test_an_unknown_output_node_does_not_add_nothing_to_run(env):
    prompt = default_prompt()
    prompt["9"]["class_type"] = "SaveImageWebsocket"
    assert [issue.code for issue in issues_of(prompt, env)] == ["unknown_node_type"]


# --- format detection and the API form of native workflows ------------------------------------------------------


@pytest.mark.parametrize("data, expected", [
    ({"version": 1, "nodes": {}}, "native"), ({"nodes": [], "links": [], "version": 0.4}, "ui"),
    ({"3": {"class_type": "KSampler", "inputs": {}}}, "api"), ({}, "native"), ([], "native"),
    ({"3": {"class_type": "KSampler"}, "4": "junk"}, "api"),
])
def test_detect_format(data, expected):
    assert detect_format(data) == expected


def test_a_native_workflows_prompt_uses_comfyui_class_types_and_output_indexes():
    class Source(Node):
        TYPE, COMFY_TYPE = "Source", None
        OUTPUTS = {"first": "NUMBER", "second": "NUMBER"}

        def run(self, ctx):
            return {"first": 1, "second": 2}

    class Sink(Node):
        TYPE, COMFY_TYPE, DISPLAY_NAME = "Sink", "ComfySink", "Number Sink"
        OUTPUT_NODE = True

        class Inputs(NodeInputs):
            number: Link["NUMBER"]
            label: str = Field("")

        def run(self, ctx, number, label):
            return {}

    native = {"version": 1, "nodes": {"a": {"type": "Source", "inputs": {}},
                                      "b": {"type": "Sink", "inputs": {"number": ["a", "second"], "label": "x"}}},
              "ui": {"nodes": {"b": {"pos": [0, 0], "title": "The sink"}}}}
    prompt = to_native(copy.deepcopy(native), NodeRegistry([Source, Sink])).prompt
    assert prompt == {
        "a": {"class_type": "Source", "inputs": {}, "_meta": {"title": "Source"}},
        "b": {"class_type": "ComfySink", "inputs": {"number": ["a", 1], "label": "x"}, "_meta": {"title": "The sink"}},
    }
