"""Turning prompts into conditioning."""

from pydantic import Field

from nodegraph.nodes import Link, Node, NodeInputs, RunContext


class CLIPEncode(Node):
    CATEGORY = "conditioning"
    DESCRIPTION = "Encode a prompt with the checkpoint's CLIP text encoder (77 tokens; longer prompts are cut)."
    OUTPUTS = {"conditioning": "CONDITIONING"}

    class Inputs(NodeInputs):
        clip: Link["CLIP"] = Field(description="the text encoder, from LoadCheckpoint")
        text: str = Field("", description="the prompt", json_schema_extra={"multiline": True})

    def run(self, ctx: RunContext, clip, text):
        return {"conditioning": clip.encode_prompt([text])}


NODES = [CLIPEncode]
