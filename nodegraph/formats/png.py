"""The workflows a PNG carries in its text chunks: ours ("workflow", native) and ComfyUI's ("prompt", its API
format, exactly what ran; "workflow", its UI file).

The chunks are read directly (tEXt, zTXt, iTXt) without decoding the picture: ComfyUI writes its chunks as plain
tEXt, other tools compress them, and a large UI workflow can exceed the text limit of PIL's reader.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WORKFLOW_CHUNKS = ("prompt", "workflow")  # the text chunks that hold workflows, in ComfyUI's names
MAX_TEXT_BYTES = 64 * 2**20  # a decompressed chunk larger than this is not a workflow: refuse it (zip bombs)


def is_png(head: bytes) -> bool:
    return head.startswith(PNG_SIGNATURE)


def png_text_chunks(source: Path | str | bytes) -> dict[str, str]:
    """Every text chunk of a PNG by keyword (the first of a repeated keyword wins); ValueError if it is no PNG."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if not is_png(data):
        raise ValueError("not a PNG file")
    chunks: dict[str, str] = {}
    position = len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        body = data[position + 8 : position + 8 + length]
        position += 12 + length  # length, type, body, CRC
        if kind == b"IEND":
            break
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            keyword, text = _text_chunk(kind, body)
            if keyword is not None:
                chunks.setdefault(keyword, text)
    return chunks


def png_workflows(source: Path | str | bytes) -> dict[str, dict]:
    """The workflow chunks of a PNG ("prompt", "workflow") that hold a JSON object, parsed; the others left out."""
    found = {}
    for name, text in png_text_chunks(source).items():
        if name not in WORKFLOW_CHUNKS:
            continue
        try:
            parsed = json.loads(text)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            found[name] = parsed
    return found


def _text_chunk(kind: bytes, body: bytes) -> tuple[str | None, str]:
    keyword, _, rest = body.partition(b"\0")
    try:
        name = keyword.decode("latin-1")
        if kind == b"tEXt":
            return name, rest.decode("latin-1")
        if kind == b"zTXt":  # compression method byte, then zlib data
            return name, _inflate(rest[1:]).decode("latin-1")
        compressed = rest[0]  # iTXt: flag, method, language\0, translated keyword\0, text
        _language, _, rest = rest[2:].partition(b"\0")
        _translated, _, text = rest.partition(b"\0")
        return name, (_inflate(text) if compressed else text).decode("utf-8")
    except (IndexError, UnicodeDecodeError, zlib.error, ValueError):
        return None, ""  # a damaged chunk is skipped, as image viewers skip it


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    text = inflater.decompress(data, MAX_TEXT_BYTES)
    if inflater.unconsumed_tail:
        raise ValueError("text chunk too large")
    return text
