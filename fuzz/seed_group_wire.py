#!/usr/bin/env python3
"""Writes the seeds of the group_wire fuzz target into seeds/group_wire/.

The valid heartbeat, relay message and path probe are encoded here from the wire formats as
documented in src/takeover/wire.rs and src/agent/probe.rs, not by the crate itself, so the
target's "one encoding" check also holds the decoders to the documented format. The key is
the target's KEY (32 bytes of 0x5a). Run from fuzz/: python3 seed_group_wire.py
"""
import hashlib
import hmac
import os
import struct

KEY = bytes([0x5A] * 32)
GROUP_KEY = hmac.new(KEY, b"shadowsteer group heartbeat v1", hashlib.sha256).digest()
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "group_wire")


def mac(key, body):
    return hmac.new(key, body, hashlib.sha256).digest()[:16]


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


os.makedirs(OUT, exist_ok=True)
V4_MAPPED = bytes(10) + b"\xff\xff"

# Mode 0: raw datagrams that authenticate under the target's key.
body = b"SSG\x01" + struct.pack(">QQQ", 1700000000000, 7, 1700000000123) + bytes([4]) + b"eu-1"
write("raw_heartbeat", b"\x00" + body + mac(GROUP_KEY, body))
body = (b"SSR\x01" + bytes([2]) + V4_MAPPED + bytes([192, 0, 2, 7]) + struct.pack(">H", 40000)
        + bytes([4, 0, 0, 0, 1, 2, 3]))
write("raw_relay", b"\x00" + body + mac(GROUP_KEY, body))
body = b"SSPR" + bytes([1, 0, 0, 0]) + struct.pack(">QQ", 42, 123456789) + bytes([4]) + b"us-1"
write("raw_probe", b"\x00" + body + mac(KEY, body))

# Mode 1: fields (flip position, id, boot, seq, sent, probe kind, relay direction, address,
# port, datagram).
write("structured", bytes([1, 5, 0, 4]) + b"eu-1" + struct.pack(">QQQ", 3, 9, 1700000000000)
      + bytes([1, 0]) + V4_MAPPED + bytes([198, 51, 100, 9]) + struct.pack(">H", 51820)
      + bytes([1, 0, 0, 0]) + bytes(32))

# Mode 2: heartbeats of both peers (peer, clock step ms, boot, seq, send-time skew / 20 ms):
# a replay, a skewed one, a silence long enough to die (two polls), revival and a restart.
ops = []


def beat(peer, step, boot, seq, skew):
    ops.extend([peer & 1, step, boot, seq, skew & 0xFF])


beat(0, 10, 0, 1, 0)
beat(1, 10, 0, 1, 0)
beat(0, 50, 0, 2, 0)
beat(0, 0, 0, 2, 0)
beat(1, 50, 0, 2, 120)
ops.extend([2, 255, 2, 255])
beat(0, 10, 1, 0, 0)
beat(1, 10, 2, 0, -3)
write("replay_guard", bytes([2]) + bytes(ops))
