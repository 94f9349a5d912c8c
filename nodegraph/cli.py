"""The command line: `run` a workflow (or a PNG the engine wrote), `serve` it over HTTP, list `nodes`.

Exit codes of `run`: 0 done, 1 a node failed while running, 2 invalid workflow or arguments (nothing ran, nothing
was written), 130 interrupted (Ctrl-C).
"""

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from nodegraph.executor import (ExecutionError, ExecutionInterrupted, Executed, Executing, Executor, Interrupted,
                                NodeFailed, NodeWarning, Progress, RunResult)
from nodegraph.extra_model_paths import ExtraModelFolder, ModelPathsError, missing_folders, read_extra_model_paths
from nodegraph.nodes import Environment, NodeRegistry, builtin_registry
from nodegraph.workflow import InvalidWorkflow, WorkflowIssue, apply_overrides, read_workflow_and_ui

EXIT_OK, EXIT_NODE_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nodegraph", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a workflow .json, or re-run the workflow embedded in a PNG",
                              description="Run a workflow; prints the paths of the images it wrote.")
    run.add_argument("workflow", type=Path, help="WORKFLOW.json, or IMAGE.png written by SaveImage")
    add_folder_options(run)
    run.add_argument("--output", type=Path, default=Path("output"), help="where SaveImage writes (default ./output)")
    run.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                     help="override an input, e.g. --set sample.seed=7, or --set 3.seed=7 in a ComfyUI file (node "
                          "ids as the file has them; VALUE is JSON if it parses, else text); repeatable")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                     help="where models run (auto: CUDA when present)")
    run.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                     help="model precision (auto: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32)")
    run.add_argument("--quiet", action="store_true", help="no per-node lines or progress bars, only the paths")
    run.add_argument("--traceback", action="store_true", help="print the full traceback when a node fails")
    run.set_defaults(handler=run_command)

    nodes = commands.add_parser("nodes", help="list the node types with their inputs and outputs")
    add_folder_options(nodes)
    nodes.add_argument("--json", action="store_true", help="the machine-readable description (as the server serves it)")
    nodes.set_defaults(handler=nodes_command)

    serve = commands.add_parser("serve", help="serve the HTTP API, the websocket and the web editor",
                                description="Serve the engine over HTTP and a websocket, with the web editor at /.")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1; any other needs --auth-token)")
    serve.add_argument("--port", type=int, default=8188)
    add_folder_options(serve)
    serve.add_argument("--output", type=Path, default=Path("output"), help="where SaveImage writes (default ./output)")
    serve.add_argument("--data", type=Path, default=Path("data"),
                       help="queue and history database, and temporary images (default ./data)")
    serve.add_argument("--auth-token", default=None,
                       help="token every request must carry (Authorization: Bearer TOKEN, ?token=, or the cookie "
                            "that ?token= sets); default from $NODEGRAPH_AUTH_TOKEN")
    serve.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    serve.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    serve.add_argument("--max-size", type=int, default=2048, help="largest width or height a prompt may ask for")
    serve.add_argument("--max-batch-size", type=int, default=8)
    serve.add_argument("--max-steps", type=int, default=200)
    serve.add_argument("--max-upload-mb", type=float, default=25.0)
    serve.add_argument("--preview-method", choices=["none", "auto"], default="none",
                       help="sampling previews as binary websocket frames: none (as ComfyUI's default; a socket may "
                            "still ask with ?previews=1, as the editor does) or auto (to every socket)")
    serve.set_defaults(handler=serve_command)
    return parser


def add_folder_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", type=Path, default=Path("models"),
                        help="models folder, laid out as ComfyUI's: checkpoints/, vae/, loras/, embeddings/, ... "
                             "(default ./models); symlinked files and folders in it are followed")
    parser.add_argument("--extra-model-paths", type=extra_model_paths_file, action="append", default=[],
                        metavar="FILE", help="ComfyUI's extra_model_paths.yaml: more model folders, e.g. those of an "
                                             "existing ComfyUI or A1111 install; repeatable")
    parser.add_argument("--allow-pickled-models", action="store_true",
                        help="also offer .ckpt/.pt/.bin/.pth models, read with torch.load(weights_only=True) "
                             "(pickles: prefer .safetensors)")
    parser.add_argument("--input", type=Path, default=Path("input"), help="where LoadImage reads (default ./input)")


def extra_model_paths_file(value: str) -> tuple[ExtraModelFolder, ...]:
    """--extra-model-paths FILE, read while the arguments are parsed: a bad file is an argument error (exit 2)."""
    try:
        folders = read_extra_model_paths(value)
    except ModelPathsError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    for warning in missing_folders(folders):
        print(f"warning: {warning}", file=sys.stderr)
    return folders


def folder_settings(args: argparse.Namespace) -> dict:
    """The Environment fields that add_folder_options sets."""
    return {"models_dir": args.models, "input_dir": args.input, "allow_pickled_models": args.allow_pickled_models,
            "extra_model_paths": tuple(folder for file in args.extra_model_paths for folder in file)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


# --- run --------------------------------------------------------------------------------------------------------


def run_command(args: argparse.Namespace) -> int:
    env = Environment(**folder_settings(args), output_dir=args.output, device=args.device, dtype=args.dtype)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("error: --device cuda, but torch sees no CUDA device", file=sys.stderr)
            return EXIT_INVALID
    executor = Executor(env)
    try:
        workflow, ui_workflow = read_workflow_and_ui(args.workflow)
        workflow = apply_overrides(workflow, args.set, executor.registry)
        valid = executor.validate(workflow)
    except InvalidWorkflow as error:
        print_issues(args.workflow, error.issues)
        return EXIT_INVALID
    if valid.format == "ui":
        ui_workflow = workflow  # with the --set values, as ComfyUI's frontend embeds what it queued
    # ComfyUI's SaveImage embeds the UI workflow it is given here, as ComfyUI's frontend passes it along.
    extra_data = {"extra_pnginfo": {"workflow": ui_workflow}} if ui_workflow is not None else None

    console = Console(quiet=args.quiet, type_names=file_type_names(valid))
    try:
        result = executor.run(valid, on_event=console, extra_data=extra_data)
    except NodeFailed as error:
        console.close()
        if args.traceback:
            print(error.traceback, file=sys.stderr, end="")
        node_type = console.type_names.get(error.node_id, error.node_type)
        print(f"error: node {error.node_id!r} ({node_type}) failed: {error.message}", file=sys.stderr)
        return EXIT_NODE_FAILED
    except (Interrupted, KeyboardInterrupt):
        console.close()
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    console.close()
    for path in written_images(result, env):
        print(path)
    return EXIT_OK


def print_issues(source: Path, issues: list[WorkflowIssue]) -> None:
    count = f"{len(issues)} problem{'s' if len(issues) != 1 else ''}"
    print(f"error: {source} is not a valid workflow ({count}); nothing was run:", file=sys.stderr)
    for issue in issues:
        print(f"  {issue}", file=sys.stderr)


def written_images(result: RunResult, env: Environment) -> list[Path]:
    roots = {"output": env.output_dir, "temp": env.temp_dir}
    paths = []
    for ui in result.outputs.values():
        for image in ui.get("images", []):
            paths.append(Path(roots[image["type"]]) / image["subfolder"] / image["filename"])
    return paths


def file_type_names(valid) -> dict[str, str]:
    """Each node's type as the workflow file names it: ComfyUI's class_type in its formats, ours in native files."""
    if valid.format == "native":
        return {node_id: node.node_class.TYPE for node_id, node in valid.nodes.items()}
    return {node_id: node.node_class.COMFY_TYPE or node.node_class.TYPE for node_id, node in valid.nodes.items()}


class Console:
    """The CLI's event listener: a line per node that runs, a tqdm bar per sampler run, on stderr."""

    def __init__(self, quiet: bool = False, type_names: dict[str, str] | None = None):
        self.quiet = quiet
        self.type_names = type_names or {}  # node id -> its type as the file names it (ComfyUI's class_type there)
        self.bars: dict[str, tqdm] = {}

    def _type(self, event) -> str:
        return self.type_names.get(event.node_id, event.node_type)

    def __call__(self, event) -> None:
        if isinstance(event, NodeWarning):  # shown even with --quiet: the picture may not be what was asked for
            tqdm.write(f"warning: node {event.node_id!r} ({self._type(event)}): {event.message}", file=sys.stderr)
            return
        if self.quiet:
            return
        if isinstance(event, Executing):
            tqdm.write(f"{event.node_id} ({self._type(event)})", file=sys.stderr)
        elif isinstance(event, Progress):
            bar = self.bars.get(event.node_id)
            if bar is None:
                bar = self.bars[event.node_id] = tqdm(total=event.total, desc=event.node_id, unit="step",
                                                      file=sys.stderr, dynamic_ncols=True)
            bar.update(event.step - bar.n)
        elif isinstance(event, (Executed, ExecutionError, ExecutionInterrupted)) and event.node_id in self.bars:
            self.bars.pop(event.node_id).close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


# --- serve ------------------------------------------------------------------------------------------------------


def serve_command(args: argparse.Namespace) -> int:
    import os

    from nodegraph.server import TOKEN_ENV, Limits, ServerConfig, serve

    env = Environment(**folder_settings(args), output_dir=args.output, temp_dir=args.data / "temp",
                      device=args.device, dtype=args.dtype)
    limits = Limits(max_width=args.max_size, max_height=args.max_size, max_batch_size=args.max_batch_size,
                    max_steps=args.max_steps, max_upload_bytes=int(args.max_upload_mb * 2**20))
    config = ServerConfig(env=env, data_dir=args.data, host=args.host, port=args.port, limits=limits,
                          auth_token=args.auth_token or os.environ.get(TOKEN_ENV) or None,
                          preview_method=args.preview_method)
    try:
        serve(config)
    except ValueError as error:  # e.g. a non-loopback address without a token
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


# --- nodes ------------------------------------------------------------------------------------------------------


def nodes_command(args: argparse.Namespace) -> int:
    env = Environment(**folder_settings(args))
    registry = builtin_registry()
    if args.json:
        print(json.dumps(registry.describe(env), indent=2))
    else:
        print(describe_nodes(registry, env))
    return EXIT_OK


def describe_nodes(registry: NodeRegistry, env: Environment) -> str:
    lines = []
    for node in registry:
        flag = ", output node" if node.OUTPUT_NODE else ""
        lines.append(f"{node.TYPE}  [{node.CATEGORY}{flag}]")
        if node.DESCRIPTION:
            lines.append(f"    {node.DESCRIPTION}")
        for spec in node.input_specs().values():
            default = "" if spec.required else f" = {json.dumps(spec.default)}"
            what = spec.type if spec.kind == "link" else spec.expectation(env)
            lines.append(f"    in   {spec.name}: {what}{default}")
        for name, socket_type in node.OUTPUTS.items():
            lines.append(f"    out  {name}: {socket_type}")
        lines.append("")
    return "\n".join(lines).rstrip()
