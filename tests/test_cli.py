"""`python -m nodegraph` end to end, in a subprocess, on the small random checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine_fixtures import CHECKPOINT_NAME, all_files, img2img, two_stage_advanced, txt2img, with_ksampler
from nodegraph.cli import main

REPO = Path(__file__).parent.parent


def nodegraph(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "nodegraph", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def make_workdir(root: Path, checkpoint: Path) -> Path:
    """A folder laid out as the CLI expects by default: models/checkpoints/, input/ (output/ is made on demand)."""
    (root / "models" / "checkpoints").mkdir(parents=True)
    (root / "input").mkdir()
    os.link(checkpoint, root / "models" / "checkpoints" / CHECKPOINT_NAME)
    return root


@pytest.fixture(scope="module")
def txt2img_run(tmp_path_factory, tiny_checkpoint):
    """One CLI txt2img run with --set and explicit folders, shared by the tests that look at its result."""
    root = make_workdir(tmp_path_factory.mktemp("cli"), tiny_checkpoint)
    (root / "txt2img.json").write_text(json.dumps(txt2img(seed=1, steps=2)))
    run = nodegraph("run", "txt2img.json", "--models", "models", "--output", "out", "--set", "sample.seed=7",
                    "--set", "pos.text=a green triangle", "--device", "cpu", cwd=root)
    return root, run


def test_run_writes_the_png_prints_its_path_and_exits_0(txt2img_run):
    root, run = txt2img_run
    assert run.returncode == 0, run.stderr
    written = all_files(root / "out")
    assert [root / line for line in run.stdout.split()] == written == [root / "out" / "txt2img_00001_.png"]
    assert "sample" in run.stderr  # the progress bar names the sampler node


def test_set_overrides_inputs_and_the_png_records_them(txt2img_run):
    root, _ = txt2img_run
    with Image.open(root / "out" / "txt2img_00001_.png") as image:
        embedded = json.loads(image.text["workflow"])
    assert embedded["nodes"]["sample"]["inputs"]["seed"] == 7
    assert embedded["nodes"]["pos"]["inputs"]["text"] == "a green triangle"


def test_running_a_png_reruns_its_workflow_to_the_same_bytes(txt2img_run):
    root, _ = txt2img_run
    run = nodegraph("run", "out/txt2img_00001_.png", "--output", "out", "--device", "cpu", cwd=root)
    assert run.returncode == 0, run.stderr
    first, again = root / "out" / "txt2img_00001_.png", root / "out" / "txt2img_00002_.png"
    assert run.stdout.split() == [str(Path("out") / again.name)]
    assert first.read_bytes() == again.read_bytes()


def test_img2img_with_default_folders_and_an_input_not_a_multiple_of_8(tmp_path, tiny_checkpoint):
    root = make_workdir(tmp_path, tiny_checkpoint)
    Image.new("RGB", (70, 61), (200, 40, 40)).save(root / "input" / "example.png")
    (root / "img2img.json").write_text(json.dumps(img2img(denoise=0.5, steps=2)))
    run = nodegraph("run", "img2img.json", cwd=root)
    assert run.returncode == 0, run.stderr
    [written] = all_files(root / "output")
    with Image.open(written) as image:
        assert image.size == (64, 56)  # cropped, centred, to multiples of 8


def batch_of_two(flow: dict) -> dict:
    flow["nodes"]["empty"]["inputs"]["batch_size"] = 2
    return flow


KSAMPLER_RUNS = {  # name -> (workflow, PNGs it writes)
    "txt2img dpmpp_2m karras": (with_ksampler(txt2img(steps=4), "dpmpp_2m", "karras"), 1),
    "img2img denoise 0.6": (with_ksampler(img2img(denoise=0.6, steps=4), "euler", "normal"), 1),
    "batch 2 euler_ancestral": (batch_of_two(with_ksampler(txt2img(steps=4), "euler_ancestral")), 2),
    "advanced 0-12 then 12-20": (two_stage_advanced(txt2img(), steps=20, split=12), 1),
}


@pytest.mark.parametrize("name", KSAMPLER_RUNS)
def test_ksampler_workflows_run_end_to_end(tmp_path, tiny_checkpoint, name):
    flow, pictures = KSAMPLER_RUNS[name]
    root = make_workdir(tmp_path, tiny_checkpoint)
    Image.new("RGB", (64, 64), (200, 40, 40)).save(root / "input" / "example.png")
    (root / "flow.json").write_text(json.dumps(flow))
    run = nodegraph("run", "flow.json", "--device", "cpu", cwd=root)
    assert run.returncode == 0, run.stderr
    written = all_files(root / "output")
    assert len(written) == pictures and [root / line for line in run.stdout.split()] == written
    for path in written:
        with Image.open(path) as image:
            assert image.size == (64, 64) and len(image.getcolors(64 * 64)) > 10  # a picture, not a flat fill


def test_an_invalid_workflow_exits_2_naming_node_and_input_and_writes_nothing(tmp_path, tiny_checkpoint):
    root = make_workdir(tmp_path, tiny_checkpoint)
    flow = txt2img()
    flow["nodes"]["sample"]["inputs"]["steps"] = 0
    flow["nodes"]["empty"]["inputs"]["width"] = 65
    (root / "bad.json").write_text(json.dumps(flow))
    run = nodegraph("run", "bad.json", cwd=root)
    assert run.returncode == 2
    assert "node 'sample' (DDPMSample), input 'steps'" in run.stderr and ">= 1" in run.stderr
    assert "node 'empty' (EmptyLatent), input 'width'" in run.stderr and "multiple of 8" in run.stderr
    assert run.stdout == "" and all_files(root / "output") == []


def test_a_node_failing_while_running_exits_1(tmp_path, tiny_checkpoint, capsys):
    # In-process (the subprocess path of exit codes is covered above): a corrupt file fails at load time.
    root = make_workdir(tmp_path, tiny_checkpoint)
    (root / "models" / "checkpoints" / "corrupt.safetensors").write_bytes(b"\x00" * 64)
    (root / "txt2img.json").write_text(json.dumps(txt2img(checkpoint="corrupt.safetensors")))
    folders = ["--models", str(root / "models"), "--output", str(root / "output")]
    assert main(["run", str(root / "txt2img.json"), *folders]) == 1
    assert "node 'ckpt' (LoadCheckpoint) failed" in capsys.readouterr().err
    assert all_files(root / "output") == []


def test_bad_set_syntax_and_unreadable_files_exit_2(tmp_path, capsys):
    (tmp_path / "flow.json").write_text(json.dumps(txt2img()))
    assert main(["run", str(tmp_path / "flow.json"), "--set", "seed=7", "--models", str(tmp_path)]) == 2
    assert "NODE.INPUT=VALUE" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.json")]) == 2
    assert "cannot read a workflow" in capsys.readouterr().err


def test_nodes_lists_every_node_and_its_json_form_parses(capsys):
    assert main(["nodes"]) == 0
    listing = capsys.readouterr().out
    assert "DDPMSample" in listing and "denoise" in listing
    assert main(["nodes", "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["SaveImage"]["output_node"] is True
