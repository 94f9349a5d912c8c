"""LoRA and its relatives (LoCon, LoHa, LoKr, DoRA) as patches over a loaded model of any family we run.

    tensors = read_lora_file(path)                        # file.py: every tensor, as stored
    patches = match_lora(path, tensors, sd.unet, sd.text_encoders)  # match.py: adapter per parameter, checked
    unet = patch_module(sd.unet, patches.unet, 0.8)       # patch.py: a view sharing all unchanged tensors
    clip_g = patch_module(sd.text_encoders["clip_g"], patches.text_encoders["clip_g"], 0.8)

keys.py knows how each file format names our layers; adapters.py what each kind of entry adds to a weight.
"""

from .adapters import Adapter, Joined, LoHa, LoKr, LoRA, Placed, weight_decompose
from .file import LoraError, read_lora_file
from .match import LoraPatches, match_lora
from .patch import PatchRecord, patch_module, patch_record, unpatched

__all__ = ["Adapter", "Joined", "LoHa", "LoKr", "LoRA", "LoraError", "LoraPatches", "PatchRecord", "Placed",
           "match_lora", "patch_module", "patch_record", "read_lora_file", "unpatched", "weight_decompose"]
