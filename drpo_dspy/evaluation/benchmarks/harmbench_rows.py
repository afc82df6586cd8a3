"""HarmBench's behaviours file without its contextual rows, cut byte for byte from the upstream CSV.

The upstream ``harmbench_behaviors_text_all.csv`` carries long third-party passages (Wikipedia excerpts, paper
excerpts, source code) in the ``ContextString`` of its 100 ``contextual`` rows. The package ships the file with
those rows removed and every other byte unchanged (header, standard and copyright rows, their mixed line endings);
:func:`drop_contextual_rows` is the exact transformation, so the shipped file can be re-derived from upstream.
"""

from __future__ import annotations

import csv
import io

CONTEXTUAL = "contextual"


def split_records(raw: bytes) -> list[bytes]:
    """The CSV's records as raw byte spans (a record ends at a line end outside quotes)."""
    records, start, quoted = [], 0, False
    for i, byte in enumerate(raw):
        if byte == 0x22:  # '"': escaped quotes ("") toggle twice, so parity tells inside/outside
            quoted = not quoted
        elif byte == 0x0A and not quoted:
            records.append(raw[start:i + 1])
            start = i + 1
    if start < len(raw):
        records.append(raw[start:])
    return records


def _fields(record: bytes) -> list[str]:
    return next(csv.reader(io.StringIO(record.decode("utf-8"), newline="")))


def drop_contextual_rows(raw: bytes) -> bytes:
    """``raw`` without the rows whose ``FunctionalCategory`` is ``contextual``; all other bytes unchanged.

    Every kept record keeps its own line ending; upstream's last row is contextual, so the result ends with the
    line ending of the last kept row while upstream has no final newline.
    """
    records = split_records(raw)
    header = _fields(records[0])
    column = header.index("FunctionalCategory")
    kept = [records[0]] + [r for r in records[1:] if _fields(r)[column] != CONTEXTUAL]
    return b"".join(kept)
