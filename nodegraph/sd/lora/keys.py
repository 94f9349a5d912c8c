"""The names LoRA files give our layers: each weight of the UNet and the text encoder under every spelling in use.

Our modules carry the checkpoint's (LDM) names. LoRA trainers name the same layers in other ways: kohya's scripts
flatten a module path with underscores behind `lora_unet_` / `lora_te_`, from the LDM path or from diffusers' path;
diffusers and peft keep diffusers' dotted path (`unet.down_blocks.0...`, `text_encoder.text_model...`), older
diffusers files add `.processor.` before attention projections; LyCORIS as SimpleTuner saves it uses `lycoris_`.
As ComfyUI does, the table is built from our own parameters towards every spelling, so nothing in a file's key has
to be parsed (underscores in flattened names are ambiguous). `lora_te1_` (SDXL's first text encoder, CLIP-L) names
our text encoder too, as ComfyUI maps it for SD 1.x.
"""

from torch import nn

from ..unet import UNetConfig

# A diffusers ResnetBlock2D names its layers differently from the LDM ResBlock.
RESBLOCK_NAMES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                  "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}


def diffusers_unet_blocks(config: UNetConfig) -> dict[str, str]:
    """Our module path of each UNet block -> its path in diffusers' UNet2DConditionModel."""
    levels, per_level = len(config.channel_mult), config.num_res_blocks
    blocks = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
              "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out",
              "middle_block.0": "mid_block.resnets.0", "middle_block.1": "mid_block.attentions.0",
              "middle_block.2": "mid_block.resnets.1"}
    for level in range(levels):
        attention = level in config.attention_levels
        for j in range(per_level):
            block = 1 + level * (per_level + 1) + j
            blocks[f"input_blocks.{block}.0"] = f"down_blocks.{level}.resnets.{j}"
            if attention:
                blocks[f"input_blocks.{block}.1"] = f"down_blocks.{level}.attentions.{j}"
        if level < levels - 1:
            blocks[f"input_blocks.{(level + 1) * (per_level + 1)}.0.op"] = f"down_blocks.{level}.downsamplers.0.conv"
    for up in range(levels):  # diffusers' up_blocks run from the deepest level, as our output_blocks do
        attention = levels - 1 - up in config.attention_levels
        for j in range(per_level + 1):
            block = up * (per_level + 1) + j
            blocks[f"output_blocks.{block}.0"] = f"up_blocks.{up}.resnets.{j}"
            if attention:
                blocks[f"output_blocks.{block}.1"] = f"up_blocks.{up}.attentions.{j}"
            if up < levels - 1 and j == per_level:
                blocks[f"output_blocks.{block}.{2 if attention else 1}.conv"] = f"up_blocks.{up}.upsamplers.0.conv"
    return blocks


def diffusers_unet_path(path: str, blocks: dict[str, str]) -> str | None:
    """diffusers' name of one of our UNet module paths (`input_blocks.1.0.in_layers.2` -> `down_blocks.0.resnets.0.conv1`)."""
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


def text_encoder_lora_names(text_encoder: nn.Module) -> dict[str, str]:
    """LoRA base name -> the module path of the text-encoder weight it changes."""
    names = {}
    for path in weight_paths(text_encoder):  # text_model.encoder.layers.0.self_attn.q_proj, ...
        flat = path.replace(".", "_")
        names["lora_te_" + flat] = path  # kohya
        names["lora_te1_" + flat] = path  # kohya for SDXL's CLIP-L, which is SD 1.x's text encoder
        names["text_encoder." + path] = path  # diffusers / peft, transformers 4 names
        names["text_encoder." + path.removeprefix("text_model.")] = path  # transformers 5 has no text_model level
        names["text_encoders.clip_l.transformer." + path] = path  # ComfyUI's own generic form
    return names


# Key beginnings of a second text encoder (SDXL's OpenCLIP-G): an SD 1.x model has none.
SECOND_TEXT_ENCODER = ("lora_te2_", "text_encoder_2.", "text_encoders.clip_g.")
