#!/usr/bin/env python3
"""Opens N SMTP sessions, reads each greeting, and holds them open while the caller
measures; exits when every session got its greeting (or reports how many did not)."""
import asyncio
import sys


async def session(host, port, source, opened, writers):
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=(source, 0)), 30)
        writers.append(writer)
        line = await asyncio.wait_for(reader.readline(), 30)
    except (OSError, asyncio.TimeoutError):
        return
    if line.startswith(b"220"):
        opened.append(1)


async def main(host, port, count, pid):
    opened, writers = [], []
    batch = 200
    for start in range(0, count, batch):
        tasks = []
        for i in range(start, min(count, start + batch)):
            source = f"127.0.0.{2 + i % 254}"
            tasks.append(session(host, port, source, opened, writers))
        await asyncio.gather(*tasks)
    with open(f"/proc/{pid}/status") as f:
        rss_kb = int(next(l for l in f if l.startswith("VmRSS:")).split()[1])
    print(f"sessions greeted: {len(opened)} of {count}")
    print(f"ingress RSS with {len(opened)} idle sessions: {rss_kb // 1024} MiB")
    for w in writers:
        w.close()


if __name__ == "__main__":
    host, port, count, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    asyncio.run(main(host, port, count, pid))
