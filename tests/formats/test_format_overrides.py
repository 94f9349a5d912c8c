"""`--set NODE.INPUT=VALUE` on ComfyUI's API and UI files, node ids as the file has them."""

import pytest

from formats_builders import UiFile, default_prompt, registry, txt2img
from formats_standins import standin_registry
from nodegraph.formats import to_native
from nodegraph.workflow import InvalidWorkflow, apply_overrides


def test_api_inputs_are_set_by_node_id_with_json_values_and_text_for_strings():
    prompt = apply_overrides(default_prompt(), ["3.seed=7", "3.cfg=4.5", "6.text=42", "8.vae=[\"4\", 2]"],
                             standin_registry())
    assert prompt["3"]["inputs"]["seed"] == 7 and prompt["3"]["inputs"]["cfg"] == 4.5
    assert prompt["6"]["inputs"]["text"] == "42" and prompt["8"]["inputs"]["vae"] == ["4", 2]
    assert default_prompt()["3"]["inputs"]["seed"] == 8566257


def test_ui_widget_values_are_set_in_place_keeping_the_control_value():
    data = apply_overrides(txt2img().data(), ["3.steps=4", "3.seed=11", "6.text=a dog", "5.width=128"], registry())
    ksampler = next(node for node in data["nodes"] if node["id"] == 3)
    assert ksampler["widgets_values"] == [11, "randomize", 4, 8, "euler", "normal", 1]
    prompt = to_native(data, registry()).prompt
    assert prompt["6"]["inputs"]["text"] == "a dog" and prompt["5"]["inputs"]["width"] == 128


def test_ui_values_beyond_a_short_or_missing_list_are_filled_as_the_frontend_writes_them():
    ui = txt2img(ksampler_widgets=[5])
    ui.nodes[9]["widgets_values"] = None
    data = apply_overrides(ui.data(), ["3.denoise=0.5", "9.filename_prefix=cats/cat"], registry())
    nodes = {node["id"]: node for node in data["nodes"]}
    assert nodes[3]["widgets_values"] == [5, "fixed", 20, 8.0, "euler", "normal", 0.5]
    assert nodes[9]["widgets_values"] == ["cats/cat"]


def test_ui_dict_widget_values_are_set_by_name():
    ui = txt2img()
    ui.nodes[3]["widgets_values"] = {"seed": 1}
    data = apply_overrides(ui.data(), ["3.steps=3"], registry())
    assert next(node for node in data["nodes"] if node["id"] == 3)["widgets_values"] == {"seed": 1, "steps": 3}


def test_a_ui_widget_fed_by_a_primitive_node_sets_the_primitive():
    ui = txt2img().add(20, "PrimitiveNode", [77, "fixed"], outputs=[("INT", "INT")])
    ui.nodes[3]["inputs"].append({"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": None})
    ui.link(20, 0, 3, 4)
    data = apply_overrides(ui.data(), ["3.seed=9"], registry())
    assert to_native(data, registry()).prompt["3"]["inputs"]["seed"] == 9
    assert next(node for node in data["nodes"] if node["id"] == 20)["widgets_values"] == [9, "fixed"]


@pytest.mark.parametrize("data, assignment, words", [
    ("api", "99.seed=1", "there is no node '99'"),
    ("ui", "99.seed=1", "there is no node '99'"),
    ("ui", "3.model=1", "'model' is a link"),
    ("ui", "3.sampler=euler", "'sampler' is not an input of it; the values of KSampler are seed, steps"),
    ("unknown", "1.x=1", "a node type nodegraph does not have"),
])
def test_bad_overrides_name_the_node_and_input(data, assignment, words):
    workflow = {"api": default_prompt(), "ui": txt2img().data(),
                "unknown": UiFile().add(1, "SomeCustomNode", [1]).data()}[data]
    with pytest.raises(InvalidWorkflow) as error:
        apply_overrides(workflow, [assignment], registry())
    [issue] = error.value.issues
    assert issue.code == "bad_override" and words in str(issue)
