"""`python -m tools.prepare objects DIR OUT`: the object bank O (Sec. 3.3) packed once (issue 26).

A loader worker reading a folder bank decodes, crops and resizes a PNG for every object of every
clip (a 512 px PIN cut-out: ~10 ms of CPU each). Packed, every object is read once: cropped to its
alpha box and capped at PACK_TILE px as motion.ObjectBank does, its colour premultiplied by alpha,
and stored in one .npy of records that data.PackedBank memory-maps, so all workers share one copy
in the page cache and hold nothing of it in their own memory:

    records: (count,) of (size: uint16 (h, w), rgba: uint8 (tile, tile, 4), premultiplied RGBA,
             the object in the top-left h x w corner, zeros elsewhere)
    OUT.names.txt: the objects' paths relative to DIR, one per line, in bank order (for people)

np.load(OUT, mmap_mode="r") reads it anywhere. What differs from reading the folder: objects larger
than the tile are capped at 192 px instead of ObjectBank's 256 (the overlay draws at most 128 px at
224, so 192 serves up to --img-size 336 without upsampling a stored object), and colour under
partial alpha passes through 8-bit premultiplication (docs/data.md measures both). A library of the
toolbox: run it through `python -m tools.prepare objects`.
"""
import multiprocessing
import os
import struct
from pathlib import Path

import numpy as np

import motion

PACK_TILE = 192   # 60,687 PIN objects: 60,687 x 192 x 192 x 4 bytes = 8.9 GB


def record_dtype(tile):
    return np.dtype([("size", "<u2", (2,)), ("rgba", "u1", (tile, tile, 4))])


def npy_header(dtype, count, length=4096):
    """A .npy (version 2) header for `count` records, padded to `length` bytes, so that the count
    can be rewritten in place once the bad PNGs are known (the records stay where they are)."""
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                 "shape": (count,)}).encode("latin1")
    return b"\x93NUMPY\x02\x00" + struct.pack("<I", length - 12) + text.ljust(length - 13) + b"\n"


_FOLDER = []   # the folder bank a packing worker reads from (_serve)


def _serve(bank):
    _FOLDER[:] = [bank]


def _load(i):
    """Pool worker: object i of the folder bank, premultiplied -> (i, array or None, error)."""
    bank = _FOLDER[0]
    try:
        return i, motion.premultiply(bank[i]), None
    except Exception as e:   # noqa: BLE001 -- a bad PNG is reported by name, not fatal
        text = str(e)
        return i, None, text if str(bank.files[i]) in text else \
            f"{bank.files[i]}: {type(e).__name__}: {text}"


def pack_objects(folder, out, tile=PACK_TILE, list_file=None, workers=1, progress=None):
    """Pack a folder bank (motion.ObjectBank's rules: every PNG, or list_file's, sorted) into the
    .npy `out`, objects capped at `tile` px. A bad PNG (no alpha, unreadable, fully transparent)
    is left out and named. Written to a temporary file and renamed: `out` exists only when whole.
    progress(done, total) is called as it goes. -> dict(count, bad=[errors naming the file])."""
    import motion
    bank = motion.ObjectBank(folder, max_side=tile, list_file=list_file)
    out, dtype, names, bad = Path(out), record_dtype(tile), [], []
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f, multiprocessing.Pool(max(1, workers), _serve, (bank,)) as pool:
            f.write(npy_header(dtype, len(bank)))   # the count is rewritten at the end
            for i, obj, err in pool.imap(_load, range(len(bank)), chunksize=16):
                if err:
                    bad.append(err)
                else:
                    record = np.zeros((), dtype)
                    record["size"] = obj.shape[:2]
                    record["rgba"][:obj.shape[0], :obj.shape[1]] = obj
                    f.write(record.tobytes())
                    names.append(bank.files[i].relative_to(bank.root).as_posix())
                if progress:
                    progress(i + 1, len(bank))
            if not names:
                raise ValueError(f"{folder}: no usable object PNG ({len(bad)} bad)")
            f.seek(0)
            f.write(npy_header(dtype, len(names)))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    Path(f"{out}.names.txt").write_text("".join(n + "\n" for n in names), encoding="utf-8")
    return {"count": len(names), "bad": bad}
