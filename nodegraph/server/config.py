"""What a server is started with: folders, address, token, previews, and the limits that keep one request from
exhausting it."""

from dataclasses import dataclass, field
from pathlib import Path

from nodegraph.nodes import Environment
from nodegraph.workflow import ValidWorkflow, WorkflowIssue

WORKFLOWS_DIR = Path(__file__).resolve().parent.parent.parent / "workflows"  # the examples of a source checkout, if any
TOKEN_ENV = "NODEGRAPH_AUTH_TOKEN"
PREVIEW_METHODS = ("none", "auto")  # ComfyUI's --preview-method: none sends no preview frames unless a socket asks


@dataclass(frozen=True)
class Limits:
    """Upper bounds that keep one request from exhausting the machine."""

    max_width: int = 2048
    max_height: int = 2048
    max_batch_size: int = 8
    max_steps: int = 200
    max_body_bytes: int = 2 * 2**20
    max_upload_bytes: int = 25 * 2**20
    max_upload_pixels: int = 4096 * 4096

    def workflow_issues(self, valid: ValidWorkflow) -> list[WorkflowIssue]:
        """Constants over a limit, read from the validated graph, so the limits hold whatever format came in.

        Inputs are limited by name, as ComfyUI's nodes name them: sizes (width, height), batch sizes (batch_size,
        and RepeatLatentBatch's amount), step counts (steps) and ImageScaleToTotalPixels' megapixels.
        """
        bounds = {"width": self.max_width, "height": self.max_height, "batch_size": self.max_batch_size,
                  "amount": self.max_batch_size, "steps": self.max_steps,
                  "megapixels": self.max_width * self.max_height / 1e6}
        issues = []
        for node_id, node in valid.nodes.items():
            for name, limit in bounds.items():
                value = node.constants.get(name)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
                    issues.append(WorkflowIssue("over_limit", f"{value} is over this server's limit of {limit}",
                                                node_id=node_id, node_type=node.node_class.TYPE, input=name))
        return issues


@dataclass
class ServerConfig:
    env: Environment
    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 8188
    auth_token: str | None = None
    limits: Limits = field(default_factory=Limits)
    workflows_dir: Path | None = WORKFLOWS_DIR  # example workflows offered by the editor (None or missing: none)
    preview_method: str = "none"  # "auto": preview frames to every socket; "none": only to sockets with ?previews=1

    def __post_init__(self):
        if self.preview_method not in PREVIEW_METHODS:
            raise ValueError(f"preview method must be one of {', '.join(PREVIEW_METHODS)}, got {self.preview_method!r}")
