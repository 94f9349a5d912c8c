"""The executor with test-only nodes: ordering, caching, the memory budget, events, interrupts, failures."""

import json

import pytest
import torch

from engine_fixtures import counting_nodes, env, node, workflow  # noqa: F401  (env is a fixture)
from nodegraph.executor import Executor, Interrupted, NodeFailed, OutputCache, estimate_bytes
from nodegraph.nodes import Node, NodeInputs
from nodegraph.workflow import InvalidWorkflow


@pytest.fixture
def nodes():
    return counting_nodes()


@pytest.fixture
def executor(env, nodes):
    return Executor(env, nodes.registry)


def sum_workflow(a=1, b=2, label="sum") -> dict:
    return workflow(a=node("Number", value=a), b=node("Number", value=b),
                    add=node("Add", a=["a", "number"], b=["b", "number"]),
                    show=node("Show", number=["add", "number"], label=label))


def test_runs_nodes_in_dependency_order_and_returns_output_node_results(executor, nodes):
    result = executor.run(sum_workflow(3, 4))
    assert result.executed == ["a", "b", "add", "show"]
    assert result.outputs == {"show": {"value": 7, "label": "sum"}}
    assert dict(nodes.runs) == {"a": 1, "b": 1, "add": 1, "show": 1}


def test_runs_only_what_output_nodes_need(executor, nodes):
    flow = sum_workflow()
    flow["nodes"]["unused"] = node("Number", value=9)
    flow["nodes"]["unused_sum"] = node("Add", a=["unused", "number"], b=["unused", "number"])
    executor.run(flow)
    assert "unused" not in nodes.runs and "unused_sum" not in nodes.runs


def test_rerunning_an_unchanged_workflow_runs_nothing_but_still_reports_its_outputs(executor, nodes):
    executor.run(sum_workflow())
    result = executor.run(sum_workflow())
    assert result.executed == []
    assert result.outputs == {"show": {"value": 3, "label": "sum"}}
    assert all(count == 1 for count in nodes.runs.values())


def test_changing_a_constant_reruns_exactly_that_node_and_what_depends_on_it(executor, nodes):
    executor.run(sum_workflow(1, 2))
    result = executor.run(sum_workflow(1, 5))
    assert result.executed == ["b", "add", "show"]
    assert result.cached == ["a"]
    assert result.outputs["show"]["value"] == 6


def test_changing_an_output_node_reruns_only_it(executor, nodes):
    executor.run(sum_workflow(label="one"))
    result = executor.run(sum_workflow(label="two"))
    assert result.executed == ["show"]
    assert result.cached == ["add"]  # a and b are not even looked at: add's cached output is all show needs


def test_node_ids_and_ui_block_are_not_part_of_the_cache_key(executor, nodes):
    executor.run(sum_workflow())
    renamed = workflow(x=node("Number", value=1), y=node("Number", value=2),
                       total=node("Add", a=["x", "number"], b=["y", "number"]),
                       show=node("Show", number=["total", "number"], label="sum"))
    renamed["ui"] = {"positions": {"x": [0, 0]}}
    assert executor.run(renamed).executed == []


def test_a_cached_node_spares_its_upstream_even_when_that_output_was_too_big_to_cache(env, nodes):
    executor = Executor(env, nodes.registry, cache_budget_bytes=1000)
    flow = workflow(blob=node("Blob", size=5000), measure=node("Measure", blob=["blob", "blob"]),
                    show=node("Show", number=["measure", "number"], label="first"))
    executor.run(flow)
    flow["nodes"]["show"]["inputs"]["label"] = "second"
    result = executor.run(flow)
    assert result.executed == ["show"]
    assert nodes.runs["blob"] == 1


def test_memory_budget_evicts_the_least_recently_used_outputs(env, nodes):
    executor = Executor(env, nodes.registry, cache_budget_bytes=1000)

    def blob_workflow(tag: str, label: str = "") -> dict:
        return workflow(**{f"blob_{tag}": node("Blob", size=400, tag=tag),
                           "measure": node("Measure", blob=[f"blob_{tag}", "blob"], label=label),
                           "show": node("Show", number=["measure", "number"], label=tag + label)})

    executor.run(blob_workflow("a"))
    executor.run(blob_workflow("b"))
    executor.run(blob_workflow("a", label="again"))  # uses blob a's cached output: now b's is the older one
    executor.run(blob_workflow("c"))  # 3 x 400 bytes do not fit in 1000: one blob must go
    assert executor.cache.total_bytes <= 1000
    assert executor.run(blob_workflow("a", label="once more")).executed == ["measure", "show"]
    assert executor.run(blob_workflow("b", label="once more")).executed == ["blob_b", "measure", "show"]
    assert nodes.runs["blob_a"] == 1 and nodes.runs["blob_b"] == 2


def test_an_output_larger_than_the_whole_budget_is_used_but_not_cached(env, nodes):
    executor = Executor(env, nodes.registry, cache_budget_bytes=100)
    flow = workflow(blob=node("Blob", size=5000), measure=node("Measure", blob=["blob", "blob"]),
                    show=node("Show", number=["measure", "number"]))
    assert executor.run(flow).outputs["show"]["value"] == 5000
    assert executor.cache.total_bytes <= 100


def test_events_follow_the_run_and_are_json_serialisable(executor):
    events = []
    executor.run(sum_workflow(), on_event=events.append)
    assert [event.type for event in events] == [
        "execution_start", "execution_cached",
        "executing", "executed", "executing", "executed", "executing", "executed", "executing", "executed",
        "execution_success"]
    assert [e.node_id for e in events if e.type == "executing"] == ["a", "b", "add", "show"]
    assert events[-1].outputs == {"show": {"value": 3, "label": "sum"}}
    assert len({event.run_id for event in events}) == 1
    json.dumps([event.to_dict() for event in events])

    events.clear()
    executor.run(sum_workflow(label="other"), on_event=events.append)
    cached = next(event for event in events if event.type == "execution_cached")
    assert cached.nodes == ["a", "b", "add"]  # as ComfyUI reports it: all that is cached, even what is not used
    assert [e.node_id for e in events if e.type == "executing"] == ["show"]


def test_progress_events_carry_node_step_and_total(executor):
    flow = workflow(a=node("Number", value=1), steps=node("Steps", number=["a", "number"], steps=3),
                    show=node("Show", number=["steps", "number"]))
    events = []
    executor.run(flow, on_event=events.append)
    progress = [(e.node_id, e.step, e.total) for e in events if e.type == "progress"]
    assert progress == [("steps", 1, 3), ("steps", 2, 3), ("steps", 3, 3)]


def test_interrupt_between_nodes_stops_the_run_and_the_next_run_resumes_from_the_cache(executor, nodes):
    def interrupt_after_add(event):
        if event.type == "executed" and event.node_id == "add":
            executor.interrupt()

    events = []
    with pytest.raises(Interrupted):
        executor.run(sum_workflow(), on_event=lambda e: (events.append(e), interrupt_after_add(e)))
    assert "show" not in nodes.runs
    assert events[-1].type == "execution_interrupted" and events[-1].node_id == "show"

    result = executor.run(sum_workflow())
    assert result.executed == ["show"] and result.outputs["show"]["value"] == 3
    assert nodes.runs["add"] == 1


def test_interrupt_between_steps_stops_inside_the_node_and_leaves_the_executor_usable(executor, nodes):
    flow = workflow(a=node("Number", value=1), steps=node("Steps", number=["a", "number"], steps=10),
                    show=node("Show", number=["steps", "number"]))
    steps_seen = []

    def interrupt_at_step_3(event):
        if event.type == "progress":
            steps_seen.append(event.step)
            if event.step == 3:
                executor.interrupt()

    with pytest.raises(Interrupted):
        executor.run(flow, on_event=interrupt_at_step_3)
    assert steps_seen == [1, 2, 3]
    assert "show" not in nodes.runs

    result = executor.run(flow)
    assert result.executed == ["steps", "show"]  # the interrupted node was not cached; its input was
    assert result.outputs["show"]["value"] == 1


def test_an_interrupt_requested_before_a_run_does_not_cancel_it(executor):
    executor.interrupt()
    assert executor.run(sum_workflow()).outputs["show"]["value"] == 3


def test_a_failing_node_reports_itself_keeps_upstream_results_and_leaves_the_executor_usable(executor, nodes):
    flow = workflow(a=node("Number", value=1), explode=node("Explode", number=["a", "number"], fail=True),
                    show=node("Show", number=["explode", "number"]))
    events = []
    with pytest.raises(NodeFailed) as failure:
        executor.run(flow, on_event=events.append)
    assert (failure.value.node_id, failure.value.node_type) == ("explode", "Explode")
    assert "boom" in failure.value.message
    error = events[-1]
    assert error.type == "execution_error" and error.node_id == "explode" and "boom" in error.message
    assert "RuntimeError" in error.traceback
    entries_after_failure = len(executor.cache)

    with pytest.raises(NodeFailed):
        executor.run(flow)  # failed nodes are not cached: it runs, and fails, again
    assert nodes.runs["explode"] == 2 and nodes.runs["a"] == 1
    assert len(executor.cache) == entries_after_failure

    flow["nodes"]["explode"]["inputs"]["fail"] = False
    result = executor.run(flow)
    assert result.executed == ["explode", "show"] and result.outputs["show"]["value"] == 1


def test_a_node_returning_undeclared_outputs_fails_with_a_clear_message(executor):
    flow = workflow(a=node("Number", value=1), broken=node("Broken", number=["a", "number"]),
                    show=node("Show", number=["broken", "number"]))
    with pytest.raises(NodeFailed, match="numbr") as failure:
        executor.run(flow)
    assert failure.value.node_id == "broken"


def test_an_invalid_workflow_raises_before_any_node_runs(executor, nodes):
    flow = sum_workflow()
    flow["nodes"]["b"]["inputs"]["value"] = 5000
    with pytest.raises(InvalidWorkflow):
        executor.run(flow)
    assert not nodes.runs


def test_a_changed_fingerprint_reruns_the_node(env, nodes, tmp_path):
    watched = tmp_path / "watched.txt"
    watched.write_text("one")

    class ReadFile(Node):
        OUTPUTS = {"number": "NUMBER"}
        Inputs = NodeInputs

        @classmethod
        def fingerprint(cls, env, constants):
            return watched.read_text()

        def run(self, ctx):
            nodes.runs[ctx.node_id] += 1
            return {"number": len(watched.read_text())}

    nodes.registry.add(ReadFile)
    executor = Executor(env, nodes.registry)
    flow = workflow(read=node("ReadFile"), show=node("Show", number=["read", "number"]))
    executor.run(flow)
    executor.run(flow)
    watched.write_text("three")
    assert executor.run(flow).outputs["show"]["value"] == 5
    assert nodes.runs["read"] == 2


def test_estimate_bytes_counts_tensors_modules_and_shared_objects_once():
    tensor = torch.zeros(10, 10)  # 400 bytes
    assert estimate_bytes(tensor) == 400
    assert estimate_bytes({"a": tensor, "b": [tensor, (tensor,)]}) == 400
    linear = torch.nn.Linear(10, 10)  # 110 float32 parameters
    assert estimate_bytes(linear) == 440

    class Checkpoint:  # like the loaded model: a plain object holding modules
        def __init__(self):
            self.unet, self.vae = linear, torch.nn.Linear(2, 2)

    model = Checkpoint()
    assert estimate_bytes({"model": model, "clip": model, "vae": model}) == 440 + 24


def test_output_cache_keeps_within_budget_and_forgets_least_recently_used_first():
    cache = OutputCache(budget_bytes=1000)
    for key in "abc":
        cache.put(key, {"x": torch.zeros(300, dtype=torch.uint8)})
    cache.get("a")
    cache.put("d", {"x": torch.zeros(300, dtype=torch.uint8)})
    assert "b" not in cache and all(key in cache for key in "acd")
    assert cache.total_bytes == 900
    assert cache.put("huge", {"x": torch.zeros(2000, dtype=torch.uint8)}) is False
    assert "huge" not in cache and cache.total_bytes == 900


def test_a_warning_from_a_node_reaches_the_listener_and_the_run_goes_on(env):
    from nodegraph.nodes import NodeRegistry

    class Warns(Node):
        OUTPUT_NODE = True

        def run(self, ctx):
            ctx.warn("2 keys matched nothing")
            return {"ui": {"done": True}}

    events = []
    result = Executor(env, NodeRegistry([Warns])).run(workflow(w=node("Warns")), on_event=events.append)
    warnings = [event for event in events if event.type == "warning"]
    assert [(w.node_id, w.node_type, w.message) for w in warnings] == [("w", "Warns", "2 keys matched nothing")]
    assert result.outputs == {"w": {"done": True}}


def test_the_cache_counts_a_tensor_shared_by_two_entries_once():
    cache = OutputCache(budget_bytes=1000)
    base = torch.zeros(200, dtype=torch.uint8)
    patched_view = {"kept": base, "patched": torch.zeros(100, dtype=torch.uint8)}  # as a LoRA'd model holds its base
    cache.put("checkpoint", {"model": base})
    cache.put("lora", {"model": patched_view})
    assert cache.total_bytes == 300
    cache.discard("checkpoint")
    assert cache.total_bytes == 300 and "lora" in cache  # still held by the view
    cache.discard("lora")
    assert cache.total_bytes == 0
