"""Builders for the format tests: ComfyUI's default prompt in API form, and UI files made the way its editor
saves them."""

from formats_standins import StandIn, standin_registry


def default_prompt() -> dict:
    """ComfyUI's default workflow in its API form (as script_examples/basic_api_example.py posts it)."""
    return {
        "3": {"class_type": "KSampler", "inputs": {
            "cfg": 8, "denoise": 1, "latent_image": ["5", 0], "model": ["4", 0], "negative": ["7", 0],
            "positive": ["6", 0], "sampler_name": "euler", "scheduler": "normal", "seed": 8566257, "steps": 20}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"batch_size": 1, "height": 512, "width": 512}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "masterpiece best quality girl"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "bad hands"}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]},
              "_meta": {"title": "Save Image"}},
    }


class IntSource(StandIn):
    """A real (not frontend-only) node with an INT output, like ComfyUI's PrimitiveInt."""

    TYPE = "IntSource"
    OUTPUTS = {"INT": "INT"}


def registry():
    reg = standin_registry()
    reg.add(IntSource)
    return reg


class UiFile:
    """Builds a UI workflow the way ComfyUI's editor saves one: slots on both ends of every link."""

    def __init__(self):
        self.nodes: dict[int, dict] = {}
        self.links: list[list] = []

    def add(self, node_id, kind, widgets=None, inputs=(), outputs=(), mode=0, **extra):
        """inputs: (name, type) or (name, type, widget name); outputs: (name, type)."""
        slots = [{"name": s[0], "type": s[1], "link": None, **({"widget": {"name": s[2]}} if len(s) > 2 else {})}
                 for s in inputs]
        self.nodes[node_id] = {"id": node_id, "type": kind, "pos": [10 * node_id, 20], "size": [200, 100],
                               "flags": {}, "order": len(self.nodes), "mode": mode, "inputs": slots,
                               "outputs": [{"name": n, "type": t, "links": []} for n, t in outputs],
                               "properties": {}, "widgets_values": widgets, **extra}
        return self

    def link(self, origin, origin_slot, target, target_slot):
        link_id = len(self.links) + 1
        kind = self.nodes[origin]["outputs"][origin_slot]["type"]
        self.links.append([link_id, origin, origin_slot, target, target_slot, kind])
        self.nodes[origin]["outputs"][origin_slot]["links"].append(link_id)
        self.nodes[target]["inputs"][target_slot]["link"] = link_id
        return self

    def data(self, version=0.4, **extra):
        links = self.links if version == 0.4 else [
            {"id": i, "origin_id": o, "origin_slot": os, "target_id": t, "target_slot": ts, "type": k}
            for i, o, os, t, ts, k in self.links]
        return {"last_node_id": max(self.nodes, default=0), "last_link_id": len(self.links),
                "nodes": list(self.nodes.values()), "links": links, "groups": [], "config": {}, "extra": {},
                "version": version, **extra}


CHECKPOINT_OUT = (("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE"))
KSAMPLER_IN = (("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
               ("latent_image", "LATENT"))


def txt2img(seed_control="randomize", ksampler_widgets=None) -> UiFile:
    """ComfyUI's default graph, built by hand."""
    ui = UiFile()
    ui.add(4, "CheckpointLoaderSimple", ["model.safetensors"], outputs=CHECKPOINT_OUT)
    ui.add(6, "CLIPTextEncode", ["a cat"], inputs=[("clip", "CLIP")], outputs=[("CONDITIONING", "CONDITIONING")])
    ui.add(7, "CLIPTextEncode", [""], inputs=[("clip", "CLIP")], outputs=[("CONDITIONING", "CONDITIONING")])
    ui.add(5, "EmptyLatentImage", [64, 64, 1], outputs=[("LATENT", "LATENT")])
    ui.add(3, "KSampler", ksampler_widgets or [5, seed_control, 20, 8, "euler", "normal", 1], inputs=KSAMPLER_IN,
           outputs=[("LATENT", "LATENT")])
    ui.add(8, "VAEDecode", [], inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=[("IMAGE", "IMAGE")])
    ui.add(9, "SaveImage", ["out"], inputs=[("images", "IMAGE")])
    for origin, origin_slot, target, target_slot in [(4, 0, 3, 0), (6, 0, 3, 1), (7, 0, 3, 2), (5, 0, 3, 3),
                                                     (4, 1, 6, 0), (4, 1, 7, 0), (3, 0, 8, 0), (4, 2, 8, 1),
                                                     (8, 0, 9, 0)]:
        ui.link(origin, origin_slot, target, target_slot)
    return ui
