"""Records of a W&B offline run (``run-<id>.wandb``), decoded with wandb's own protobuf schema.

wandb 0.31 no longer ships a Python reader for its transaction log (its core is in Go), so this
reads the framing -- the LevelDB log format wandb documents: a 7-byte header (":W&B", magic 0xBEE1,
version), 32 KiB blocks, chunks with a (crc32, length, type) header -- and hands every record to
``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from typing import Any, Iterator

BLOCK = 32768
CHUNK_HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes) -> Iterator[bytes]:
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, f"not a W&B transaction log (header {data[:7]!r})"
    pos, pending = 7, b""
    while pos + CHUNK_HEADER.size <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK_HEADER.size:
            pos += left_in_block  # block trailer padding
            continue
        crc, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        pos += CHUNK_HEADER.size
        if length == 0 and kind == 0:
            break
        body = data[pos:pos + length]
        pos += length
        assert zlib.crc32(bytes([kind]) + body) & 0xFFFFFFFF == crc, "corrupt chunk"
        if kind == FULL:
            yield body
        elif kind == FIRST:
            pending = body
        elif kind == MIDDLE:
            pending += body
        elif kind == LAST:
            yield pending + body
            pending = b""


def _records(path: str) -> list[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    with open(path, "rb") as f:
        data = f.read()
    records = []
    for payload in _payloads(data):
        record = pb.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def read_run(path: str, timeout: float = 60.0) -> dict[str, Any]:
    """{"history": [{key: value, "_step": n}], "config": {key: value}} of one offline run file.

    wandb's service (wandb-core, its own process) writes the transaction log after ``run.finish()``
    has returned -- on a loaded machine the file can still hold only its 7-byte header then. So this
    waits (up to ``timeout`` seconds) for the run's ``exit`` record, written last."""
    deadline = time.monotonic() + timeout
    records = _records(path)
    while not any(r.WhichOneof("record_type") == "exit" for r in records) and time.monotonic() < deadline:
        time.sleep(0.2)
        records = _records(path)
    history: list[dict[str, Any]] = []
    config: dict[str, Any] = {}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "run":
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
    return {"history": history, "config": config}
