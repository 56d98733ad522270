"""The object bank O (Sec. 3.3) packed once: every object PNG decoded, cropped to its alpha box and
capped at one tile side, stored premultiplied in one memory-mapped file (issue 26).

    python -m tools.prepare objects /data/pin /data/pin.bank --object-list object_instances.txt
    python train.py ... --objects /data/pin.bank

A loader worker reading a folder bank decodes, crops and resizes a PNG for every object of every
clip (a 512 px PIN cut-out: ~10 ms of CPU each). From a packed bank it copies a tile: the page cache
shares the tiles between all workers, and a worker holds only the sizes (4 bytes per object).
motion.ObjectBank(path) returns a PackedBank when path is a file, with the same items (RGBA uint8
(h, w, 4), cropped to alpha), so motion.overlay reads either. What differs from the folder: objects
are capped at the tile side (192 px) instead of ObjectBank's 256, and colour under partial alpha
goes through 8-bit premultiplication (docs/data.md measures both).

The file: a 32-byte header (PACK_MAGIC, then uint64 little-endian: the meta's offset, its length and
the file's total size), the tiles from byte 4096 (uint8 (count, tile, tile, 4), premultiplied RGBA,
object i in the top-left sizes[i] corner, zeros elsewhere), then the sizes (uint16 (count, 2): h,
w), the names (UTF-8, one path relative to the folder per line) and the meta (JSON: version, tile,
count, tiles_at, sizes_at, names_at, names_length, source). The header is written last, so a file
whose writer stopped is no bank, and a copy cut short fails its size check.
"""
import json
import multiprocessing
import os
import struct
from pathlib import Path

import numpy as np

PACK_MAGIC, PACK_HEADER, TILES_AT = b"SMILEOBJ", struct.Struct("<8sQQQ"), 4096
# The overlay draws P x Q up to 128 px at 224 (Sec. 4.1), scaled by min(H, W) / 224: a 192 px tile
# serves --img-size up to 336 without upsampling a stored object. 60,687 objects: 8.9 GB.
PACK_TILE = 192


def read_header(path):
    """A packed bank's meta (dict) and sizes (int64 (count, 2): h, w). A file that is not a bank,
    or is cut short (a copy that stopped), is a ValueError naming the file and the fix."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(PACK_HEADER.size)
        if not head or PACK_MAGIC[:len(head)] != head[:len(PACK_MAGIC)]:
            raise ValueError(f"{path} is neither a folder nor a packed object bank: pack a folder "
                             f"of PNGs with python -m tools.prepare objects DIR {path}")
        total = PACK_HEADER.unpack(head)[3] if len(head) == PACK_HEADER.size else None
        if size != total:
            raise ValueError(f"{path} is truncated ({size} of {total or 'more'} bytes): repack it "
                             f"with python -m tools.prepare objects DIR {path}, or copy it again")
        _, meta_at, meta_length, _ = PACK_HEADER.unpack(head)
        f.seek(meta_at)
        meta = json.loads(f.read(meta_length))
        f.seek(meta["sizes_at"])
        sizes = np.frombuffer(f.read(4 * meta["count"]), "<u2").reshape(-1, 2).astype(np.int64)
    return meta, sizes


class PackedBank:
    """A packed bank (read_header's format), memory-mapped on first use in each process."""

    def __init__(self, path, list_file=None):
        if list_file:
            raise ValueError(f"{path} is a packed bank: give --object-list when packing (python "
                             f"-m tools.prepare objects DIR OUT --object-list FILE)")
        self.path, self.tiles = Path(path), None
        self.meta, self.sizes = read_header(self.path)

    def __len__(self):
        return len(self.sizes)

    def __getstate__(self):   # a pickled bank maps the file again; it never copies the tiles
        return {**self.__dict__, "tiles": None}

    def premultiplied(self, i):
        """Object i, uint8 (h, w, 4), colour premultiplied by alpha: a view of the mapped file."""
        if self.tiles is None:
            m = self.meta
            self.tiles = np.memmap(self.path, np.uint8, "r", offset=m["tiles_at"],
                                   shape=(m["count"], m["tile"], m["tile"], 4))
        h, w = self.sizes[i]
        return self.tiles[i, :h, :w]

    def __getitem__(self, i):
        """Object i as a folder bank gives it: RGBA uint8 (h, w, 4), colour = premultiplied /
        alpha."""
        x = self.premultiplied(i).astype(np.float32)
        x[..., :3] *= 255 / np.maximum(x[..., 3:], 1)
        return np.clip(np.round(x), 0, 255).astype(np.uint8)

    def names(self):
        """The objects' paths relative to the packed folder, in bank order."""
        m = self.meta
        with open(self.path, "rb") as f:
            f.seek(m["names_at"])
            return f.read(m["names_length"]).decode("utf-8").split("\n")


# ----------------------------------------------------------------------------- packing

def premultiply(rgba):
    """RGBA uint8 (h, w, 4) -> the same with colour premultiplied by alpha, rounded."""
    x = rgba.astype(np.uint32)
    x[..., :3] = (x[..., :3] * x[..., 3:] + 127) // 255
    return x.astype(np.uint8)


_FOLDER = None   # the folder bank a packing worker reads from (set by _serve)


def _serve(bank):
    global _FOLDER
    _FOLDER = bank


def _load(i):
    """Pool worker: object i of the folder bank, premultiplied -> (i, array or None, error)."""
    try:
        return i, premultiply(_FOLDER[i]), None
    except Exception as e:   # noqa: BLE001 -- a bad PNG is reported by name, not fatal
        return i, None, str(e) if str(_FOLDER.files[i]) in str(e) else \
            f"{_FOLDER.files[i]}: {type(e).__name__}: {e}"


def pack_objects(folder, out, tile=PACK_TILE, list_file=None, workers=1, progress=None):
    """Pack a folder bank (motion.ObjectBank's rules: every PNG, or list_file's, sorted) into the
    file out, objects capped at `tile` px. A bad PNG (no alpha, unreadable, fully transparent) is
    left out and reported. Written to a temporary file and renamed. progress(done, total) is called
    as it goes. -> dict(count, bad=[error naming the file])."""
    import motion
    bank = motion.ObjectBank(folder, max_side=tile, list_file=list_file)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    sizes, names, bad = [], [], []
    try:
        with open(tmp, "wb") as f, multiprocessing.Pool(max(1, workers), _serve, (bank,)) as pool:
            f.write(bytes(TILES_AT))   # the header comes last
            for i, obj, err in pool.imap(_load, range(len(bank)), chunksize=16):
                if err:
                    bad.append(err)
                else:
                    block = np.zeros((tile, tile, 4), np.uint8)
                    block[:obj.shape[0], :obj.shape[1]] = obj
                    f.write(block.tobytes())
                    sizes.append(obj.shape[:2])
                    names.append(bank.files[i].relative_to(bank.root).as_posix())
                if progress:
                    progress(i + 1, len(bank))
            if not sizes:
                raise ValueError(f"{folder}: no usable object PNG ({len(bad)} bad)")
            meta = dict(version=1, tile=tile, count=len(sizes), tiles_at=TILES_AT,
                        sizes_at=f.tell(), source=str(folder))
            f.write(np.asarray(sizes, "<u2").tobytes())
            text = "\n".join(names).encode("utf-8")
            meta.update(names_at=f.tell(), names_length=len(text))
            f.write(text)
            meta_at, blob = f.tell(), json.dumps(meta).encode("utf-8")
            f.write(blob)
            total = f.tell()
            f.seek(0)
            f.write(PACK_HEADER.pack(PACK_MAGIC, meta_at, len(blob), total))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"count": len(sizes), "bad": bad}
