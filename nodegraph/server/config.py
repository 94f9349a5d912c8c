"""What a server is started with: folders, address, token, and the limits that keep one request from exhausting it."""

from dataclasses import dataclass, field
from pathlib import Path

from nodegraph.nodes import Environment
from nodegraph.workflow import WorkflowIssue

WORKFLOWS_DIR = Path(__file__).resolve().parent.parent.parent / "workflows"  # the examples of a source checkout, if any
TOKEN_ENV = "NODEGRAPH_AUTH_TOKEN"


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

    def workflow_issues(self, workflow: dict) -> list[WorkflowIssue]:
        """Inputs of any node named width/height/batch_size/steps above their limit."""
        bounds = {"width": self.max_width, "height": self.max_height, "batch_size": self.max_batch_size,
                  "steps": self.max_steps}
        issues = []
        for node_id, node in workflow.get("nodes", {}).items():
            for name, limit in bounds.items():
                value = node.get("inputs", {}).get(name)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
                    issues.append(WorkflowIssue("over_limit", f"{value} is over this server's limit of {limit}",
                                                node_id=node_id, node_type=node.get("type"), input=name))
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
