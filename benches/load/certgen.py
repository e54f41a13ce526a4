#!/usr/bin/env python3
"""Writes many ECDSA P-256 leaf certificates into a `tls.cert_dir` fast, for the
certificate-scale scenario of `compare.py --tls`: one leaf key shared by every
certificate (a bench needs many certificates, not many keys), each leaf signed by
the given CA and naming `appI.SUFFIX` and `*.appI.SUFFIX`, written as
`NAME.crt` (leaf + CA) and `NAME.key`. Needs the `cryptography` package
(Debian: python3-cryptography); `compare.py` runs it with an interpreter that
has it.

    certgen.py --ca-cert ca.crt --ca-key ca.key --dir DIR --suffix example.test \
        --indices 0-9999 --skip 5000
"""

import argparse
import datetime
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ca-cert", required=True)
    parser.add_argument("--ca-key", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--suffix", required=True)
    parser.add_argument("--indices", required=True, help="FIRST-LAST, inclusive")
    parser.add_argument("--skip", type=int, action="append", default=[])
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()
    first, last = (int(x) for x in args.indices.split("-"))
    if not 0 <= first <= last or last - first >= 1_000_000:
        parser.error("--indices must be FIRST-LAST with at most 1,000,000 certificates")

    with open(args.ca_cert, "rb") as f:
        ca_pem = f.read()
    ca_cert = x509.load_pem_x509_certificate(ca_pem)
    with open(args.ca_key, "rb") as f:
        ca_key = serialization.load_pem_private_key(f.read(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before = now - datetime.timedelta(hours=1)
    not_after = now + datetime.timedelta(days=args.days)
    key_usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=False,
        crl_sign=False, encipher_only=False, decipher_only=False,
    )
    os.makedirs(args.dir, exist_ok=True)
    skip = set(args.skip)
    written = 0
    for i in range(first, last + 1):
        if i in skip:
            continue
        host = f"app{i}.{args.suffix}"
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(host), x509.DNSName(f"*.{host}")]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        name = f"app{i}"
        with open(os.path.join(args.dir, f"{name}.crt"), "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM) + ca_pem)
        path = os.path.join(args.dir, f"{name}.key")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(key_pem)
        written += 1
    print(written)


if __name__ == "__main__":
    sys.exit(main())
