#!/usr/bin/env python3
"""Deterministic data set for bench/files.sh (Python 3 standard library only).

    gen_dataset.py plan  --scale S --seed N        print the planned v1/v2 figures as JSON
    gen_dataset.py v1    --scale S --seed N DIR    write version 1 into DIR (must not exist)
    gen_dataset.py v2    --scale S --seed N DIR    turn DIR (a copy of v1) into version 2
    gen_dataset.py count DIR                       count files and bytes under DIR (JSON)

Same scale and seed give the same bytes, names and mtimes on every run: the
layout comes from random.Random(seed) using only random() (whose sequence
Python guarantees), random bytes come from SHAKE-256 keyed by seed, path and
block number, and text is sampled from seeded pools of log and CSV lines.
"""
import argparse
import hashlib
import json
import math
import os
import random
import sys

KiB = 1024
MiB = 1024 * KiB
BLOCK = 4 * MiB  # generate and write in blocks of this size

V1_MTIME = 1704067200  # 2024-01-01T00:00:00Z, plus the file's index in seconds
V2_MTIME = 1719792000  # 2024-07-01T00:00:00Z, for everything v2 touches

# Figures at scale 1.0 (counts and totals are multiplied by the scale).
SMALL_FILES = 102_400          # 100 B .. 16 KiB, log-uniform, ~100 per directory
SMALL_MIN, SMALL_MAX = 100, 16 * KiB
FILES_PER_DIR = 100
DIRS_PER_TOP = 32
TEXT_TOTAL = 640 * MiB         # compressible log/CSV files, 16 KiB .. 16 MiB
TEXT_MIN, TEXT_MAX = 16 * KiB, 16 * MiB
BLOB_TOTAL = 512 * MiB         # incompressible files, 64 KiB .. 32 MiB
BLOB_MIN, BLOB_MAX = 64 * KiB, 32 * MiB
BIG_SIZE = 256 * MiB           # big/random.img, big/text.log, big/mixed.img

# v2 changes (about 5 % of the bytes are new or rewritten).
V2_SMALL_PATCH, V2_SMALL_APPEND, V2_SMALL_DELETE = 0.02, 0.01, 0.005
V2_NEW_SMALL = 1024
V2_TEXT_APPEND = 0.15          # share of text files that grow by 2..10 %
V2_BLOB_DELETE = 0.03
V2_NEW_BLOBS = 80 * MiB
V2_BIG_PATCH = 2 * MiB         # 3 regions in random.img, 2 in text.log (half size)
V2_BIG_APPEND = 8 * MiB        # appended to text.log
V2_BIG_INSERT = 1 * MiB        # inserted in the middle of mixed.img (shifts the rest)

EXT = {"log": "txt", "csv": "csv", "random": "bin"}


# ---------------------------------------------------------------- randomness

def uniform_int(r, lo, hi):
    return lo + int(r.random() * (hi - lo + 1))


def log_uniform(r, lo, hi):
    x = int(math.exp(math.log(lo) + r.random() * (math.log(hi) - math.log(lo))))
    return min(hi, max(lo, x))


def pick(r, seq):
    return seq[int(r.random() * len(seq))]


def pick_skewed(r, seq):
    """Like pick, but early elements are much more frequent (as words in text)."""
    return seq[int(r.random() ** 3 * len(seq))]


def scaled(n, scale, minimum=1):
    return max(minimum, int(round(n * scale)))


# ---------------------------------------------------------------- content

class Content:
    """Byte streams for the kinds log, csv, random, zero and mixed."""

    def __init__(self, seed):
        self.seed = seed
        r = random.Random(f"lifeboat-bench:{seed}:pools")
        self.words = self._words(r, 2048)
        self.pools = {"log": self._log_pool(r, 65536), "csv": self._csv_pool(r, 32768)}

    @staticmethod
    def _words(r, n):
        cons, vows = "bcdfghklmnprstvz", "aeiou"
        words = set()
        while len(words) < n:
            words.add("".join(pick(r, cons) + pick(r, vows) for _ in range(uniform_int(r, 1, 4))))
        return sorted(words)

    def _log_pool(self, r, n):
        levels = ["INFO"] * 12 + ["DEBUG"] * 5 + ["WARN"] * 2 + ["ERROR"]
        comps = self.words[:40]
        lines = []
        for _ in range(n):
            msg = " ".join(pick_skewed(r, self.words) for _ in range(uniform_int(r, 3, 10)))
            lines.append(
                f"2024-{uniform_int(r, 1, 12):02d}-{uniform_int(r, 1, 28):02d}T"
                f"{uniform_int(r, 0, 23):02d}:{uniform_int(r, 0, 59):02d}:{uniform_int(r, 0, 59):02d}."
                f"{uniform_int(r, 0, 999):03d}Z {pick(r, levels):5s} [{pick(r, comps)}] {msg} "
                f"user={pick_skewed(r, self.words)} req={uniform_int(r, 0, 2**32 - 1):08x} "
                f"dur={log_uniform(r, 1, 30000)}ms\n")
        return lines

    def _csv_pool(self, r, n):
        lines = []
        for _ in range(n):
            lines.append(
                f"{uniform_int(r, 1, 10**7)},2024-{uniform_int(r, 1, 12):02d}-{uniform_int(r, 1, 28):02d},"
                f"{pick_skewed(r, self.words)},{pick(r, self.words)} {pick(r, self.words)},"
                f"{r.random() * 10000:.2f},{uniform_int(r, 0, 500)},"
                f"{pick(r, self.words)}.{pick(r, self.words)}@example.org,"
                f"{pick(r, ['ok', 'ok', 'ok', 'pending', 'failed', 'refunded'])}\n")
        return lines

    def chunks(self, kind, key, size):
        """Yield bytes (each at most BLOCK long) adding up to exactly size."""
        if kind == "random":
            for i, off in enumerate(range(0, size, BLOCK)):
                yield hashlib.shake_256(f"{self.seed}:{key}:{i}".encode()).digest(min(BLOCK, size - off))
        elif kind == "zero":
            for off in range(0, size, BLOCK):
                yield bytes(min(BLOCK, size - off))
        elif kind in self.pools:
            yield from self._text(kind, key, size)
        elif kind == "mixed":
            yield from self._mixed(key, size)
        else:
            raise ValueError(kind)

    def _text(self, kind, key, size):
        pool = self.pools[kind]
        n = len(pool)
        rnd = random.Random(f"{self.seed}:{key}").random
        buf = b""
        left = size
        while left > 0:
            want = min(BLOCK, left)
            if len(buf) < want:
                k = (want - len(buf)) // 60 + 2
                buf += "".join([pool[int(rnd() * n)] for _ in range(k)]).encode()
                continue
            yield buf[:want]
            buf = buf[want:]
            left -= want

    def _mixed(self, key, size):
        """Segments of text, random bytes, zeros and repeats of earlier segments."""
        r = random.Random(f"{self.seed}:{key}:segments")
        segments = []  # (kind, key) of the segments written so far
        left = size
        while left > 0:
            length = min(left, log_uniform(r, 64 * KiB, 4 * MiB))
            u = r.random()
            if u < 0.15 and segments:
                kind, skey = pick(r, segments)  # same bytes again: dedup opportunity
            else:
                kind = "log" if u < 0.55 else "random" if u < 0.90 else "zero"
                skey = f"{key}#{len(segments)}"
                segments.append((kind, skey))
            yield from self.chunks(kind, skey, length)
            left -= length


# ---------------------------------------------------------------- plans

def plan_v1(scale, seed):
    """List of (path, kind, size) in write order."""
    r = random.Random(f"lifeboat-bench:{seed}:v1")
    files = []
    add_small(files, r, "small", scaled(SMALL_FILES, scale))
    fill(files, r, "text", int(TEXT_TOTAL * scale), TEXT_MIN, TEXT_MAX, ["log", "csv"])
    fill(files, r, "blobs", int(BLOB_TOTAL * scale), BLOB_MIN, BLOB_MAX, ["random"])
    big = max(64 * KiB, int(BIG_SIZE * scale))
    files += [("big/random.img", "random", big), ("big/text.log", "log", big),
              ("big/mixed.img", "mixed", big)]
    return files


def add_small(files, r, prefix, count):
    d, left_in_dir, start = -1, 0, len(files)
    for i in range(count):
        if left_in_dir == 0:
            d += 1
            left_in_dir = uniform_int(r, FILES_PER_DIR * 3 // 4, FILES_PER_DIR * 5 // 4)
        left_in_dir -= 1
        u = r.random()
        kind = "log" if u < 0.45 else "csv" if u < 0.70 else "random"
        path = f"{prefix}/t{d // DIRS_PER_TOP:03d}/d{d % DIRS_PER_TOP:02d}/f{start + i:06d}.{EXT[kind]}"
        files.append((path, kind, log_uniform(r, SMALL_MIN, SMALL_MAX)))


def fill(files, r, prefix, total, lo, hi, kinds):
    made, i = 0, 0
    while made < total:
        size = min(log_uniform(r, lo, hi), total - made)
        kind = pick(r, kinds)
        files.append((f"{prefix}/g{i // 50:02d}/{kind}-{i:04d}.{EXT[kind]}", kind, size))
        made += size
        i += 1


def plan_v2(v1, scale, seed):
    """Operations turning v1 into v2, in order.

    ("rename_dir", old, new) ("delete", path) ("patch", path, kind, offset, length)
    ("append", path, kind, length) ("insert", path, kind, offset, length)
    ("new", path, kind, size)
    """
    r = random.Random(f"lifeboat-bench:{seed}:v2")
    ops = []
    small = [f for f in v1 if f[0].startswith("small/")]
    dirs = sorted({os.path.dirname(p) for p, _, _ in small})
    renamed = None
    if len(dirs) >= 2:
        renamed = dirs[1 + int(r.random() * (len(dirs) - 1))]
        ops.append(("rename_dir", renamed, "small/renamed/" + os.path.basename(renamed)))
    for path, kind, size in small:
        u = r.random()
        if os.path.dirname(path) == renamed:
            continue
        if u < V2_SMALL_PATCH:
            length = log_uniform(r, 16, size)
            ops.append(("patch", path, kind, int(r.random() * (size - length + 1)), length))
        elif u < V2_SMALL_PATCH + V2_SMALL_APPEND:
            ops.append(("append", path, kind, log_uniform(r, 16, 4 * KiB)))
        elif u < V2_SMALL_PATCH + V2_SMALL_APPEND + V2_SMALL_DELETE:
            ops.append(("delete", path))
    for path, kind, size in v1:
        if path.startswith("text/") and r.random() < V2_TEXT_APPEND:
            ops.append(("append", path, kind, max(1, int(size * (0.02 + 0.08 * r.random())))))
    blobs = [f for f in v1 if f[0].startswith("blobs/")]
    for path, _, _ in blobs[1:]:  # never delete them all
        if r.random() < V2_BLOB_DELETE:
            ops.append(("delete", path))
    sizes = dict((p, s) for p, _, s in v1)
    patch = max(4 * KiB, int(V2_BIG_PATCH * scale))
    for path, kind, count, length in [("big/random.img", "random", 3, patch),
                                      ("big/text.log", "log", 2, patch // 2)]:
        size = sizes[path]
        for _ in range(count):
            ops.append(("patch", path, kind, int(size * (0.25 + 0.5 * r.random())), length))
    ops.append(("append", "big/text.log", "log", max(4 * KiB, int(V2_BIG_APPEND * scale))))
    size = sizes["big/mixed.img"]
    ops.append(("insert", "big/mixed.img", "random", int(size * (0.4 + 0.2 * r.random())),
                max(4 * KiB, int(V2_BIG_INSERT * scale))))
    new = []
    add_small(new, r, "small/new", scaled(V2_NEW_SMALL, scale))
    fill(new, r, "blobs/new", int(V2_NEW_BLOBS * scale), BLOB_MIN, BLOB_MAX, ["random"])
    ops += [("new",) + f for f in new]
    return ops


def summarize(scale, seed):
    v1 = plan_v1(scale, seed)
    ops = plan_v2(v1, scale, seed)
    sizes = {p: s for p, _, s in v1}
    v1_bytes = sum(sizes.values())
    cats = {}
    for path, _, size in v1:
        c = cats.setdefault(path.split("/")[0], {"files": 0, "bytes": 0})
        c["files"] += 1
        c["bytes"] += size
    written = 0
    changed, deleted, added, moved = set(), 0, 0, 0
    for op in ops:
        kind = op[0]
        if kind == "rename_dir":
            moved = sum(1 for p in sizes if os.path.dirname(p) == op[1])
        elif kind == "delete":
            deleted += 1
            del sizes[op[1]]
        elif kind == "new":
            added += 1
            sizes[op[1]] = op[3]
            written += op[3]
        else:
            length = op[-1]
            written += length
            changed.add(op[1])
            if kind != "patch":
                sizes[op[1]] += length
    v2_bytes = sum(sizes.values())
    return {
        "scale": scale, "seed": seed,
        "v1": {"files": len(v1), "bytes": v1_bytes, "by_top_dir": cats,
               "small_files": cats.get("small", {}).get("files", 0)},
        "v2": {"files": len(sizes), "bytes": v2_bytes,
               "bytes_new_or_rewritten": written,
               "percent_new_or_rewritten": round(100.0 * written / v1_bytes, 2),
               "files_changed": len(changed), "files_added": added,
               "files_deleted": deleted, "files_moved": moved,
               "bytes_in_changed_or_added_files": sum(sizes[p] for p in changed)
               + sum(op[3] for op in ops if op[0] == "new")},
    }


# ---------------------------------------------------------------- writing

class Writer:
    def __init__(self, root, content):
        self.root, self.content, self.dirs = root, content, set()

    def full(self, path):
        return os.path.join(self.root, path)

    def write(self, path, kind, size, mtime):
        full = self.full(path)
        d = os.path.dirname(full)
        if d not in self.dirs:
            os.makedirs(d, exist_ok=True)
            self.dirs.add(d)
        with open(full, "wb") as f:
            for chunk in self.content.chunks(kind, path, size):
                f.write(chunk)
        os.utime(full, (mtime, mtime))

    def patch(self, path, kind, offset, length, mode="r+b"):
        with open(self.full(path), mode) as f:
            if mode == "r+b":
                f.seek(offset)
            for chunk in self.content.chunks(kind, f"{path}@v2:{offset}", length):
                f.write(chunk)

    def insert(self, path, kind, offset, length):
        src, tmp = self.full(path), self.full(path) + ".tmp"
        with open(src, "rb") as i, open(tmp, "wb") as o:
            left = offset
            while left:
                block = i.read(min(BLOCK, left))
                o.write(block)
                left -= len(block)
            for chunk in self.content.chunks(kind, f"{path}@v2:{offset}", length):
                o.write(chunk)
            while block := i.read(BLOCK):
                o.write(block)
        os.replace(tmp, src)

    def set_dir_mtimes(self, v2_dirs=()):
        for d, _, _ in os.walk(self.root, topdown=False):
            t = V2_MTIME if os.path.relpath(d, self.root) in v2_dirs else V1_MTIME
            os.utime(d, (t, t))


def make_v1(root, scale, seed):
    if os.path.exists(root):
        sys.exit(f"{root} exists")
    w = Writer(root, Content(seed))
    os.makedirs(root)
    for i, (path, kind, size) in enumerate(plan_v1(scale, seed)):
        w.write(path, kind, size, V1_MTIME + i)
    w.set_dir_mtimes()


def make_v2(root, scale, seed):
    w = Writer(root, Content(seed))
    touched_dirs = {"."}
    touched = []
    for op in plan_v2(plan_v1(scale, seed), scale, seed):
        kind, path = op[0], op[1]
        if kind == "rename_dir":
            os.makedirs(os.path.dirname(w.full(op[2])), exist_ok=True)
            os.rename(w.full(path), w.full(op[2]))
            touched_dirs |= {os.path.dirname(path), os.path.dirname(op[2]), "small"}
        elif kind == "delete":
            os.remove(w.full(path))
            touched_dirs.add(os.path.dirname(path))
        elif kind == "patch":
            w.patch(path, op[2], op[3], op[4])
            touched.append(path)
        elif kind == "append":
            w.patch(path, op[2], "end", op[3], mode="ab")
            touched.append(path)
        elif kind == "insert":
            w.insert(path, op[2], op[3], op[4])
            touched.append(path)
            touched_dirs.add(os.path.dirname(path))
        elif kind == "new":
            w.write(path, op[2], op[3], V2_MTIME)
            touched.append(path)
            d = os.path.dirname(path)
            while d:
                touched_dirs.add(d)
                d = os.path.dirname(d)
    for i, path in enumerate(dict.fromkeys(touched)):
        os.utime(w.full(path), (V2_MTIME + i, V2_MTIME + i))
    w.set_dir_mtimes(touched_dirs)


def count(root):
    files = dirs = size = 0
    for d, ds, fs in os.walk(root):
        dirs += len(ds)
        files += len(fs)
        size += sum(os.lstat(os.path.join(d, f)).st_size for f in fs)
    return {"files": files, "dirs": dirs, "bytes": size}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["plan", "v1", "v2", "count"])
    ap.add_argument("dir", nargs="?")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_intermixed_args()
    if a.mode != "plan" and not a.dir:
        ap.error("DIR is required")
    if a.mode == "plan":
        print(json.dumps(summarize(a.scale, a.seed), indent=2))
    elif a.mode == "v1":
        make_v1(a.dir, a.scale, a.seed)
    elif a.mode == "v2":
        make_v2(a.dir, a.scale, a.seed)
    else:
        print(json.dumps(count(a.dir)))


if __name__ == "__main__":
    main()
