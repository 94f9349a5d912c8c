"""ComfyUI's UI workflow files: converted to the API prompt its frontend's graphToPrompt would queue, then to ours."""

import pytest

from engine_fixtures import env  # noqa: F401  (a fixture)
from formats_builders import UiFile, registry, txt2img
from nodegraph.executor import Executor
from nodegraph.formats import to_native
from nodegraph.workflow import InvalidWorkflow


def prompt_of(data) -> dict:
    converted = to_native(data, registry())
    assert converted.format == "ui"
    return converted.prompt


def issues_of(data, env) -> list[tuple]:
    with pytest.raises(InvalidWorkflow) as error:
        Executor(env, registry()).validate(data)
    return [(issue.code, issue.node_id, issue.node_type, issue.input) for issue in error.value.issues]


# --- widgets ---------------------------------------------------------------------------------------------------


def test_widget_values_follow_the_constant_inputs_with_the_control_value_after_the_seed():
    prompt = prompt_of(txt2img().data())
    assert prompt["3"] == {"class_type": "KSampler", "_meta": {"title": "KSampler"}, "inputs": {
        "seed": 5, "steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal", "denoise": 1,
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}}
    assert prompt["9"]["inputs"] == {"filename_prefix": "out", "images": ["8", 0]}


@pytest.mark.parametrize("control, randomized", [("randomize", True), ("fixed", False), ("increment", False),
                                                 ("decrement", False), (True, True), (False, False)])
def test_control_values_are_no_input_and_randomize_is_kept_for_the_editor(control, randomized):
    converted = to_native(txt2img(seed_control=control).data(), registry())
    assert converted.prompt["3"]["inputs"]["steps"] == 20
    assert converted.native["nodes"]["3"]["inputs"]["seed"] == 5
    assert ("randomize" in converted.native["ui"]["nodes"]["3"]) is randomized
    if randomized:
        assert converted.native["ui"]["nodes"]["3"]["randomize"] == ["seed"]


def test_a_file_without_the_control_value_keeps_the_values_in_place():
    prompt = prompt_of(txt2img(ksampler_widgets=[5, 20, 8, "euler", "normal", 1]).data())
    assert prompt["3"]["inputs"]["steps"] == 20 and prompt["3"]["inputs"]["denoise"] == 1


def test_null_or_absent_widgets_values_mean_the_defaults():
    ui = txt2img()
    ui.nodes[3]["widgets_values"] = None
    del ui.nodes[9]["widgets_values"]
    prompt = prompt_of(ui.data())
    assert {k: v for k, v in prompt["3"]["inputs"].items() if not isinstance(v, list)} == {
        "seed": 0, "steps": 20, "cfg": 8.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}
    assert prompt["9"]["inputs"]["filename_prefix"] == "ComfyUI"


def test_values_missing_at_the_end_take_the_defaults():
    prompt = prompt_of(txt2img(ksampler_widgets=[5, "fixed", 12]).data())
    assert (prompt["3"]["inputs"]["steps"], prompt["3"]["inputs"]["cfg"], prompt["3"]["inputs"]["denoise"]) == \
        (12, 8.0, 1.0)


def test_widgets_values_as_a_dict_are_read_by_name():
    ui = txt2img()
    ui.nodes[3]["widgets_values"] = {"seed": 9, "steps": 4, "control_after_generate": "fixed", "nonsense": 1}
    inputs = prompt_of(ui.data())["3"]["inputs"]
    assert (inputs["seed"], inputs["steps"], inputs["cfg"]) == (9, 4, 8.0) and "nonsense" not in inputs


def test_required_widgets_come_before_optional_ones():
    ui = UiFile().add(1, "EmptyLatentImage", [64, 64, 1], outputs=[("LATENT", "LATENT")])
    ui.add(2, "Blend", ["add", 0.25], inputs=[("samples1", "LATENT"), ("samples2", "LATENT")],
           outputs=[("LATENT", "LATENT")])
    ui.link(1, 0, 2, 0).link(1, 0, 2, 1)
    assert prompt_of(ui.data())["2"]["inputs"] == {"mode": "add", "strength": 0.25, "samples1": ["1", 0],
                                                   "samples2": ["1", 0]}


def test_the_upload_value_after_an_image_is_no_input():
    ui = UiFile().add(10, "LoadImage", ["example.png", "image"], outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")])
    assert prompt_of(ui.data())["10"]["inputs"] == {"image": "example.png"}


def test_a_widget_converted_to_an_input_takes_its_link():
    ui = txt2img().add(12, "IntSource", [], outputs=[("INT", "INT")])
    ui.nodes[3]["inputs"].append({"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": None})
    ui.link(12, 0, 3, 4)
    assert prompt_of(ui.data())["3"]["inputs"]["seed"] == ["12", 0]


def test_a_seed_fed_by_a_real_node_is_refused_naming_the_input(env):
    ui = txt2img().add(12, "IntSource", [], outputs=[("INT", "INT")])
    ui.nodes[3]["inputs"].append({"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": None})
    ui.link(12, 0, 3, 4)
    assert issues_of(ui.data(), env) == [("wrong_type", "3", "KSampler", "seed")]


def test_a_primitive_node_gives_its_value_to_the_widgets_it_feeds_through_reroutes():
    ui = txt2img()
    ui.add(20, "PrimitiveNode", [77, "randomize"], outputs=[("INT", "INT")], title="seed")
    ui.add(21, "Reroute", None, inputs=[("", "*")], outputs=[("", "INT")])
    ui.nodes[3]["inputs"].append({"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": None})
    ui.link(20, 0, 21, 0).link(21, 0, 3, 4)
    converted = to_native(ui.data(), registry())
    assert converted.prompt["3"]["inputs"]["seed"] == 77  # the KSampler's own widget value (5) loses
    assert converted.native["ui"]["nodes"]["3"]["randomize"] == ["seed"]
    assert "20" not in converted.prompt and "21" not in converted.prompt


# --- links, reroutes, bypass, mute -------------------------------------------------------------------------------


def test_version_1_link_objects_read_as_version_0_4_lists():
    assert prompt_of(txt2img().data(version=1)) == prompt_of(txt2img().data(version=0.4))


def test_links_follow_reroutes():
    ui = txt2img().add(30, "Reroute", None, inputs=[("", "*")], outputs=[("", "VAE")])
    ui.add(31, "Reroute", None, inputs=[("", "*")], outputs=[("", "VAE")])
    ui.link(4, 2, 30, 0).link(30, 0, 31, 0).link(31, 0, 8, 1)
    prompt = prompt_of(ui.data())
    assert prompt["8"]["inputs"]["vae"] == ["4", 2] and "30" not in prompt


def test_a_chain_of_bypassed_nodes_passes_the_input_of_the_same_slot_through():
    ui = txt2img()
    blend = dict(inputs=[("samples1", "LATENT"), ("samples2", "LATENT")], outputs=[("LATENT", "LATENT")])
    ui.add(40, "Blend", ["normal", 0.5], mode=4, **blend).add(41, "Blend", ["normal", 0.5], mode=4, **blend)
    ui.add(42, "EmptyLatentImage", [8, 8, 1], outputs=[("LATENT", "LATENT")])
    ui.nodes[3]["inputs"][3]["link"] = None
    ui.link(42, 0, 40, 0).link(5, 0, 40, 1).link(5, 0, 41, 1).link(40, 0, 41, 0).link(41, 0, 3, 3)
    prompt = prompt_of(ui.data())
    assert prompt["3"]["inputs"]["latent_image"] == ["42", 0]  # slot 0 of 41, then slot 0 of 40
    assert "40" not in prompt and "41" not in prompt


def test_a_bypassed_node_prefers_the_input_in_the_slot_of_the_output_asked_for():
    ui = txt2img().add(42, "EmptyLatentImage", [8, 8, 1], outputs=[("LATENT", "LATENT")])
    ui.add(43, "LatentPairFilter", [], mode=4, inputs=[("first", "LATENT"), ("second", "LATENT")],
           outputs=[("first", "LATENT"), ("second", "LATENT")])
    ui.nodes[3]["inputs"][3]["link"] = None
    ui.link(5, 0, 43, 0).link(42, 0, 43, 1).link(43, 1, 3, 3)
    assert prompt_of(ui.data())["3"]["inputs"]["latent_image"] == ["42", 0]


def test_a_bypassed_node_of_a_type_nodegraph_lacks_passes_the_first_input_of_the_type_asked_for():
    ui = txt2img()
    ui.add(50, "SomeCustomLatentFilter", [1.5], mode=4, inputs=[("model", "MODEL"), ("latent", "LATENT")],
           outputs=[("LATENT", "LATENT"), ("MODEL", "MODEL")])
    ui.link(4, 0, 50, 0).link(5, 0, 50, 1)
    ui.nodes[3]["inputs"][3]["link"] = None
    ui.link(50, 0, 3, 3)
    prompt = prompt_of(ui.data())
    assert prompt["3"]["inputs"]["latent_image"] == ["5", 0]  # slot 0 is MODEL: the LATENT input passes instead


def test_a_bypassed_node_without_an_input_of_the_type_leaves_its_consumer_without_the_input(env):
    ui = txt2img()
    ui.nodes[8]["mode"] = 4  # VAEDecode: LATENT and VAE in, IMAGE out
    assert "images" not in prompt_of(ui.data())["9"]["inputs"]
    assert issues_of(ui.data(), env) == [("missing_input", "9", "SaveImage", "images")]


def test_a_muted_node_is_left_out_with_the_inputs_linked_to_it(env):
    ui = txt2img()
    ui.nodes[5]["mode"] = 2
    prompt = prompt_of(ui.data())
    assert "5" not in prompt and "latent_image" not in prompt["3"]["inputs"]
    assert issues_of(ui.data(), env) == [("missing_input", "3", "KSampler", "latent_image")]


def test_notes_and_groups_are_dropped():
    ui = txt2img().add(60, "Note", ["remember"]).add(61, "MarkdownNote", ["**hi**"])
    data = ui.data(groups=[{"id": 1, "title": "Step 1", "bounding": [0, 0, 10, 10]}])
    assert sorted(prompt_of(data)) == ["3", "4", "5", "6", "7", "8", "9"]


# --- what is kept for the editor ------------------------------------------------------------------------------


def test_positions_titles_and_randomize_go_into_the_native_ui(env):
    ui = txt2img()
    ui.nodes[6]["title"] = "Positive"
    converted = to_native(ui.data(), registry())
    assert converted.native["ui"]["nodes"]["6"] == {"pos": [60, 20], "title": "Positive"}
    assert converted.native["ui"]["nodes"]["3"] == {"pos": [30, 20], "randomize": ["seed"]}
    assert converted.prompt["6"]["_meta"] == {"title": "Positive"}
    valid = Executor(env, registry()).validate(ui.data())
    assert valid.format == "ui" and valid.prompt == converted.prompt and sorted(valid.nodes) == sorted(converted.prompt)


# --- refused and broken input ---------------------------------------------------------------------------------


def test_a_subgraph_is_refused_naming_the_node_and_its_consumers_stay_quiet(env):
    ui = txt2img()
    subgraph_id = "581ab310-5783-4e50-b220-4d94035eb469"
    ui.add(70, subgraph_id, [], outputs=[("LATENT", "LATENT")])
    ui.nodes[3]["inputs"][3]["link"] = None
    ui.link(70, 0, 3, 3)
    data = ui.data(definitions={"subgraphs": [{"id": subgraph_id, "name": "Style Reference", "nodes": [],
                                               "links": []}]})
    with pytest.raises(InvalidWorkflow) as error:
        Executor(env, registry()).validate(data)
    [issue] = error.value.issues
    assert (issue.code, issue.node_id) == ("unsupported", "70")
    assert "node 70 is a subgraph ('Style Reference')" in str(issue) and "Unpack Subgraph" in str(issue)


def test_a_node_type_nodegraph_lacks_is_named_and_its_consumers_stay_quiet(env):
    ui = txt2img()
    ui.nodes[5]["type"] = "EmptySD3LatentImage"
    assert issues_of(ui.data(), env) == [("unknown_node_type", "5", "EmptySD3LatentImage", None)]


def test_validation_problems_name_the_files_node_ids_and_types(env):
    ui = txt2img(ksampler_widgets=[5, "fixed", 0, 8, "euler_x", "normal", 1])
    ui.nodes[5]["widgets_values"] = [64, 64, "two"]
    assert sorted(issues_of(ui.data(), env)) == [("not_in_choices", "3", "KSampler", "sampler_name"),
                                                 ("out_of_bounds", "3", "KSampler", "steps"),
                                                 ("wrong_type", "5", "EmptyLatentImage", "batch_size")]


def test_a_link_id_missing_from_the_links_is_named(env):
    ui = txt2img()
    ui.nodes[8]["inputs"][1]["link"] = 999
    assert issues_of(ui.data(), env) == [("bad_link", "8", "VAEDecode", "vae")]


def test_reroutes_in_a_loop_are_named(env):
    ui = txt2img().add(80, "Reroute", None, inputs=[("", "*")], outputs=[("", "VAE")])
    ui.add(81, "Reroute", None, inputs=[("", "*")], outputs=[("", "VAE")])
    ui.link(80, 0, 81, 0).link(81, 0, 80, 0)
    ui.nodes[8]["inputs"][1]["link"] = None
    ui.link(81, 0, 8, 1)
    assert issues_of(ui.data(), env) == [("cycle", "8", "VAEDecode", "vae")]


def test_malformed_nodes_and_links_are_named(env):
    data = txt2img().data()
    data["nodes"].append({"type": "KSampler"})
    data["links"].append([1, 2])
    with pytest.raises(InvalidWorkflow) as error:
        Executor(env, registry()).validate(data)
    assert [issue.code for issue in error.value.issues] == ["bad_format", "bad_format"]
    assert "nodes[7]" in str(error.value) and "links[9]" in str(error.value)


def test_the_upload_value_comes_after_all_required_widgets_as_comfyuis_frontend_adds_it():
    from nodegraph.nodes import builtin_registry
    ui = UiFile().add(10, "LoadImageMask", ["m.png", "red", "image"], outputs=[("MASK", "MASK")])
    assert to_native(ui.data(), builtin_registry()).prompt["10"]["inputs"] == {"image": "m.png", "channel": "red"}
