"""Train the demo embedding: `embedding:demo-sunset`, one prompt word for a picture the demo checkpoint has no word
for, a large orange circle low on a black background (a sun going down); on the CPU, reproducibly.

    python tools/train_demo_embedding.py            # writes nodegraph/embeddings/demo-sunset.safetensors

Textual inversion: the demo checkpoint (nodegraph/checkpoints/demo-shapes.safetensors) stays wholly frozen and only
the embedding's vectors learn, in the place of the prompt word `embedding:demo-sunset` (one token slot per vector,
as ComfyUI and A1111 put them). A frozen model can only be steered to pictures it can already draw: the demo's VAE
cannot even encode a colour or a white shape it was not trained on, and its UNet, steered towards shapes bigger than
"large" or towards the top left corner (two of its places at once), kept to what it learnt (about the size of
"large"; the top or the left, never both). So the embedding teaches a word, as textual inversion usually does (a
subject, a style): the prompt "embedding:demo-sunset" gives the whole scene, which the demo model otherwise draws
only when every part of it is spelled out ("a large orange circle at the bottom on a black background").
Stages, all seeded:
1. Pictures of the scene from the demo's grammar (tools/shapes.py, with its jitter of place, size and shade),
   captioned "embedding:demo-sunset": the word is the whole prompt.
2. The frozen VAE encodes them once.
3. The vectors, all started from the token "a" (which says nothing of the scene), learn the demo's own objective
   (noise prediction on SD's schedule), the gradient flowing through the frozen UNet and text encoder: 400 steps of
   32 pictures, AdamW with a one-cycle learning rate up to 1e-2; about 2 minutes on one thread.
The file is A1111's safetensors form, {"emb_params": [vectors, 64]}. Then pictures are sampled with and without
the embedding (the workflows' KSampler setting) and classified.
"""

import argparse
import random
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.nn.attention import SDPBackend, sdpa_kernel

import demo_finetune as finetune
import shapes
from demo_quality import classify, sees_sunset

NAME = "demo-sunset"
WORD = f"embedding:{NAME}"  # how a prompt names it (ComfyUI's syntax)
DEFAULT_OUT = finetune.PACKAGE / "embeddings" / f"{NAME}.safetensors"
SCENE = shapes.Scene(colour="orange", shape="circle", background="black", size="large", position="at the bottom")
START_WORD = "a"
# Token ids that stand for the embedding's vectors while training: ids no demo caption uses, replaced by the vectors
# before the text encoder sees them (as a prompt's `embedding:` word is replaced by its vectors).
PLACEHOLDERS = [49400, 49401, 49402, 49403]
# The check's prompts, each sampled with seeds 0-11: the embedding; and prompts without it.
WITH_EMBEDDING = [WORD]
WITHOUT_EMBEDDING = ["", "a sunset", "a circle"]


def words_of(prompt: str, vectors: int) -> list:
    """A prompt as words, the embedding's word as the placeholder ids of its vectors."""
    return [PLACEHOLDERS[:vectors] if word == WORD else word for word in prompt.split()]


class SplicedTokens:
    """While active, the text encoder's token embedding gives `vectors[i]` wherever a prompt has PLACEHOLDERS[i]."""

    def __init__(self, sd, vectors: torch.Tensor):
        self.embedding, self.vectors = sd.text_encoder.text_model.embeddings.token_embedding, vectors

    def __enter__(self):
        self.hook = self.embedding.register_forward_hook(self.splice)
        return self

    def __exit__(self, *exc):
        self.hook.remove()

    def splice(self, module, inputs, output):
        ids = inputs[0]
        for i, vector in enumerate(self.vectors):
            output = torch.where((ids == PLACEHOLDERS[i])[..., None], vector.to(output.dtype), output)
        return output


@torch.no_grad()
def check(sd, path: Path, seeds: int = 12) -> dict:
    """How many of the pictures of each check prompt (seeds 0..seeds-1) the classifier sees as the sunset."""
    vectors = load_file(str(path))["emb_params"].float()
    figures = {}
    for prompt in WITH_EMBEDDING + WITHOUT_EMBEDDING:
        with SplicedTokens(sd, vectors):
            context = sd.text_encoder(torch.tensor([finetune.token_ids(sd, words_of(prompt, len(vectors)))])).float()
        pictures = finetune.sample_pictures(sd, [context] * seeds, list(range(seeds)))
        figures[repr(prompt)] = f"{sum(sees_sunset(classify(p)) for p in pictures)}/{seeds}"
    return figures


def train_embedding(sd, args) -> torch.Tensor:
    rng = random.Random(args.seed)
    images = finetune.pictures([SCENE] * args.images, 64, rng)
    latents = finetune.latents_of(sd, images)
    ids = torch.tensor([finetune.token_ids(sd, words_of(WORD, args.vectors))])
    print(f"{len(images)} pictures of {SCENE.caption!r}, captioned {WORD!r}")

    start = sd.text_encoder.text_model.embeddings.token_embedding.weight[sd.tokenizer.tokens(START_WORD)[0]]
    vectors = start.detach().clone().repeat(args.vectors, 1).requires_grad_(True)
    generator = torch.Generator().manual_seed(args.seed)
    alphas = finetune.schedule_alphas()

    def step_loss(step: int) -> torch.Tensor:
        index = torch.randint(len(latents), (args.batch_size,), generator=generator)
        with SplicedTokens(sd, vectors), torch.autocast("cpu", dtype=torch.bfloat16):
            context = sd.text_encoder(ids.expand(len(index), -1))
        return finetune.denoising_loss(sd.unet, latents[index], context, generator, alphas)

    with sdpa_kernel(SDPBackend.MATH):  # faster than the flash kernel for these tiny heads on the CPU
        finetune.train([vectors], step_loss, args.steps, args.lr, "embedding")
    return vectors.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--checkpoint", type=Path, default=finetune.DEMO_CHECKPOINT)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--vectors", type=int, default=4, choices=range(1, len(PLACEHOLDERS) + 1))
    finetune.add_run_arguments(parser, lr=1e-2)
    args = parser.parse_args()
    started = time.time()
    sd = finetune.start_run(args)
    if not args.check_only:
        vectors = train_embedding(sd, args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        save_file({"emb_params": vectors.contiguous()}, str(args.out),
                  metadata={"nodegraph": f"{NAME}: {SCENE.caption}; see tools/train_demo_embedding.py"})
        print(f"wrote {args.out} ({len(vectors)} vectors) in {(time.time() - started) / 60:.1f} min")
    if not args.no_check:
        for prompt, seen in check(sd, args.out).items():
            print(f"{prompt}: the sunset in {seen}")


if __name__ == "__main__":
    main()
