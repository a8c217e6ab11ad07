#!/usr/bin/env python3
"""Flood helper for scripts/bench/flood.sh: a spoofed-source reflection flood and legitimate clients.

  flood.py attack  --port P --seconds S --sources 127.66.6.1,127.66.6.2,... --name NAME --type TXT [--rate N]
      Sends queries for NAME from sockets bound to the victim's addresses (a reflection attack
      as the victim sees it: every response lands on the victim), N a second or as fast as one
      process can,
      and counts what goes out (the attacker's bytes) and what comes back (the victim's).
  flood.py client  --port P --seconds S --source ADDR --name NAME --type TXT --rate N
      A resolver-like client: N queries a second over UDP with EDNS; a truncated answer is
      retried over TCP, a lost one up to twice over UDP (500 ms timeout). Counts answered.

Each prints one JSON object on stdout. Traffic only to 127.0.0.1.
"""
import argparse
import json
import select
import socket
import struct
import time

TYPES = {"A": 1, "NS": 2, "TXT": 16, "AAAA": 28}


def query(name, qtype, qid):
    header = struct.pack(">HHHHHH", qid & 0xFFFF, 0, 1, 0, 0, 1)
    wire = b"".join(bytes([len(label)]) + label.encode() for label in name.strip(".").split(".")) + b"\0"
    # EDNS(0) OPT, 1232-byte payload: what a reflection attack asks for, the largest UDP answer.
    opt = b"\0" + struct.pack(">HHIH", 41, 1232, 0, 0)
    return header + wire + struct.pack(">HH", TYPES[qtype], 1) + opt


def attack(args):
    sources = args.sources.split(",")
    socks = []
    for source in sources:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        s.bind((source, 0))
        s.setblocking(False)
        socks.append(s)
    target = ("127.0.0.1", args.port)
    packets = [query(args.name, args.type, i) for i in range(256)]
    sent_bytes = sent = received_bytes = received = truncated = 0
    buf = bytearray(65535)

    def drain():
        nonlocal received_bytes, received, truncated
        for s in socks:
            while True:
                try:
                    n = s.recv_into(buf)
                except BlockingIOError:
                    break
                received += 1
                received_bytes += n
                if n >= 4 and buf[2] & 0x02:
                    truncated += 1

    start = time.monotonic()
    end = start + args.seconds
    i = 0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        # Paced to --rate (0: as fast as possible), in bursts of 16 per socket.
        if args.rate and sent >= (now - start) * args.rate:
            drain()
            time.sleep(0.0005)
            continue
        for s in socks:
            for _ in range(16):
                p = packets[i & 255]
                i += 1
                try:
                    s.sendto(p, target)
                    sent += 1
                    sent_bytes += len(p)
                except BlockingIOError:
                    break
        drain()
    time.sleep(0.3)
    drain()
    print(json.dumps({"queries": sent, "query_bytes": sent_bytes, "responses": received,
                      "response_bytes": received_bytes, "truncated": truncated, "seconds": args.seconds}))


def read_exactly(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def ask_tcp(args, packet):
    with socket.create_connection(("127.0.0.1", args.port), timeout=2, source_address=(args.source, 0)) as s:
        s.sendall(struct.pack(">H", len(packet)) + packet)
        length = struct.unpack(">H", read_exactly(s, 2))[0]
        return read_exactly(s, length)


def client(args):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((args.source, 0))
    target = ("127.0.0.1", args.port)
    asked = answered = via_tcp = udp_retries = 0
    interval = 1.0 / args.rate
    end = time.monotonic() + args.seconds
    next_at = time.monotonic()
    qid = 0
    while time.monotonic() < end:
        now = time.monotonic()
        if now < next_at:
            time.sleep(next_at - now)
        next_at += interval
        asked += 1
        qid = (qid + 1) & 0xFFFF
        packet = query(args.name, args.type, qid)
        done = False
        for attempt in range(3):
            if attempt:
                udp_retries += 1
            s.sendto(packet, target)
            deadline = time.monotonic() + 0.5
            while not done:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([s], [], [], left)[0]:
                    break
                data = s.recv(65535)
                if data[:2] != packet[:2]:
                    continue  # a late answer to an earlier query
                if data[2] & 0x02:
                    try:
                        ask_tcp(args, packet)
                        via_tcp += 1
                        done = True
                    except OSError:
                        pass
                    break
                done = True
            if done:
                break
        answered += done
    print(json.dumps({"asked": asked, "answered": answered, "via_tcp": via_tcp, "udp_retries": udp_retries}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("attack")
    a.add_argument("--sources", required=True)
    a.add_argument("--rate", type=float, default=0, help="queries per second in all (0: as fast as possible)")
    c = sub.add_parser("client")
    c.add_argument("--source", required=True)
    c.add_argument("--rate", type=float, default=20)
    for p in (a, c):
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--seconds", type=float, default=10)
        p.add_argument("--name", required=True)
        p.add_argument("--type", default="TXT", choices=sorted(TYPES))
    args = parser.parse_args()
    attack(args) if args.command == "attack" else client(args)


if __name__ == "__main__":
    main()
