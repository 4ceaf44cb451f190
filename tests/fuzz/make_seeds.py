#!/usr/bin/env python3
"""Writes the seed corpora of tests/fuzz/corpus/<target>/ from the vectors of tests/unit/.

Run from anywhere: tests/fuzz/make_seeds.py [--regen-certs]. Protocol seeds get the cut header
of fuzz_common.h (byte 0: flags | number of cut bytes, then the cut bytes) in a few variants.
Bundle seeds are PEM files built from certificates made once (python3-cryptography, i.e.
OpenSSL) and kept in tests/fuzz/certs/: they are only regenerated with --regen-certs, so the
corpus stays stable. The MySQL bridge seeds encrypt passwords to the fixed key of
fuzz_rsa_key.h (RSA-OAEP is randomized: blobs differ between runs, which does not matter).
Files are named after their content hash; stale seeds of a target are removed first.
"""
import datetime
import hashlib
import pathlib
import re
import shutil
import struct
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
REPO = HERE.parent.parent


def be32(v):
    return struct.pack(">I", v)


def le16(v):
    return struct.pack("<H", v)


def cut_header(cuts, flags=0):
    assert len(cuts) <= 7 and all(1 <= c <= 256 for c in cuts)
    return bytes([flags | len(cuts)]) + bytes(c - 1 for c in cuts)


# Cut variants: byte by byte only, one odd size, a mix around header sizes.
CUTS = [[], [3], [4, 1, 7], [5, 200, 2]]


def with_cuts(payload, flags=0, variants=CUTS):
    return [cut_header(c, flags) + payload for c in variants]


def write_corpus(target, seeds):
    d = CORPUS / target
    if d.exists():
        for f in d.iterdir():
            if f.is_file():
                f.unlink()
    d.mkdir(parents=True, exist_ok=True)
    for s in seeds:
        (d / hashlib.sha1(s).hexdigest()).write_bytes(s)
    print(f"{target}: {len(set(seeds))} seeds")


# ---- PostgreSQL (tests/unit/test_pg.c) ----

SSL_REQ = bytes([0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x2F])
GSS_REQ = bytes([0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x30])
STARTUP_BOB = bytes([0, 0, 0, 0x12, 0, 3, 0, 0]) + b"user\0bob\0\0"


def startup(version, kv):
    body = b"".join(s.encode() + b"\0" for s in kv) + b"\0"
    return be32(8 + len(body)) + be32(version) + body


def cancel(key):
    return be32(12 + len(key)) + be32(80877102) + be32(4242) + key


def untagged(code, body=b""):
    return be32(8 + len(body)) + be32(code) + body


def pg_client_seeds():
    alice = startup(0x00030000, ["user", "alice", "database", "shop", "application_name", "psql",
                                 "options", "-c x=1"])
    carol = ["user", "carol", "_pq_.foo", "bar", "_pq_.grease", "", "frobnicate_gucs", "on"]
    hello = bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03])
    streams = [
        STARTUP_BOB,
        SSL_REQ + STARTUP_BOB,
        GSS_REQ + SSL_REQ + alice,
        SSL_REQ + SSL_REQ,
        GSS_REQ + SSL_REQ + GSS_REQ,
        bytes([0, 0, 0, 0x0C, 0x04, 0xD2, 0x16, 0x2F, 0, 0, 0, 0]),
        bytes([0, 0, 0, 0x09, 0x04, 0xD2, 0x16, 0x30, 0]),
        startup(0x00030002, carol),
        startup(0x0003270F, carol),
        startup(0x00030000, ["application_name", "u" * 199, "user", "u" * 199]),
        bytes([0, 0, 0x27, 0x19, 0, 3, 0, 0]),
        bytes([0, 0, 0x27, 0x15, 0, 3, 0, 0]),
        bytes([0x7F, 0xFF, 0xFF, 0xFF]),
        bytes([0, 0, 0, 7, 0, 3, 0]),
        bytes([0, 0, 0, 0]),
        SSL_REQ + bytes([0, 0, 0, 0]),
        hello,
        SSL_REQ + hello,
        cancel(bytes([0, 0, 0x30, 0x39, 0xDE, 0xAD, 0xBE, 0xEF])[4:]),
        SSL_REQ + cancel(bytes((i * 7) & 0xFF for i in range(12, 44))),
        cancel(b"\x11"),
        cancel(b"\x11" * 256),
        cancel(b"")[:12],
        be32(12 + 257) + be32(80877102) + b"\x11" * 261,
        STARTUP_BOB + b"Q\0\0\0\x0dSELECT 1",
        startup(0x00020000, ["user", "bob"]),
        startup(0x00040000, ["user", "bob"]),
        startup((1234 << 16) | 9999, ["user", "bob"]),
        GSS_REQ + startup(0x00030000, ["database", "db", "user", "x"]),
    ]
    layouts = [b"", b"user\0bob\0", b"user\0bob", b"user", b"user\0", b"user\0bob\0\0X",
               b"user\0bob\0database\0\0", b"database\0db\0\0", b"user\0\0\0", b"\0"]
    streams += [be32(8 + len(b)) + be32(0x00030000) + b for b in layouts]
    seeds = []
    for i, s in enumerate(streams):
        seeds += with_cuts(s, variants=CUTS if i < 6 else CUTS[i % 4:i % 4 + 1])
    return seeds


def tagged(t, body):
    return t + be32(4 + len(body)) + body


SASL_BOTH = b"R\0\0\0\x2a\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"
MD5_REQ = bytes([ord("R"), 0, 0, 0, 12, 0, 0, 0, 5, 0xA1, 0xB2, 0xC3, 0xD4])
NEG_VERSION = b"v\0\0\0\x15\0\x03\0\0\0\0\0\x01_pq_.foo\0"


def pg_server_seeds():
    notice = b"N\0\0\0\x0dSNOTICE\0\0"
    err = b"E\0\0\0\x17SFATAL\0C28000\0Mno\0\0"
    ok = bytes([ord("R"), 0, 0, 0, 8, 0, 0, 0, 0])
    streams = [
        SASL_BOTH,
        b"R\0\0\0\x36\0\0\0\x0aOAUTHBEARER\0SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0",
        b"R\0\0\0\x1c\0\0\0\x0aSCRAM-SHA-256-PLUS\0\0",
        bytes([ord("R"), 0, 0, 0, 13, 0, 0, 0, 10]) + b"SCRAM",
        b"R\0\0\0\x16\0\0\0\x0aSCRAM-SHA-256\0",
        b"R\0\0\0\x18\0\0\0\x0aSCRAM-SHA-256\0\0X",
        bytes([ord("R"), 0, 0, 0, 9, 0, 0, 0, 10, 0]),
        bytes([ord("R"), 0, 0, 0, 6, 0, 0]),
        NEG_VERSION + MD5_REQ,
        notice + err + b"junk",
        ok + b"S\0\0\0\x16server_version\x0017\0Z",
        b"N" + be32(3000) + b"x" * 2996 + MD5_REQ,
        b"N" + be32(16384),
        b"N" + be32(0xFFFFFFFF),
        b"N" + be32(3),
        NEG_VERSION + b"R\0\0\0\x02",
        tagged(b"S", b"client_encoding\0UTF8\0") + tagged(b"R", be32(3)),
        tagged(b"R", be32(10) + b"SCRAM-SHA-1-PLUS\0X-PLUS\0SCRAM-SHA-1\0\0") + b"R",
        tagged(b"R", be32(10) + b"-PLUS\0PLUS\0\0"),
    ]
    seeds = []
    for i, s in enumerate(streams):
        seeds += with_cuts(s, variants=CUTS if i < 4 else CUTS[i % 4:i % 4 + 1])
    return seeds


def pg_ssl_answer_seeds():
    return [b"S", b"N", b"EFATAL: click http://evil.example/", b"SE", b"S\x16\x03\x03\x00",
            b"SR\0\0\0\x08\0\0\0\0", b"\x16", b"\0", b"\xff", b"G", b"S\x15\x03\x03\x00\x02"]


# ---- MySQL / MariaDB (tests/unit/test_mysql.c) ----

MARIADB_GREETING = (
    b"\x0a5.5.5-10.11.6-MariaDB-0+deb12u1\0" + b"\x2a\0\0\0" + b"T4e!7W[)" + b"\0"
    + b"\xfe\xff" + b"\x2d" + b"\x02\x00" + b"\xff\x81" + b"\x15" + b"\0" * 6 + b"\x1d\0\0\0"
    + b"Mp<5q#r9&XkL\0" + b"mysql_native_password\0")
MYSQL8_GREETING = (
    b"\x0a8.0.36\0" + b"\x0b\0\0\0" + bytes([0x10, 0x22, 0x3c, 0x47, 0x51, 0x6e, 0x71, 0x08])
    + b"\0" + b"\xff\xff" + b"\xff" + b"\x02\x00" + b"\xff\xdf" + b"\x15" + b"\0" * 10
    + bytes([0x2a, 0x17, 0x63, 0x45, 0x39, 0x5d, 0x1a, 0x70, 0x66, 0x33, 0x21, 0x48])
    + b"\0caching_sha2_password\0")
MYSQL8_NONCE = bytes([0x10, 0x22, 0x3c, 0x47, 0x51, 0x6e, 0x71, 0x08, 0x2a, 0x17, 0x63, 0x45,
                      0x39, 0x5d, 0x1a, 0x70, 0x66, 0x33, 0x21, 0x48])
RESPONSE_HEADER = bytes([0x8c, 0xa6, 0x3f, 0x00, 0x00, 0x00, 0x00, 0x01, 0x2d]) + b"\0" * 19 \
    + bytes([0x1d, 0, 0, 0])
OK_PAYLOAD = bytes([0, 0, 0, 2, 0, 0, 0])

F_RSA, F_UNIX, F_TLS_FAIL, F_CONTEXT, F_TLS_LATE = 0x08, 0x10, 0x20, 0x40, 0x80


def pkt(seq, payload):
    return struct.pack("<I", len(payload))[:3] + bytes([seq & 0xFF]) + payload


def lenenc_str(s):
    return bytes([len(s)]) + s


def response(user=b"app", auth_len=20, db=b"shop", plugin=b"mysql_native_password",
             program=b"mariadb", flags=None):
    head = RESPONSE_HEADER if flags is None else struct.pack("<I", flags) + RESPONSE_HEADER[4:]
    attrs = (lenenc_str(b"_client_name") + lenenc_str(b"libmariadb") + lenenc_str(b"program_name")
             + lenenc_str(program))
    return (head + user + b"\0" + bytes([auth_len]) + bytes(0x90 + i for i in range(auth_len))
            + db + b"\0" + plugin + b"\0" + bytes([len(attrs)]) + attrs)


def server(data):
    return b"\x00" + le16(len(data)) + data


def client(data):
    return b"\x01" + le16(len(data)) + data


def give_up(reason):
    return bytes([2 + 3 * reason])


def login(greeting, plugin, auth_len, flags=None):
    return server(pkt(0, greeting)) + client(pkt(1, response(auth_len=auth_len, plugin=plugin,
                                                             flags=flags)))


def rsa_key():
    from cryptography.hazmat.primitives import serialization
    text = (HERE / "fuzz_rsa_key.h").read_text()
    pem = "\n".join(re.findall(r'^\s*"([^"]*)\\n"', text, re.M)) + "\n"
    return serialization.load_pem_private_key(pem.encode(), password=None)


def client_blob(key, nonce, password):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    pw = password + b"\0"
    x = bytes(b ^ nonce[i % len(nonce)] for i, b in enumerate(pw))
    return key.public_key().encrypt(x, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()),
                                                    algorithm=hashes.SHA1(), label=None))


def change_user(user, plugin):
    p = b"\x11" + user + b"\0" + bytes([20]) + b"\x77" * 20 + b"shop\0" + b"\x2d\x00" + plugin \
        + b"\0"
    return pkt(0, p)


def mysql_seeds():
    key = rsa_key()
    full_auth = b"\x01\x04"
    native = login(MARIADB_GREETING, b"mysql_native_password", 20)
    csha2 = login(MYSQL8_GREETING, b"caching_sha2_password", 32)
    ok = lambda seq: pkt(seq, OK_PAYLOAD)
    relay = native + server(ok(3))
    query = pkt(0, b"\x03select 1")
    result = bytes([0x01, 0, 0, 0x01, 0x01, 0x05, 0, 0, 0, 0x11, 0x22, 0x33, 0x44, 0x11, 0, 0,
                    0, 0x11])
    sessions = []  # (flags, payload)
    sessions.append((0, server(pkt(0, MARIADB_GREETING))))
    sessions.append((0, server(pkt(0, MYSQL8_GREETING))))
    sessions.append((0, relay))
    sessions.append((0, csha2 + server(pkt(3, b"\x01\x03")) + server(ok(4))))
    blob = client_blob(key, MYSQL8_NONCE, b"password")
    sessions.append((F_RSA, csha2 + server(pkt(3, full_auth)) + client(pkt(3, b"\x02"))
                     + client(pkt(5, blob)) + server(ok(5))))
    sessions.append((F_RSA, csha2 + server(pkt(3, full_auth)) + client(pkt(3, b"\x02"))
                     + client(pkt(5, b"\x42" * 256))))
    sessions.append((0, csha2 + server(pkt(3, full_auth)) + client(pkt(3, b"\x02"))))
    sessions.append((F_UNIX, csha2 + server(pkt(3, full_auth)) + client(pkt(3, b"s3cret\0"))
                     + server(ok(5))))
    sessions.append((0, csha2 + server(pkt(3, full_auth)) + client(pkt(3, b"s3cret\0"))))
    sw = b"\xfesha256_password\0" + b"0123456789abcdefghij" + b"\0"
    sessions.append((F_RSA, csha2 + server(pkt(3, sw)) + client(pkt(3, b"\x01"))
                     + client(pkt(5, client_blob(key, b"0123456789abcdefghij", b"pa55")))
                     + server(ok(5))))
    sw_native = b"\xfemysql_native_password\0ABCDEFGHIJKLMNOPQRST\0"
    sessions.append((0, login(MARIADB_GREETING, b"caching_sha2_password", 32)
                     + server(pkt(3, sw_native)) + client(pkt(3, b"\x5a" * 20)) + server(ok(5))))
    nonce2 = b"NEWNONCE-0123456789!"
    sw2 = b"\xfecaching_sha2_password\0" + nonce2 + b"\0"
    sessions.append((F_RSA, relay + client(query) + server(result)
                     + client(change_user(b"bob", b"mysql_native_password"))
                     + server(pkt(1, sw2)) + client(pkt(2, b"\x3c" * 32))
                     + server(pkt(3, full_auth)) + client(pkt(4, b"\x02"))
                     + client(pkt(6, client_blob(key, nonce2, b"hunter2"))) + server(ok(5))
                     + client(query) + server(result)))
    load = pkt(0, b"\x03LOAD DATA LOCAL INFILE 'f' INTO TABLE t")
    data = b"".join(pkt(seq, b"\x11ab\n" if seq == 256 else b"row\n") for seq in range(2, 258))
    data += pkt(2, b"")
    sessions.append((0, relay + client(load) + server(pkt(1, b"\xfbf")) + client(data)
                     + server(ok(3)) + client(change_user(b"carol", b"mysql_native_password"))
                     + server(ok(1))))
    big = b"\xff\xff\xff\x00\x03" + b"\x05\x00\x00\x00\x11" * 40
    sessions.append((0, relay + client(big)))
    g = bytearray(MARIADB_GREETING)
    g[47] &= 0xF7  # no CLIENT_SSL
    sessions.append((0, server(pkt(0, bytes(g)))))
    sessions.append((0, server(pkt(0, b"\xff\x10\x04Too many connections"))))
    sessions.append((0, server(bytes([0x01, 0x00, 0x01, 0x00, 0x0a, 0x35]))))
    ssl_request = pkt(1, bytes([0x8c, 0xae, 0x3f, 0, 0, 0, 0, 0x01, 0x2d]) + b"\0" * 19
                      + bytes([0x1d, 0, 0, 0]))
    sessions.append((0, server(pkt(0, MARIADB_GREETING)) + client(ssl_request)))
    sessions.append((0, server(pkt(0, MARIADB_GREETING)) + client(b"\x01\x00\x01\x01\x8c")))
    sessions.append((0, client(b"\x01\x00\x00\x01\x00")))
    sessions.append((0, server(pkt(0, MARIADB_GREETING)) + server(b"\x01\x00\x00\x01\x00")))
    sessions.append((0, csha2 + server(ok(4))))
    sessions.append((0, give_up(7)))  # upstream unreachable before the greeting
    sessions.append((F_CONTEXT, csha2 + give_up(23)))
    sessions.append((F_TLS_FAIL, csha2))
    sessions.append((F_CONTEXT, relay + client(query) + give_up(20)))
    compress = 0x3fa68c | 0x20
    sessions.append((0, login(MARIADB_GREETING, b"mysql_native_password", 20, flags=compress)
                     + server(ok(3)) + client(change_user(b"eve", b"x")) + server(result)))
    mfa = 0x3fa68c | 0x10000000 | 0x200000
    sessions.append((0, login(MYSQL8_GREETING, b"caching_sha2_password", 32, flags=mfa)
                     + server(pkt(3, b"\x02authentication_fido_client\0nonce-data")) +
                     client(pkt(3, b"fido")) + server(ok(5))))
    sessions.append((0, native + server(pkt(3, b"\xfe")) + client(pkt(3, b"oldpw\0"))
                     + server(pkt(5, b"\xff\x15\x04#28000Access denied"))))
    sessions.append((F_RSA, csha2 + server(pkt(3, full_auth)) + client(pkt(3, b"\x02"))
                     + client(pkt(5, b"\x02"))))  # the key asked for twice
    sessions.append((0, csha2 + give_up(24)))  # limit_reached: 1040
    sessions.append((F_TLS_LATE, csha2 + client(b"\x01") + give_up(0) + server(ok(3))))
    sessions.append((F_TLS_LATE, csha2 + server(b"\x16\x03\x03")))
    sessions.append((F_TLS_LATE | F_TLS_FAIL, csha2 + client(b"") + give_up(0)))
    seeds = []
    for i, (flags, payload) in enumerate(sessions):
        seeds += with_cuts(payload, flags, CUTS if i < 5 else CUTS[i % 4:i % 4 + 1])
    return seeds


# ---- bundles ----

CERTS = HERE / "certs"  # outside corpus/: libFuzzer reads corpus directories recursively
FILE_SEP = b"\n@@next-file@@\n"


def make_certs():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dbtrust fuzz"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(cn, key, issuer_name, issuer_key, ca, start, end, path_len=None):
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(issuer_name)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(start).not_valid_after(end)
             .add_extension(x509.BasicConstraints(ca=ca, path_length=path_len), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                            critical=False))
        if issuer_key is not key:
            b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer_key.public_key()), critical=False)
        if not ca:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("db.example.com")]),
                                critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    d = datetime.datetime
    valid = (d(2025, 1, 1), d(2035, 1, 1))
    keys = {n: ec.generate_private_key(ec.SECP256R1()) for n in
            ["root", "root2", "inter", "leaf", "expired", "future"]}
    out = {}
    out["root"] = cert("Fuzz Root CA", keys["root"], name("Fuzz Root CA"), keys["root"], True,
                       *valid)
    out["root2"] = cert("Fuzz Root CA 2", keys["root2"], name("Fuzz Root CA 2"), keys["root2"],
                        True, *valid)
    out["inter"] = cert("Fuzz Intermediate", keys["inter"], name("Fuzz Root CA"), keys["root"],
                        True, *valid, path_len=0)
    out["leaf"] = cert("db.example.com", keys["leaf"], name("Fuzz Intermediate"), keys["inter"],
                       False, *valid)
    out["expired"] = cert("Fuzz Expired Root", keys["expired"], name("Fuzz Expired Root"),
                          keys["expired"], True, d(2015, 1, 1), d(2020, 1, 1))
    out["future"] = cert("Fuzz Future Root", keys["future"], name("Fuzz Future Root"),
                         keys["future"], True, d(2030, 1, 1), d(2040, 1, 1))
    CERTS.mkdir(parents=True, exist_ok=True)
    for n, c in out.items():
        (CERTS / f"{n}.pem").write_bytes(c.public_bytes(serialization.Encoding.PEM))
    (CERTS / "root.der").write_bytes(out["root"].public_bytes(serialization.Encoding.DER))
    (CERTS / "key.pem").write_bytes(keys["leaf"].private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    # TRUSTED CERTIFICATE form (trust settings after the DER): only openssl writes it
    trusted = subprocess.run(["openssl", "x509", "-in", str(CERTS / "root2.pem"), "-trustout",
                              "-addtrust", "serverAuth"], check=True, capture_output=True).stdout
    (CERTS / "trusted.pem").write_bytes(trusted)
    make_crls(out, keys, name)


def make_crls(certs, keys, name):
    """CRLs for the bundle seeds (issue 17): the root's revoking the intermediate, the
    intermediate's revoking the leaf, a stale one (nextUpdate before the harness's NOW), one with
    the intermediate's name signed by another key (the daemon refuses it), a delta CRL."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    d = datetime.datetime

    def crl(issuer, key, revoked, this, nxt, number, delta_of=None):
        b = (x509.CertificateRevocationListBuilder().issuer_name(name(issuer))
             .last_update(this).next_update(nxt)
             .add_extension(x509.CRLNumber(number), critical=False))
        if delta_of is not None:
            b = b.add_extension(x509.DeltaCRLIndicator(delta_of), critical=True)
        for c in revoked:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(c.serial_number)
                .revocation_date(d(2025, 6, 1))
                .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
                .build())
        return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    fresh = (d(2025, 12, 1), d(2034, 1, 1))
    crls = {
        "root-crl": crl("Fuzz Root CA", keys["root"], [certs["inter"]], *fresh, 1),
        "inter-crl": crl("Fuzz Intermediate", keys["inter"], [certs["leaf"]], *fresh, 2),
        "stale-crl": crl("Fuzz Intermediate", keys["inter"], [], d(2025, 5, 1), d(2025, 6, 1), 1),
        "forged-crl": crl("Fuzz Intermediate", keys["root2"], [certs["leaf"]], *fresh, 3),
        "delta-crl": crl("Fuzz Intermediate", keys["inter"], [certs["leaf"]], *fresh, 4,
                         delta_of=2),
    }
    for n, data in crls.items():
        (CERTS / f"{n}.pem").write_bytes(data)


def bundle_seeds(regen):
    if regen or not (CERTS / "inter-crl.pem").exists():
        if CERTS.exists():
            shutil.rmtree(CERTS)
        make_certs()
    c = {p.stem: p.read_bytes() for p in CERTS.glob("*.pem")}
    der = (CERTS / "root.der").read_bytes()
    root, inter, leaf = c["root"], c["inter"], c["leaf"]
    crlf = root.replace(b"\n", b"\r\n")
    lines = root.split(b"\n")
    comments = (b"\xef\xbb\xbf##\n## Bundle of CA Root Certificates\n##\n\nGlobalSign Root CA\n"
                b"==================\n# Issuer: CN=T\xc3\xbcrk Root\n"
                b"# -----BEGIN CERTIFICATE----- (commented out)\n"
                b"3014ead11bd0033f08fc8ede9c0ab7ae991447efae40150a18d0d6b25bf0b6ba\n"
                b"Certificate:\n    Data:\n        Version: 3 (0x2)\n"
                b"----------------------------------------\n")
    bad_b64 = b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
    not_der = b"-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n"
    return [
        root,
        root + inter,
        root + inter + leaf,
        inter,
        leaf,
        root + root,
        c["expired"],
        c["future"],
        c["trusted"] + root,
        comments + crlf,
        root + bad_b64,
        root[:len(root) // 2],
        not_der,
        b"# oops\n" + c["key"],
        root + b"\x01\x02\x7f binary\n" + c["root2"],
        root + root[1:],
        root + b"\n" + b"\n".join(lines[1:-2]) + b"\n",
        der,
        b"",
        b"# nothing here yet\n\n",
        root + FILE_SEP + inter,
        inter + FILE_SEP + root + FILE_SEP + root,
        leaf + FILE_SEP + b"" + FILE_SEP + der,
        c["root2"] + c["expired"] + c["future"],
        # Not here: blocks inspect passes and the daemon refuses (an encrypted certificate, a
        # malformed CRL or key) are reproducers of a reported bug, in regressions/bundle/.
        root.replace(b"CERTIFICATE", b"X509 CERTIFICATE"),
        # CRLs (issue 17): checked against the CAs of the input, newest per issuer kept
        root + inter + c["root-crl"] + c["inter-crl"],
        root + inter + c["inter-crl"] + c["stale-crl"] + c["delta-crl"],
        root + inter + c["forged-crl"],
        root + c["inter-crl"],
        root + inter + FILE_SEP + c["inter-crl"] + c["inter-crl"],
        root + c["root-crl"].replace(b"\n", b"\r\n"),
        root + c["root-crl"][:len(c["root-crl"]) // 2],
    ]


# ---- configuration ----

def conf_seeds():
    example = (REPO / "docker/dbtrust.example.ini").read_bytes()
    long_up = "upstream = " + " , ".join(f"replica-{i}.mysql.database.azure.com"
                                         for i in range(8)) + "   ; eight of them\n"
    texts = [
        example,
        example.replace(b"; [listener.shop]", b"[listener.shop]").replace(b"\n; ", b"\n"),
        b"\xef\xbb\xbf[dbtrust]\r\n# a comment\r\n  user = nobody   # inline hash comment\r\n"
        b"  workers = 3\t; inline semicolon comment\r\n\tlog_level = warn\r\n"
        b"[trust] ; after a header\r\nbundle = /a;b#c.pem\r\n",
        ("[listener.long]\nprotocol = mysql\nlisten = 127.0.0.1:3306\n" + long_up
         + "max_connections = 9\n").encode(),
        b"[dbtrust]\n" + b"x" * 300 + b"\n",
        b"[dbtrust]\nadmin = [::1]:9999\nworkers = 4\nlog_format = JSON\nlog_level = debug\n"
        b"drain_timeout = 0\nuser = nobody\n[trust]\nbundle = /b.pem\nverify = ca\n"
        b"min_tls = 1.3\nreload_interval = 500ms\nguard = off\n"
        b"pin = sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=, "
        b"sha256/r/mIkG3eEpVdm+u/ko/cwxzOMo1bk4TyHIlByibiA5E=\n"
        b"[listener.a_1.x]\nprotocol = postgresql\nlisten = [::]:6432\nupstream = 10.0.0.7\n"
        b"server_name = db.internal\nbundle = /own.pem\nconnect_timeout = 2m\n"
        b"handshake_timeout = 1h\nupstream_dead_timeout = 7\nstartup_timeout = 1500ms\n"
        b"max_connections = 1000000\n",
        b"[listener.pg]\nupstream = a.example.com, [2001:db8::5]:6000 ,10.1.2.3\n"
        b"protocol = postgres\nlisten = 127.0.0.1:5432\n"
        b"[listener.my]\nprotocol = mysql\nlisten = unix:/tmp/my.sock\nupstream = db\n"
        b"mysql_rsa_key = /etc/dbtrust/rsa.pem\n",
        b"[dbtrust]\nworkers = 2\n\nnot a key value line\n",
        b"[dbtrust\nworkers = 2\n",
        b"workers = 2\n",
        b"[trust]\nbundle = /x\x02y\n",
        b"; top\n\n[trust]\nbundle = /x\n[tls]\nmin = 1\n",
        b"[listener.x]\nprotocol = postgres\nlisten = 127.0.0.1:1\nupstream = db\n\n\n"
        b"connect_timeout = abc\n",
        b"[listener.x]\nconnect_timeout = 0s\n",
        b"[dbtrust]\nworkers = 257\n",
        b"[trust]\nmin_tls = 1.1\nguard = maybe\n",
        b"[trust]\npin = sha256/short\n",
        b"[dbtrust]\nadmin = unix:/run/a.sock\n",
        b"[dbtrust]\nworkers = 1\nworkers = 2\n",
        b"[trust]\nbundle = /a\n[dbtrust]\n[trust]\n",
        b"[listener.pg]\nprotocol = postgres\nlisten = 0.0.0.0:5432\nupstream = a\n"
        b"[listener.my]\nprotocol = mysql\nupstream = b\nlisten = 127.0.0.1:5432\n",
        b"[listener.a]\nprotocol = mysql\nlisten = unix:/run/s\nupstream = a\n"
        b"[listener.b]\nprotocol = mysql\nlisten = unix:/run/s\nupstream = b\n",
        b"[dbtrust]\n[listener.empty]\n",
        b"[listener.]\n[listener.a b]\n",
        b"[listener.x]\nupstream = a,b,c,d,e,f,g,h,i\n",
        b"[listener.x]\nupstream = unix:/run/db.sock\nlisten = [::1:5432\n",
        b"[listener.pg]\nprotocol = postgres\nlisten = 127.0.0.1:5432\nupstream = a\n"
        b"mysql_rsa_key = /k.pem\n",
        b"[listener.central]\nprotocol = postgres\nlisten = 0.0.0.0:5432\nupstream = db\n"
        b"client_tls = require\nclient_cert = /etc/dbtrust/tls/tls.crt\n"
        b"client_key = /etc/dbtrust/tls/tls.key\nclient_ca = /etc/dbtrust/clients-ca.pem\n"
        b"client_names = app1.internal, CN=legacy-batch, spiffe://cluster.local/ns/a/sa/b\n"
        b"client_allow = 10.0.0.0/8, 192.0.2.7, fd00::/8, ::1, 0.0.0.0/0, ::/0\n",
        b"[listener.x]\nprotocol = mysql\nlisten = [::]:3306\nupstream = db\n"
        b"client_tls = allow\nclient_cert = /tls.pem\nclient_key = /tls.pem\n"
        b"client_allow = 10.0.0.1/8, ::ffff:10.0.0.0/104, 10.0.0.0/33\n",
        b"[listener.x]\nprotocol = postgres\nlisten = 127.0.0.1:1\nupstream = db\n"
        b"client_names = CN=x\nclient_tls = require\n",
        b"[listener.u]\nprotocol = mysql\nlisten = unix:/run/u.sock\nupstream = db\n"
        b"client_tls = require\nclient_allow = 192.0.2.0/24\n",
        # the command-line form: listen, upstream, protocol, bundle, server name (one per line)
        b"127.0.0.1:6432\ndb.example.com:5432\npostgres\n/etc/dbtrust/ca.pem\ndb.internal\n",
        b"unix:/run/dbtrust/my.sock\n[2001:db8::1]\nmysql\n/ca.pem\n",
        b"[::1]:5432\n10.0.0.256\npg\n\n",
        b"5s\n500ms\n2m\n1193h\n4294967296ms\n",
    ]
    return texts


def dicts():
    return {
        "pg.dict": ["\\x04\\xd2\\x16\\x2f", "\\x04\\xd2\\x16\\x30", "\\x04\\xd2\\x16\\x2e",
                    "\\x00\\x03\\x00\\x00", "\\x00\\x03\\x00\\x02", "user\\x00", "database\\x00",
                    "application_name\\x00", "options\\x00", "_pq_.", "SCRAM-SHA-256\\x00",
                    "SCRAM-SHA-256-PLUS\\x00", "-PLUS\\x00", "\\x00\\x00\\x00\\x0a",
                    "\\x00\\x00\\x00\\x05", "\\x00\\x00\\x00\\x08", "R\\x00\\x00\\x00",
                    "E\\x00\\x00\\x00", "N\\x00\\x00\\x00", "v\\x00\\x00\\x00", "\\x16\\x03\\x01"],
        "mysql.dict": ["caching_sha2_password\\x00", "mysql_native_password\\x00",
                       "sha256_password\\x00", "mysql_old_password\\x00", "\\x01\\x04",
                       "\\x01\\x03", "\\xfe", "\\xff", "\\x11", "\\x0a", "program_name",
                       "_client_name", "\\x00\\x08", "\\xff\\xf7", "\\x8c\\xa6\\x3f\\x00",
                       "\\x8c\\xae\\x3f\\x00", "\\xff\\xff\\xff\\x00", "\\x00\\x00\\x00\\x02",
                       "\\x00\\x01", "\\x01\\x01", "\\x00\\x01\\x00", "\\x01\\x10\\x00",
                       "\\xfc\\x00\\x01", "\\xfb"],
        "pem.dict": ["-----BEGIN CERTIFICATE-----\\x0a", "-----END CERTIFICATE-----\\x0a",
                     "-----BEGIN TRUSTED CERTIFICATE-----", "-----END TRUSTED CERTIFICATE-----",
                     "-----BEGIN X509 CERTIFICATE-----", "-----BEGIN PRIVATE KEY-----",
                     "-----BEGIN X509 CRL-----", "Proc-Type: 4,ENCRYPTED\\x0a",
                     "DEK-Info: AES-128-CBC,", "\\x0a@@next-file@@\\x0a", "\\xef\\xbb\\xbf",
                     "\\x0d\\x0a", "# ", "-----", "MII", "=\\x0a"],
        "ini.dict": ["[dbtrust]", "[trust]", "[listener.", "protocol = ", "listen = ",
                     "upstream = ", "server_name = ", "bundle = ", "connect_timeout = ",
                     "handshake_timeout = ", "upstream_dead_timeout = ", "startup_timeout = ",
                     "max_connections = ", "mysql_rsa_key = ", "admin = ", "workers = ",
                     "log_format = ", "log_level = ", "drain_timeout = ", "user = ",
                     "verify = ", "min_tls = ", "reload_interval = ", "guard = ", "pin = ",
                     "client_tls = ", "client_cert = ", "client_key = ", "client_ca = ",
                     "client_names = ", "client_allow = ", "allow", "require", "off", "CN=",
                     "spiffe://", "/8", "/128", "::ffff:", "0.0.0.0/0", "::/0",
                     "sha256/", "unix:/", "[::1]:", "127.0.0.1:", "postgres", "mysql", "ms",
                     " ; ", " # ", "\\x0d\\x0a", "\\xef\\xbb\\xbf", ", "],
    }


def write_dicts():
    for name, entries in dicts().items():
        with open(HERE / name, "w") as f:
            f.write(f"# libFuzzer dictionary for tests/fuzz ({name}), written by make_seeds.py\n")
            for i, e in enumerate(entries):
                f.write(f'kw{i}="{e}"\n')


def main():
    regen = "--regen-certs" in sys.argv[1:]
    write_corpus("pg_client", pg_client_seeds())
    write_corpus("pg_server", pg_server_seeds())
    write_corpus("pg_ssl_answer", pg_ssl_answer_seeds())
    write_corpus("mysql", mysql_seeds())
    write_corpus("bundle", bundle_seeds(regen))
    write_corpus("conf", conf_seeds())
    write_dicts()


if __name__ == "__main__":
    main()
