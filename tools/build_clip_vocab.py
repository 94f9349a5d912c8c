"""Rebuild the CLIP BPE files SD 1.x ships (vocab.json, merges.txt) from OpenAI's bpe_simple_vocab_16e6.txt.gz.

The .gz ships inside PyPI packages such as open-clip-torch (open_clip/) and clip-anytorch (clip/):

    pip download --no-deps open-clip-torch==3.3.0 -d /tmp/oc
    python tools/build_clip_vocab.py /tmp/oc/open_clip_torch-3.3.0-py3-none-any.whl

Accepts the .gz itself or a wheel that contains it. Writes nodegraph/sd/vocab/ and fails unless both files are
byte-identical (by sha256) to the ones published with SD 1.x.
"""

import argparse
import gzip
import hashlib
import json
import sys
import zipfile
from pathlib import Path

SOURCE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
EXPECTED_SHA256 = {
    "vocab.json": "e089ad92ba36837a0d31433e555c8f45fe601ab5c221d4f607ded32d9f7a4349",
    "merges.txt": "9fd691f7c8039210e0fced15865466c65820d09b63988b0174bfe25de299051a",
}
MERGE_COUNT = 49152 - 256 - 2  # CLIP keeps this many merges: a 49,408-token vocab in all
OUT_DIR = Path(__file__).resolve().parent.parent / "nodegraph" / "sd" / "vocab"


def read_source(path: Path) -> bytes:
    if path.suffix == ".whl" or zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as wheel:
            name = next(n for n in wheel.namelist() if n.endswith("bpe_simple_vocab_16e6.txt.gz"))
            raw = wheel.read(name)
    else:
        raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SOURCE_SHA256:
        sys.exit(f"{path}: sha256 {digest} is not that of bpe_simple_vocab_16e6.txt.gz ({SOURCE_SHA256})")
    return gzip.decompress(raw)


def byte_unicode_chars() -> list[str]:
    """GPT-2's reversible byte -> printable unicode table, in CLIP's order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def build(text: str) -> tuple[bytes, bytes]:
    merges = text.split("\n")[1 : MERGE_COUNT + 1]
    chars = byte_unicode_chars()
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    vocab_json = json.dumps(vocab, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    merges_txt = "#version: 0.2\n" + "\n".join(merges) + "\n"
    return vocab_json.encode("utf-8"), merges_txt.encode("utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="bpe_simple_vocab_16e6.txt.gz, or a wheel containing it")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    vocab_json, merges_txt = build(read_source(args.source).decode("utf-8"))
    for name, data in (("vocab.json", vocab_json), ("merges.txt", merges_txt)):
        digest = hashlib.sha256(data).hexdigest()
        print(f"{name}: {len(data)} bytes, sha256 {digest}")
        if digest != EXPECTED_SHA256[name]:
            sys.exit(f"{name}: sha256 differs from SD 1.x's ({EXPECTED_SHA256[name]})")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vocab.json").write_bytes(vocab_json)
    (args.out / "merges.txt").write_bytes(merges_txt)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
