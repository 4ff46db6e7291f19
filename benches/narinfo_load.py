#!/usr/bin/env python3
"""narinfo load generator for nix-relay's HTTP binary cache (standard library only).

   narinfo_load.py --url http://127.0.0.1:2880 --cache-dir STATE/relay-state/cache
                   [--clients 16] [--requests 500] [--miss 0.1] [--seed N]

Every client is a thread with ONE keep-alive HTTP/1.1 connection
(http.client) that makes --requests sequential GETs of /<hash>.narinfo. The
hashes are those of the *.narinfo files in --cache-dir (expected: 200, body
names that hash); a --miss fraction of requests asks for a random hash
instead (expected: 404). Before the timed part, each client connects and
makes one untimed request; then all clients start together (a barrier).

Per-request latency = send the request .. last byte of the body read.
Prints a human-readable summary and one machine-readable last line:
  RESULT clients=16 requests=8000 hits=... misses=... errors=0 wall_s=...
         rps=... p50_ms=... p90_ms=... p99_ms=... max_ms=... mean_ms=...
Exit status: 0 if every request got the expected answer, 1 if any did not
(counted in errors=, the first few are printed), 2 on a usage/setup error.

Note: the clients are Python threads (one GIL), so on a small machine the
load generator's own CPU time is part of every latency it measures; compare
with a --clients 1 run.
"""

import argparse
import http.client
import os
import random
import sys
import threading
import time
import urllib.parse

NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"
HASH_LEN = 32


def percentile(sorted_vals, p):
    """Nearest-rank percentile (p in 0..100) of an ascending list."""
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, int(-(-p * len(sorted_vals) // 100)) - 1))
    return sorted_vals[k]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="cache base URL, e.g. http://127.0.0.1:2880")
    ap.add_argument("--cache-dir", required=True, help="directory with the served *.narinfo files")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=500, help="requests per client")
    ap.add_argument("--miss", type=float, default=0.1, help="fraction of random-hash (404) requests")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=10.0, help="socket timeout, seconds")
    ap.add_argument("--slow-ms", type=float, default=10.0, help="count requests slower than this")
    a = ap.parse_args()

    def fail(msg):
        print(f"narinfo_load: ERROR: {msg}", file=sys.stderr)
        sys.exit(2)

    if not (1 <= a.clients <= 1024 and 1 <= a.requests <= 1_000_000 and 0.0 <= a.miss <= 1.0):
        fail("need 1 <= --clients <= 1024, 1 <= --requests <= 1000000, 0 <= --miss <= 1")
    u = urllib.parse.urlsplit(a.url)
    if u.scheme != "http" or not u.hostname:
        fail(f"--url must be http://host:port (got {a.url!r})")
    host, port = u.hostname, u.port or 80
    prefix = u.path.rstrip("/")
    try:
        hashes = sorted(f[:-len(".narinfo")] for f in os.listdir(a.cache_dir)
                        if f.endswith(".narinfo") and len(f) == HASH_LEN + len(".narinfo"))
    except OSError as e:
        fail(f"cannot list {a.cache_dir}: {e}")
    if not hashes and a.miss < 1.0:
        fail(f"no *.narinfo in {a.cache_dir}")
    present = set(hashes)

    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    lat_hit = [[] for _ in range(a.clients)]      # per client: latencies (ns) of the hit requests
    lat_miss = [[] for _ in range(a.clients)]     # per client: latencies (ns) of the miss requests
    counts = [[0, 0] for _ in range(a.clients)]   # per client: hits, misses
    errors = []                                   # (client, message); list.append is atomic
    barrier = threading.Barrier(a.clients + 1)

    def plan(rng):
        """(path, hash, expect_hit) for one request."""
        if hashes and rng.random() >= a.miss:
            h = rng.choice(hashes)
            return f"{prefix}/{h}.narinfo", h, True
        while True:
            h = "".join(rng.choice(NIX32) for _ in range(HASH_LEN))
            if h not in present:
                return f"{prefix}/{h}.narinfo", h, False

    def one(conn, path, h, hit):
        """One GET; returns an error string or None. Raises on connection errors."""
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        want = 200 if hit else 404
        if r.status != want:
            return f"GET {path}: status {r.status}, expected {want}"
        if hit and not body.startswith(b"StorePath: /nix/store/" + h.encode()):
            return f"GET {path}: body does not start with 'StorePath: /nix/store/{h}'"
        if r.will_close:
            return f"GET {path}: server closed the keep-alive connection"
        return None

    def client(i):
        rng = random.Random(seed * 1009 + i)
        conn = http.client.HTTPConnection(host, port, timeout=a.timeout)
        try:
            try:  # untimed warm-up: connect + one request
                err = one(conn, *plan(rng))
                if err:
                    errors.append((i, "warm-up: " + err))
            except (OSError, http.client.HTTPException) as e:
                errors.append((i, f"warm-up: {type(e).__name__}: {e}"))
                conn.close()
            barrier.wait()
            mine_hit, mine_miss, cnt = lat_hit[i], lat_miss[i], counts[i]
            clock = time.perf_counter_ns
            for _ in range(a.requests):
                path, h, hit = plan(rng)
                t0 = clock()
                try:
                    err = one(conn, path, h, hit)
                except (OSError, http.client.HTTPException) as e:
                    err = f"GET {path}: {type(e).__name__}: {e}"
                    conn.close()   # http.client reconnects on the next request
                (mine_hit if hit else mine_miss).append(clock() - t0)
                cnt[0 if hit else 1] += 1
                if err:
                    errors.append((i, err))
        except threading.BrokenBarrierError:
            errors.append((i, "barrier broken"))
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(a.clients)]
    for t in threads:
        t.start()
    try:
        barrier.wait(timeout=60)
    except threading.BrokenBarrierError:
        fail("the clients did not all connect within 60 s")
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0

    hit_ms = sorted(x / 1e6 for l in lat_hit for x in l)
    miss_ms = sorted(x / 1e6 for l in lat_miss for x in l)
    all_ms = sorted(hit_ms + miss_ms)
    n = len(all_ms)
    hits = sum(c[0] for c in counts)
    misses = sum(c[1] for c in counts)
    rps = n / wall if wall > 0 else float("nan")
    p50, p90, p99 = (percentile(all_ms, p) for p in (50, 90, 99))
    mx = all_ms[-1] if all_ms else float("nan")
    mean = sum(all_ms) / n if n else float("nan")
    slow = sum(1 for x in all_ms if x > a.slow_ms)
    print(f"narinfo load: {a.clients} clients x {a.requests} GETs (keep-alive), {len(hashes)} narinfos"
          f" + {a.miss:.0%} random misses, {a.url}, seed {seed}")
    print(f"  requests {n} (hits {hits} -> 200, misses {misses} -> 404), errors {len(errors)}")
    print(f"  wall {wall:.3f} s, {rps:.0f} req/s")
    print(f"  latency ms: p50 {p50:.3f}  p90 {p90:.3f}  p99 {p99:.3f}  max {mx:.3f}  mean {mean:.3f}")
    for name, v in (("hits (200)", hit_ms), ("misses (404)", miss_ms)):
        if v:
            print(f"    {name:<13} p50 {percentile(v, 50):.3f}  p90 {percentile(v, 90):.3f}"
                  f"  p99 {percentile(v, 99):.3f}  max {v[-1]:.3f}")
    print(f"  slower than {a.slow_ms:g} ms: {slow} ({slow / n if n else 0:.1%})")
    for i, e in errors[:5]:
        print(f"  error (client {i}): {e}", file=sys.stderr)
    if len(errors) > 5:
        print(f"  ... {len(errors) - 5} more errors", file=sys.stderr)
    print(f"RESULT clients={a.clients} requests={n} hits={hits} misses={misses} errors={len(errors)}"
          f" wall_s={wall:.3f} rps={rps:.0f} p50_ms={p50:.3f} p90_ms={p90:.3f} p99_ms={p99:.3f}"
          f" max_ms={mx:.3f} mean_ms={mean:.3f} slow={slow}"
          f" hit_p50_ms={percentile(hit_ms, 50):.3f} hit_p99_ms={percentile(hit_ms, 99):.3f}"
          f" miss_p50_ms={percentile(miss_ms, 50):.3f} miss_p99_ms={percentile(miss_ms, 99):.3f}")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
