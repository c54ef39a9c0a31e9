#!/usr/bin/env python3
"""Writes the committed seed corpus of zcnet's fuzz targets:
corpus/<target>/seed-<name>, each a valid input in the layout that the
target's function documents (zcnet::fuzzing, zcnet_tap::fuzzing): real
descriptor chains, real virtio-net headers, real stream records, a real
VXLAN header and TSO frame, and vhost-user message sequences in the
order QEMU and cloud-hypervisor send them.

Run from anywhere: python3 backend/fuzz/seeds.py. It rewrites only the
seed-* files; inputs the fuzzer found (and crash-* regressions) stay.
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# ---- descriptor_chains -------------------------------------------------

F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4


def desc(addr, length, flags, nxt):
    return struct.pack("<QIHH", addr, length, flags, nxt)


def raw_write(addr, data):
    assert len(data) <= 32
    return struct.pack("<QB", addr, len(data)) + data


def chains(regions, size_log2, direction, min_len, max_len, max_descs, heads, writes):
    out = struct.pack("<B", len(regions) - 1)
    for page, pages in regions:
        out += struct.pack("<HB", page, pages - 1)
    out += struct.pack("<B", size_log2)
    out += struct.pack("<QQQ", 0x1000, 0x2000, 0x3000)
    out += struct.pack("<BHIH", direction, min_len, max_len, max_descs)
    out += struct.pack("<B", len(heads)) + b"".join(struct.pack("<H", h) for h in heads)
    out += struct.pack("<B", len(writes)) + b"".join(writes)
    return out


TWO_REGIONS = [(0, 16), (0x20, 16)]  # 0..64 KiB and 128..192 KiB
DT = 0x1000  # descriptor table

# A TX frame in two descriptors across both regions, and one behind an
# indirect table, as a guest with INDIRECT_DESC queues them.
write("descriptor_chains", "tx-direct-and-indirect", chains(
    TWO_REGIONS, 4, 0, 12, 65550, 16, [0, 2], [
        raw_write(DT + 0, desc(0x8000, 100, F_NEXT, 1)),
        raw_write(DT + 16, desc(0x20100, 200, 0, 0)),
        raw_write(DT + 32, desc(0x4000, 32, F_INDIRECT, 0)),
        raw_write(0x4000, desc(0x9000, 50, F_NEXT, 1)),
        raw_write(0x4010, desc(0x9100, 60, 0, 0)),
    ]))
# RX buffers: device-writable, one and three descriptors.
write("descriptor_chains", "rx-buffers", chains(
    TWO_REGIONS, 8, 1, 0, 65550, 256, [5, 6], [
        raw_write(DT + 5 * 16, desc(0x20000, 2048, F_WRITE, 0)),
        raw_write(DT + 6 * 16, desc(0x21000, 1000, F_WRITE | F_NEXT, 7)),
        raw_write(DT + 7 * 16, desc(0x22000, 1000, F_WRITE | F_NEXT, 8)),
        raw_write(DT + 8 * 16, desc(0x23000, 1000, F_WRITE, 0)),
    ]))
# What a bad guest sends: a descriptor running out of its region, a loop,
# a write-only descriptor on TX.
write("descriptor_chains", "bad-guest", chains(
    TWO_REGIONS, 3, 0, 0, 65550, 8, [0, 1, 3], [
        raw_write(DT + 0, desc(0xff00, 0x200, 0, 0)),
        raw_write(DT + 16, desc(0x8000, 10, F_NEXT, 2)),
        raw_write(DT + 32, desc(0x8000, 10, F_NEXT, 1)),
        raw_write(DT + 48, desc(0x8000, 10, F_WRITE, 0)),
    ]))

# ---- vnet_hdr ----------------------------------------------------------

CSUM, TSO4, TSO6, ECN, UFO, USO4, USO6 = 1, 2, 4, 8, 16, 32, 64


def hdr(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, frame_len, offloads):
    return struct.pack("<BBHHHHIB", flags, gso_type, hdr_len, gso_size, csum_start,
                       csum_offset, frame_len, offloads)


write("vnet_hdr", "plain", hdr(0, 0, 0, 0, 0, 0, 60, 0))
write("vnet_hdr", "csum", hdr(1, 0, 0, 0, 34, 16, 1514, CSUM))
write("vnet_hdr", "tso4", hdr(1, 1, 54, 1448, 34, 16, 65000, CSUM | TSO4))
write("vnet_hdr", "tso6-ecn", hdr(1, 0x84, 74, 1428, 54, 16, 65000, CSUM | TSO6 | ECN))
write("vnet_hdr", "uso", hdr(1, 5, 42, 1472, 34, 6, 30000, CSUM | USO4 | USO6))
write("vnet_hdr", "udp-csum-at-end", hdr(1, 0, 0, 0, 65530, 6, 65554, CSUM | TSO4))

# ---- records -----------------------------------------------------------


def record(body):
    return struct.pack(">I", len(body)) + body


def records(max_body, steps, stream):
    assert len(steps) == 8
    return struct.pack("<H", max_body) + bytes(steps) + stream


frame = bytes(range(256)) * 5
write("records", "three-frames", records(1518, [1, 3, 4, 100, 0, 7, 2, 9],
                                         record(frame[:60]) + record(frame[:1514]) + record(b"")))
write("records", "broken-length", records(100, [0] * 8, record(b"x" * 100) + struct.pack(">I", 101) + b"abc"))
write("records", "partial-tail", records(1518, [5] * 8, record(frame[:90]) + record(frame[:500])[:300]))

# ---- vxlan -------------------------------------------------------------


def csum16(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def tcp4_frame(payload_len):
    eth = bytes.fromhex("525400000002525400000001") + b"\x08\x00"
    total = 20 + 20 + payload_len
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0x1234, 0x4000, 64, 6, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    ip = ip[:10] + struct.pack("!H", csum16(ip)) + ip[12:]
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1000, 2000, 5 << 4, 0x18, 65535, 0, 0)
    return eth + ip + tcp + bytes(i % 251 for i in range(payload_len))


def tcp6_frame(payload_len):
    eth = bytes.fromhex("525400000002525400000001") + b"\x86\xdd"
    ip = struct.pack("!IHBB16s16s", 6 << 28, 20 + payload_len, 6, 64,
                     bytes(15) + b"\x01", bytes(15) + b"\x02")
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1000, 2000, 5 << 4, 0x18, 65535, 0, 0)
    return eth + ip + tcp + bytes(i % 251 for i in range(payload_len))


def vxlan(vni, datagram_len, header, vnet, ipv6, mtu, prefix_len, frame_len, frame):
    return (struct.pack("<II", vni, datagram_len) + header + vnet
            + struct.pack("<BHBI", ipv6, mtu, prefix_len, frame_len) + frame)


VNI = 4242
good = bytes([0x08, 0, 0, 0]) + VNI.to_bytes(3, "big") + b"\0"
f4 = tcp4_frame(4000)
vnet4 = struct.pack("<BBHHHH", 1, 1, 54, 1448, 34, 16)
write("vxlan", "tso4-over-ipv4", vxlan(VNI, 1514 + 8, good, vnet4, 0, 1500, 8, len(f4), f4))
f6 = tcp6_frame(3000)
vnet6 = struct.pack("<BBHHHH", 1, 4, 74, 1428, 54, 16)
write("vxlan", "tso6-over-ipv6", vxlan(VNI, 100, good, vnet6, 1, 1500, 8, len(f6), f6))
bad = bytes([0x0c, 0, 0, 0]) + VNI.to_bytes(3, "big") + b"\0"
write("vxlan", "reserved-bit", vxlan(VNI, 1000, bad, vnet4, 0, 9000, 0, len(f4), f4))

# ---- vhost-user message sequences ---------------------------------------

GET_FEATURES, SET_FEATURES, SET_OWNER = 1, 2, 3
SET_MEM_TABLE, SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE = 5, 8, 9, 10
GET_VRING_BASE, SET_VRING_KICK, SET_VRING_CALL = 11, 12, 13
GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM = 15, 16, 17
SET_VRING_ENABLE, GET_MAX_MEM_SLOTS, ADD_MEM_REG, REM_MEM_REG = 18, 36, 37, 38
V1, NEED_REPLY = 1, 8

PROTO_MQ, PROTO_REPLY_ACK, PROTO_CONFIG, PROTO_MEM_SLOTS = 1 << 0, 1 << 3, 1 << 9, 1 << 15
FEATURES = (1 << 32) | (1 << 30) | (1 << 29) | (1 << 28) | 1 | 2 | (1 << 11) | (1 << 15) | (1 << 22)

MEM = 1 << 20  # MEMFD_SIZE of the fuzz target
USER = 0x7F00_0000_0000  # the frontend's address of guest address 0


def msg(code, body=b"", flags=V1, fds=0, memfd=False):
    """One message in one write, with `fds` descriptors (memfds or eventfds)."""
    m = struct.pack("<III", code, flags, len(body)) + body
    control = fds | ((4 | 8 | 16) if memfd else 0)
    return struct.pack("<BH", control, len(m)) + m


def u64(v):
    return struct.pack("<Q", v)


def state(index, num):
    return struct.pack("<II", index, num)


def region(gpa, size, user, offset):
    return struct.pack("<QQQQ", gpa, size, user, offset)


def ring(index, size=256, flags=V1):
    desc = 0x10000 + index * 0x10000
    avail = desc + 16 * size
    used = (avail + 6 + 2 * size + 3) & ~3
    return (msg(SET_VRING_NUM, state(index, size), flags)
            + msg(SET_VRING_BASE, state(index, 0), flags)
            + msg(SET_VRING_ADDR, struct.pack("<IIQQQQ", index, 0, USER + desc, USER + used,
                                              USER + avail, 0), flags)
            + msg(SET_VRING_KICK, u64(index), flags, fds=1)
            + msg(SET_VRING_CALL, u64(index), flags, fds=1)
            + msg(SET_VRING_ENABLE, state(index, 1), flags))


negotiate = (msg(GET_FEATURES) + msg(GET_PROTOCOL_FEATURES)
             + msg(SET_PROTOCOL_FEATURES, u64(PROTO_MQ | PROTO_REPLY_ACK))
             + msg(GET_QUEUE_NUM) + msg(SET_OWNER))
# QEMU 10: early SET_VRING_ENABLE, then features, memory table, rings,
# and GET_VRING_BASE when the guest stops.
qemu = (negotiate
        + msg(SET_VRING_ENABLE, state(0, 1), V1 | NEED_REPLY)
        + msg(SET_VRING_ENABLE, state(1, 1), V1 | NEED_REPLY)
        + msg(SET_FEATURES, u64(FEATURES), V1 | NEED_REPLY)
        + msg(SET_MEM_TABLE, struct.pack("<II", 1, 0) + region(0, MEM, USER, 0),
              V1 | NEED_REPLY, fds=1, memfd=True)
        + ring(0, flags=V1 | NEED_REPLY) + ring(1, flags=V1 | NEED_REPLY)
        + msg(GET_VRING_BASE, state(0, 0)) + msg(GET_VRING_BASE, state(1, 0)))
# cloud-hypervisor: memory slots, one ADD_MEM_REG per region.
ch = (msg(GET_FEATURES) + msg(GET_PROTOCOL_FEATURES)
      + msg(SET_PROTOCOL_FEATURES, u64(PROTO_MQ | PROTO_REPLY_ACK | PROTO_CONFIG | PROTO_MEM_SLOTS))
      + msg(GET_QUEUE_NUM) + msg(SET_OWNER) + msg(SET_FEATURES, u64(FEATURES))
      + msg(GET_MAX_MEM_SLOTS)
      + msg(ADD_MEM_REG, u64(0) + region(0, MEM // 2, USER, 0), V1 | NEED_REPLY, fds=1, memfd=True)
      + msg(ADD_MEM_REG, u64(0) + region(MEM // 2, MEM // 2, USER + MEM // 2, MEM // 2),
            V1 | NEED_REPLY, fds=1, memfd=True)
      + ring(0) + ring(1) + ring(2) + ring(3)
      + msg(REM_MEM_REG, u64(0) + region(MEM // 2, MEM // 2, USER + MEM // 2, MEM // 2),
            V1 | NEED_REPLY))
# Hostile: a ring size that is not a power of two, an out-of-range ring,
# a descriptor where none belongs.
hostile = (negotiate + msg(SET_FEATURES, u64(FEATURES))
           + msg(SET_VRING_NUM, state(0, 100), V1 | NEED_REPLY)
           + msg(SET_VRING_BASE, state(9, 0), V1 | NEED_REPLY)
           + msg(GET_FEATURES, fds=1)
           + msg(GET_FEATURES))
for target in ("vhost_messages", "vhost_daemon"):
    write(target, "qemu", qemu)
    write(target, "cloud-hypervisor", ch)
    write(target, "hostile", hostile)
