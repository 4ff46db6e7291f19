#!/usr/bin/env python3
"""A TCP forwarder on loopback that counts the bytes each way (for the
benches): bytecount.py LISTEN_PORT TARGET_PORT OUTFILE. OUTFILE holds
"<client-to-target bytes> <target-to-client bytes>", rewritten every 0.1 s
while bytes flow and when a direction of a connection ends (a pooled
connection may stay open); the totals only grow."""
import asyncio
import os
import sys

listen, target, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
totals = [0, 0]


def save():
    with open(out + ".tmp", "w") as f:
        f.write(f"{totals[0]} {totals[1]}\n")
    os.replace(out + ".tmp", out)


async def pump(r, w, k):
    try:
        while True:
            b = await r.read(1 << 20)
            if not b:
                break
            totals[k] += len(b)
            w.write(b)
            await w.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        save()
        try:
            w.close()
        except Exception:
            pass


async def handle(cr, cw):
    try:
        tr, tw = await asyncio.open_connection("127.0.0.1", target)
    except OSError:
        cw.close()
        return
    await asyncio.gather(pump(cr, tw, 0), pump(tr, cw, 1))


async def saver():
    last = None
    while True:
        await asyncio.sleep(0.1)
        if totals != last:
            save()
            last = list(totals)


async def main():
    save()
    asyncio.create_task(saver())
    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()

asyncio.run(main())
