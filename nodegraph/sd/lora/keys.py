"""The names LoRA files give our layers: each weight of the UNet and the text encoders under every spelling in use.

Our modules carry the checkpoint's (LDM, OpenCLIP) names. LoRA trainers name the same layers in other ways: kohya's
scripts flatten a module path with underscores behind `lora_unet_` / `lora_te_` (`lora_te1_` / `lora_te2_` for
SDXL's two text encoders), from the LDM path or from diffusers' path; diffusers and peft keep diffusers' dotted path
(`unet.down_blocks.0...`, `text_encoder.text_model...`, `text_encoder_2...`), older diffusers files add
`.processor.` before attention projections; LyCORIS as SimpleTuner saves it uses `lycoris_`. Text encoders are
always named in transformers' CLIPTextModel layout, also SD 2.x's and SDXL's OpenCLIP ones (ComfyUI converts those
to it on loading; we keep the file's layout, so q/k/v map to row blocks of `attn.in_proj_weight`).
As ComfyUI does, the table is built from our own parameters towards every spelling, so nothing in a file's key has
to be parsed (underscores in flattened names are ambiguous).

Which prefix names which text encoder follows ComfyUI (comfy/lora.py model_lora_keys_clip): `lora_te_`, `lora_te1_`
and `text_encoder.` name CLIP-L (SD 1.x, SDXL) or OpenCLIP-H (SD 2.x); `lora_te2_` and `text_encoder_2.` SDXL's
bigG; on the refiner, whose bigG is its only encoder, `lora_te_` and `text_encoder.` name bigG.
"""

from dataclasses import dataclass

from torch import nn

from ..openclip import OpenCLIPTextEncoder
from ..unet import UNetConfig


@dataclass(frozen=True)
class Target:
    """What one LoRA base name changes in a module: the parameter its weight adapter changes and the one its bias
    adapter changes (None: the layer has none), `rows` [start, stop) of them when the layer is a block of a fused
    projection, or the weight's transpose."""

    weight: str
    bias: str | None = None
    rows: tuple[int, int] | None = None
    transposed: bool = False

    def parameter(self, attribute: str) -> str | None:
        return self.weight if attribute == "weight" else self.bias if attribute == "bias" else None


def layer(path: str) -> Target:
    return Target(path + ".weight", path + ".bias")


# A diffusers ResnetBlock2D names its layers differently from the LDM ResBlock.
RESBLOCK_NAMES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                  "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}


def diffusers_unet_blocks(config: UNetConfig) -> dict[str, str]:
    """Our module path of each UNet block -> its path in diffusers' UNet2DConditionModel. A block has an attention
    where it has transformer blocks (SDXL's per-block depths); a middle block without one (distilled SDXL models)
    is two res blocks, diffusers' UNetMidBlock2D."""
    levels, per_level = len(config.channel_mult), config.num_res_blocks
    blocks = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
              "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out",
              "middle_block.0": "mid_block.resnets.0"}
    if config.middle_depth:
        blocks |= {"middle_block.1": "mid_block.attentions.0", "middle_block.2": "mid_block.resnets.1"}
    else:
        blocks["middle_block.1"] = "mid_block.resnets.1"
    if config.adm_in_channels:  # SDXL's label_emb: diffusers' add_embedding (class_embedding in other UNets)
        blocks |= {"label_emb.0.0": "add_embedding.linear_1", "label_emb.0.2": "add_embedding.linear_2"}
    input_depths, output_depths = iter(config.input_depths), iter(config.output_depths)
    for level in range(levels):
        for j in range(per_level):
            block = 1 + level * (per_level + 1) + j
            blocks[f"input_blocks.{block}.0"] = f"down_blocks.{level}.resnets.{j}"
            if next(input_depths):
                blocks[f"input_blocks.{block}.1"] = f"down_blocks.{level}.attentions.{j}"
        if level < levels - 1:
            blocks[f"input_blocks.{(level + 1) * (per_level + 1)}.0.op"] = f"down_blocks.{level}.downsamplers.0.conv"
    for up in range(levels):  # diffusers' up_blocks run from the deepest level, as our output_blocks do
        for j in range(per_level + 1):
            block = up * (per_level + 1) + j
            blocks[f"output_blocks.{block}.0"] = f"up_blocks.{up}.resnets.{j}"
            attention = next(output_depths) > 0
            if attention:
                blocks[f"output_blocks.{block}.1"] = f"up_blocks.{up}.attentions.{j}"
            if up < levels - 1 and j == per_level:
                blocks[f"output_blocks.{block}.{2 if attention else 1}.conv"] = f"up_blocks.{up}.upsamplers.0.conv"
    return blocks


def diffusers_unet_path(path: str, blocks: dict[str, str]) -> str | None:
    """diffusers' name of one of our UNet module paths (`input_blocks.1.0.in_layers.2` ->
    `down_blocks.0.resnets.0.conv1`)."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        block = ".".join(parts[:cut])
        if block in blocks:
            rest = ".".join(parts[cut:])
            if ".resnets." in blocks[block]:
                rest = next((new + rest[len(old):] for old, new in RESBLOCK_NAMES.items()
                             if rest == old or rest.startswith(old + ".")), rest)
            return blocks[block] + ("." + rest if rest else "")
    return None


def weight_paths(module: nn.Module) -> list[str]:
    """The module path of every weight (`...attn1.to_q` for `...attn1.to_q.weight`)."""
    return [name[:-len(".weight")] for name, _ in module.named_parameters() if name.endswith(".weight")]


def unet_lora_names(unet: nn.Module) -> dict[str, str]:
    """LoRA base name (a file key less its adapter suffix) -> the module path of the UNet weight it changes."""
    blocks = diffusers_unet_blocks(unet.config)
    names = {}
    for path in weight_paths(unet):
        names["lora_unet_" + path.replace(".", "_")] = path  # kohya, LDM names
        names["diffusion_model." + path] = path  # ComfyUI's own generic form
        diffusers = diffusers_unet_path(path, blocks)
        if diffusers is None:
            continue
        flat = diffusers.replace(".", "_")
        names["lora_unet_" + flat] = path  # kohya, diffusers names
        names["lycoris_" + flat] = path  # SimpleTuner's LyCORIS files
        processor = diffusers.replace(".to_", ".processor.to_")  # diffusers' attention-processor files
        if processor.endswith(".to_out.0"):
            processor = processor[:-len(".0")]
        for prefix in ("", "unet."):  # diffusers / peft
            names[prefix + diffusers] = path
            names[prefix + processor] = path
    return names


# OpenCLIP's names for transformers' CLIP text layers (the rest of a resblock's path), and the q/k/v blocks
OPENCLIP_LAYERS = {"self_attn.out_proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                   "layer_norm1": "ln_1", "layer_norm2": "ln_2"}
OPENCLIP_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")


def hf_text_layers(text_encoder: nn.Module) -> dict[str, Target]:
    """transformers' CLIPTextModel path of each text-encoder layer (`text_model.encoder.layers.0.self_attn.q_proj`)
    -> what it is in `text_encoder`, which is in that layout already (CLIP-L) or in OpenCLIP's (ViT-H, bigG)."""
    if not isinstance(text_encoder, OpenCLIPTextEncoder):  # transformers' layout: every layer is itself
        return {path: layer(path) for path in weight_paths(text_encoder)}
    width = text_encoder.config.width
    layers = {"text_model.embeddings.token_embedding": Target("token_embedding.weight"),
              "text_model.embeddings.position_embedding": Target("positional_embedding"),
              "text_model.final_layer_norm": layer("ln_final")}
    if text_encoder.config.projection_dim is not None:  # [width, projection]: transformers' linear's transpose
        layers["text_projection"] = Target("text_projection", transposed=True)
    for n in range(len(text_encoder.transformer.resblocks)):
        ours, theirs = f"transformer.resblocks.{n}.", f"text_model.encoder.layers.{n}."
        layers |= {theirs + hf: layer(ours + openclip) for hf, openclip in OPENCLIP_LAYERS.items()}
        for block, hf in enumerate(OPENCLIP_QKV):
            layers[theirs + hf] = Target(ours + "attn.in_proj_weight", ours + "attn.in_proj_bias",
                                         rows=(block * width, (block + 1) * width))
    return layers


def text_encoder_prefixes(name: str, names) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(kohya prefixes, diffusers/peft prefixes) naming text encoder `name` of a model with encoders `names`."""
    if name == "clip_g" and "clip_l" in names:  # SDXL base: bigG is the second encoder
        return ("lora_te2_",), ("text_encoder_2.",)
    if name == "clip_g":  # the refiner: bigG alone
        return ("lora_te_",), ("text_encoder.",)
    return ("lora_te_", "lora_te1_"), ("text_encoder.",)  # CLIP-L (SD 1.x, SDXL) or OpenCLIP-H (SD 2.x)


def text_encoder_lora_names(text_encoder: nn.Module, name: str = "clip_l", names=("clip_l",)) -> dict[str, Target]:
    """LoRA base name -> what it changes in text encoder `name` (ComfyUI's: clip_l, clip_h, clip_g) of a model whose
    encoders are `names`."""
    kohya, dotted = text_encoder_prefixes(name, names)
    table = {}
    for path, target in hf_text_layers(text_encoder).items():
        for prefix in kohya:
            table[prefix + path.replace(".", "_")] = target
        for prefix in dotted:  # diffusers / peft, transformers 4 names; transformers 5 has no text_model level
            table[prefix + path] = target
            table[prefix + path.removeprefix("text_model.")] = target
        table[f"text_encoders.{name}.transformer.{path}"] = target  # ComfyUI's own generic form
    return table


def missing_text_encoder_prefixes(names) -> dict[str, str]:
    """Key beginnings of text encoders a model with encoders `names` lacks -> what that encoder is."""
    missing = {f"text_encoders.{other}.": other for other in ("clip_l", "clip_h", "clip_g") if other not in names}
    if len(names) < 2:
        missing |= {"lora_te2_": "a second text encoder", "text_encoder_2.": "a second text encoder"}
    return missing
