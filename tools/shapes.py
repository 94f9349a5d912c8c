"""Pictures of simple shapes with captions from a small grammar: the training data of the demo checkpoint.

"a red circle on a white background", "a small blue triangle at the top left on a black background", ...
Everything is drawn from a seeded generator, so a given seed always gives the same data set.
"""

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {  # name -> RGB
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220), "yellow": (240, 220, 30),
    "purple": (140, 40, 180), "orange": (245, 140, 20), "pink": (245, 120, 190), "cyan": (30, 200, 220),
}
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15), "gray": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.28, "": 0.45, "large": 0.62}  # side of the shape's box as a fraction of the image
POSITIONS = {  # name -> centre of the shape's box, as fractions of the image
    "": (0.5, 0.5), "at the top": (0.5, 0.28), "at the bottom": (0.5, 0.72), "on the left": (0.28, 0.5),
    "on the right": (0.72, 0.5),
}


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    background: str
    size: str = ""
    position: str = ""

    @property
    def caption(self) -> str:
        words = ["a", self.size, self.colour, self.shape, self.position, "on a", self.background, "background"]
        return " ".join(word for word in words if word)


def random_scene(rng: random.Random) -> Scene:
    background = rng.choice(list(BACKGROUNDS))
    return Scene(colour=rng.choice(list(COLOURS)), shape=rng.choice(SHAPES), background=background,
                 size=rng.choice(list(SIZES)), position=rng.choice(list(POSITIONS)))


def draw(scene: Scene, resolution: int, rng: random.Random | None = None) -> Image.Image:
    """The scene as an RGB image; `rng` adds small jitter of place, size and shade so no two pictures are alike."""
    jitter = (lambda spread: rng.uniform(-spread, spread)) if rng else (lambda spread: 0.0)
    image = Image.new("RGB", (resolution, resolution), BACKGROUNDS[scene.background])
    canvas = ImageDraw.Draw(image)
    side = SIZES[scene.size] * (1 + jitter(0.12)) * resolution
    cx, cy = ((f + jitter(0.04)) * resolution for f in POSITIONS[scene.position])
    colour = tuple(int(np.clip(c + jitter(12), 0, 255)) for c in COLOURS[scene.colour])
    box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    if scene.shape == "circle":
        canvas.ellipse(box, fill=colour)
    elif scene.shape == "square":
        canvas.rectangle(box, fill=colour)
    else:
        canvas.polygon([(cx, box[1]), (box[2], box[3]), (box[0], box[3])], fill=colour)
    return image


def dataset(count: int, resolution: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """`count` pictures as uint8 [N,H,W,3] and their captions."""
    rng = random.Random(seed)
    scenes = [random_scene(rng) for _ in range(count)]
    pixels = np.stack([np.asarray(draw(scene, resolution, rng)) for scene in scenes])
    return pixels, [scene.caption for scene in scenes]
