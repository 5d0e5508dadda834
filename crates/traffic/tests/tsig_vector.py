#!/usr/bin/env python3
"""Independent derivation of the DNS update and TSIG test vector in crates/traffic/src/dns.rs.

Builds, from RFC 1035 (wire format, name compression), RFC 2136 (UPDATE) and RFC 8945 (TSIG),
with nothing but Python's standard library (struct, hmac), the update that points app.lab.test. at
10.77.2.2 (TTL 5) in zone lab.test., id 0x1234, signed with key "lifeboat-test" (hmac-sha256, secret
b"0123456789abcdef0123456789abcdef") at time 1700000000 with fudge 300. Prints the unsigned message,
the MAC and the signed message as hex; the Rust test compares hickory-proto's output with them.

Run: python3 crates/traffic/tests/tsig_vector.py
"""
import hmac
import struct

ID = 0x1234
ZONE = "lab.test."
NAME = "app.lab.test."
TTL = 5
ADDR = bytes([10, 77, 2, 2])
KEY_NAME = "lifeboat-test."
SECRET = b"0123456789abcdef0123456789abcdef"
ALGORITHM = "hmac-sha256."
TIME = 1700000000
FUDGE = 300

T_A, T_SOA, T_TSIG = 1, 6, 250
C_IN, C_ANY = 1, 255
OPCODE_UPDATE = 5


def labels(name):
    return [l for l in name.rstrip(".").split(".") if l]


def name_plain(name):
    """A name in canonical (uncompressed, lower-case) wire form."""
    out = b""
    for l in labels(name.lower()):
        out += bytes([len(l)]) + l.encode()
    return out + b"\0"


class Writer:
    """A message writer with RFC 1035 4.1.4 compression: a name's longest suffix that was
    already written is replaced by a pointer to it."""

    def __init__(self):
        self.buf = b""
        self.names = {}  # suffix (tuple of labels) -> offset

    def name(self, name):
        ls = labels(name)
        start = len(self.buf)
        # the labels written in full: all of them, or those before the longest known suffix
        upto = next((i for i in range(len(ls)) if tuple(l.lower() for l in ls[i:]) in self.names), len(ls))
        self.buf += b"".join(bytes([len(l)]) + l.encode() for l in ls[:upto])
        if upto < len(ls):
            self.buf += struct.pack(">H", 0xC000 | self.names[tuple(l.lower() for l in ls[upto:])])
        else:
            self.buf += b"\0"
        # every suffix that starts with a label written in full can be pointed at from now on
        pos = start
        for i in range(upto):
            self.names.setdefault(tuple(l.lower() for l in ls[i:]), pos)
            pos += 1 + len(ls[i])

    def raw(self, b):
        self.buf += b


def update(arcount):
    w = Writer()
    flags = OPCODE_UPDATE << 11  # QR=0, opcode UPDATE, no RD
    # ZOCOUNT=1, PRCOUNT=0, UPCOUNT=2, ADCOUNT
    w.raw(struct.pack(">HHHHHH", ID, flags, 1, 0, 2, arcount))
    # Zone section: ZNAME ZTYPE=SOA ZCLASS=IN
    w.name(ZONE)
    w.raw(struct.pack(">HH", T_SOA, C_IN))
    # Update 1 (RFC 2136 2.5.2, delete an RRset): NAME A ANY TTL 0 RDLENGTH 0
    w.name(NAME)
    w.raw(struct.pack(">HHIH", T_A, C_ANY, 0, 0))
    # Update 2 (2.5.1, add to an RRset): NAME A IN TTL RDLENGTH 4 ADDR
    w.name(NAME)
    w.raw(struct.pack(">HHIH", T_A, C_IN, TTL, 4) + ADDR)
    return w


def tsig_variables():
    # RFC 8945 4.3.3: key name, class ANY, TTL 0, algorithm name (canonical, uncompressed),
    # time signed (48 bits), fudge, error, other len, other data.
    return (
        name_plain(KEY_NAME)
        + struct.pack(">HI", C_ANY, 0)
        + name_plain(ALGORITHM)
        + struct.pack(">HIH", TIME >> 32, TIME & 0xFFFFFFFF, FUDGE)
        + struct.pack(">HH", 0, 0)
    )


unsigned = update(0).buf
mac = hmac.new(SECRET, unsigned + tsig_variables(), "sha256").digest()

signed = update(1)
signed.name(KEY_NAME)  # the TSIG RR's owner (compression is allowed here; nothing matches anyway)
rdata = (
    name_plain(ALGORITHM)
    + struct.pack(">HIH", TIME >> 32, TIME & 0xFFFFFFFF, FUDGE)
    + struct.pack(">H", len(mac))
    + mac
    + struct.pack(">HHH", ID, 0, 0)  # original id, error, other len
)
signed.raw(struct.pack(">HHIH", T_TSIG, C_ANY, 0, len(rdata)) + rdata)

print("UNSIGNED_HEX", unsigned.hex())
print("MAC_HEX", mac.hex())
print("SIGNED_HEX", signed.buf.hex())
