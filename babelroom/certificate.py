"""A self-signed certificate for trying BabelRoom on a LAN (`babelroom up --https`).

Browsers give the microphone and camera only to HTTPS pages (and to localhost), so a participant on
another machine needs HTTPS. This makes, with `cryptography`, one certificate for the host's names
and addresses, keeps it in a folder, and reuses it on the next start while it still covers them:
each participant then accepts it once, and can compare its SHA-256 fingerprint with the one printed.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import shutil
import socket
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 825  # the longest validity Apple's and Google's browsers accept for a server certificate
RENEW_BEFORE_DAYS = 30  # a kept certificate this close to its end is made afresh
CERT_FILE, KEY_FILE = "cert.pem", "key.pem"

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path
    fingerprint: str  # SHA-256 of the certificate, colon-separated hex, as browsers show it
    created: bool  # False: the kept one was reused


def host_names() -> list[str]:
    names = {"localhost", socket.gethostname(), socket.getfqdn()}
    return sorted(name for name in names if name)


def host_addresses() -> list[IpAddress]:
    """The addresses of this host's interfaces (from `ip`, else its name's), loopback included."""
    found: set[IpAddress] = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    ip = shutil.which("ip")
    if ip:
        listing = subprocess.run([ip, "-j", "addr", "show"], capture_output=True, text=True, check=False)
        for link in json.loads(listing.stdout or "[]"):
            found.update(ipaddress.ip_address(a["local"]) for a in link.get("addr_info", []) if "local" in a)
    else:
        for *_, sockaddr in socket.getaddrinfo(socket.gethostname(), None):
            found.add(ipaddress.ip_address(sockaddr[0]))
    return sorted((a for a in found if not a.is_link_local), key=lambda a: (a.version, int(a)))


def ensure_certificate(folder: Path, names: Iterable[str], addresses: Iterable[IpAddress]) -> Certificate:
    """The certificate kept in `folder` if it covers `names` and `addresses` and is not near its end;
    otherwise a new one (a new key too), written there with the key readable by its owner only."""
    names, addresses = sorted(set(names)), sorted(set(addresses), key=lambda a: (a.version, int(a)))
    cert_path, key_path = folder / CERT_FILE, folder / KEY_FILE
    if cert_path.is_file() and key_path.is_file():
        kept = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if _covers(kept, names, addresses):
            return Certificate(cert_path, key_path, fingerprint(kept), created=False)
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _self_signed(key, names, addresses)
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_path.unlink(missing_ok=True)
    key_path.touch(mode=0o600)
    key_path.write_bytes(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Certificate(cert_path, key_path, fingerprint(cert), created=True)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def spki_sha256_base64(cert_path: Path) -> str:
    """Base64 of the SHA-256 of the certificate's public key (what Chromium's
    --ignore-certificate-errors-spki-list takes, and HPKP-style pins)."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    return base64.b64encode(digest.finalize()).decode("ascii")


def default_folder(env: Mapping[str, str]) -> Path:
    """BABELROOM_TLS_DIR, else the user's data folder (XDG_DATA_HOME or ~/.local/share)/babelroom/tls."""
    data = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(env.get("BABELROOM_TLS_DIR") or Path(data) / "babelroom" / "tls")


def _covers(cert: x509.Certificate, names: list[str], addresses: list[IpAddress]) -> bool:
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    if left < datetime.timedelta(days=RENEW_BEFORE_DAYS):
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return set(names) <= set(san.get_values_for_type(x509.DNSName)) and set(addresses) <= set(
        san.get_values_for_type(x509.IPAddress)
    )


def _self_signed(key: ec.EllipticCurvePrivateKey, names: list[str], addresses: list[IpAddress]) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "babelroom")])
    now = datetime.datetime.now(datetime.UTC)
    alternatives: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    alternatives += [x509.IPAddress(a) for a in addresses]
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
