#!/usr/bin/env bash
# Seeds the fuzz corpora from the golden transcripts (tests/golden), the
# README's config example and the committed regression inputs (fuzz/regressions):   bash fuzz/seed.sh [CORPUS_DIR]   (default fuzz/corpus)
# Each seed starts with the target's selector byte(s) (see fuzz/README.md).
# Idempotent: seed files are named after their source and overwritten.
set -euo pipefail
FUZZ=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec python3 - "$FUZZ/.." "${1:-$FUZZ/corpus}" <<'PY'
import glob, os, re, struct, sys

repo, out = sys.argv[1], sys.argv[2]
golden = os.path.join(repo, "tests", "golden")
count = {}

def seed(target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)
    count[target] = count.get(target, 0) + 1

def read(path):
    with open(path, "rb") as f:
        return f.read()

def tok(b):
    return struct.pack("<Q", len(b)) + b + b"\0" * (-len(b) % 8)

MAGIC = tok(b"nix-archive-1")
WORKER_MINORS = [21, 22, 23, 25, 27, 30, 32, 34, 35, 36, 37, 38]   # worker_request.rs
HS_MINORS = [21, 25, 30, 34, 35, 38]                              # worker_handshake.rs

def nar_end(data, i):
    """Offset just past the NAR starting at i (parentheses balance; the
    token after contents/target/name is a payload, never a paren)."""
    depth, prev, i = 0, None, i + len(MAGIC)
    while i + 8 <= len(data):
        n = struct.unpack_from("<Q", data, i)[0]
        t, i = data[i + 8:i + 8 + n], i + 8 + n + (-n % 8)
        if prev not in (b"contents", b"target", b"name"):
            depth += {b"(": 1, b")": -1}.get(t, 0)
            if depth == 0:
                return i
        prev = t
    return len(data)

def nars(data):
    """Every NAR embedded in a transcript, cut at its end."""
    i = data.find(MAGIC)
    while i >= 0:
        yield i, data[i:nar_end(data, i)]
        i = data.find(MAGIC, i + 1)

# Serve: the 16-byte hello stripped; the selector byte picks minor 7.
for f in sorted(glob.glob(os.path.join(golden, "serve", "*.c2s"))):
    base = os.path.basename(f)[:-4]
    seed("serve_request", base, b"\x07" + read(f)[16:])
    for d in ("c2s", "s2c"):
        for i, nar in nars(read(f[:-3] + d)):
            seed("nar_parse", f"{base}.{d}@{i}", b"\x00" + nar)

# Worker (1.34 captures): the 32-byte client handshake stripped for the
# request target, kept for the server side of the handshake target; the
# server bytes feed the client side.
for f in sorted(glob.glob(os.path.join(golden, "worker", "*.c2s"))):
    base = os.path.basename(f)[:-4]
    c2s, s2c = read(f), read(f[:-3] + "s2c")
    for minor in (34, 35, 38):
        seed("worker_request", f"{base}-1.{minor}",
             bytes([WORKER_MINORS.index(minor)]) + c2s[32:])
    seed("worker_handshake", f"{base}-server", bytes([HS_MINORS.index(34) << 1]) + c2s)
    seed("worker_handshake", f"{base}-client", bytes([HS_MINORS.index(34) << 1 | 1]) + s2c)
    for d, data in (("c2s", c2s), ("s2c", s2c)):
        for i, nar in nars(data):
            seed("nar_parse", f"{base}.{d}@{i}", b"\x07" + nar)
    # AddMultipleToStore (op 44): its framed payload follows op, repair, dontCheckSigs.
    op = struct.pack("<Q", 44)
    i = c2s.find(op, 32)
    while i >= 0 and i % 8 != 0:
        i = c2s.find(op, i + 1)
    if i >= 0:
        seed("framed_reader", f"{base}-add-multiple", b"\x14\x3f" + c2s[i + 24:])

# Hand-written handshakes (C/S hex lines): one seed per side.
for f in sorted(glob.glob(os.path.join(golden, "worker", "hand-*.hex"))):
    base = os.path.basename(f)[:-4]
    side = {"C": b"", "S": b""}
    for line in read(f).decode().splitlines():
        line = line.split("#", 1)[0].strip()
        if line[:1] in side:
            side[line[0]] += bytes.fromhex(line[1:].replace(" ", ""))
    m = re.search(r"1\.(\d+)", base)
    sel = HS_MINORS.index(int(m.group(1))) if m and int(m.group(1)) in HS_MINORS else len(HS_MINORS) - 1
    if side["C"]:
        seed("worker_handshake", f"{base}-server", bytes([sel << 1]) + side["C"])
    if side["S"]:
        seed("worker_handshake", f"{base}-client", bytes([sel << 1 | 1]) + side["S"])

# Framed streams by hand: empty, several frames, one over a small limit.
def frames(*chunks):
    return b"".join(struct.pack("<Q", len(c)) + c for c in chunks) + struct.pack("<Q", 0)
seed("framed_reader", "empty", b"\x00\x07" + frames())
seed("framed_reader", "three", b"\x04\x03" + frames(b"abc", b"defghijk", b"l") + b"after")
seed("framed_reader", "oversize", b"\x02\x07" + frames(b"ab", b"too long") + b"after")

# Backend replies by hand (backend_reply.rs): serve 2.7, then worker 1.34;
# after the selector, per reply: a pick byte (the request), the answer.
Q = lambda *v: b"".join(struct.pack("<Q", x) for x in v)
LAST = 0x616c7473
seed("backend_reply", "serve-paths-ack-buildpaths",
     bytes([7 << 1]) + b"\x00" + Q(0) + b"\x03" + Q(1) + b"\x05" + Q(9) + tok(b"unbuildable"))
seed("backend_reply", "serve-pathinfos-empty", bytes([7 << 1]) + b"\x01" + tok(b""))
seed("backend_reply", "worker-paths-notfound",
     bytes([HS_MINORS.index(34) << 1 | 1]) + b"\x00" + Q(LAST, 0) + b"\x01" + Q(LAST, 0))
for f in sorted(glob.glob(os.path.join(golden, "cache", "*.narinfo"))):
    seed("narinfo_parse", os.path.basename(f), read(f))
for f in sorted(glob.glob(os.path.join(repo, "wire", "tests", "drv", "*.drv"))):
    seed("drv_parse", os.path.basename(f), read(f))

readme = read(os.path.join(repo, "README.md")).decode()
for n, block in enumerate(re.findall(r"```toml\n(.*?)```", readme, re.S)):
    seed("config_parse", f"readme-{n}", block.encode())

# Inputs that once broke an invariant (fuzz/regressions/TARGET/NAME).
for f in sorted(glob.glob(os.path.join(repo, "fuzz", "regressions", "*", "*"))):
    seed(os.path.basename(os.path.dirname(f)), "regression-" + os.path.basename(f), read(f))

print("seeded " + ", ".join(f"{t}: {n}" for t, n in sorted(count.items())) + f" (in {out})")
PY
