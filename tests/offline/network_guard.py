"""Network switched off for the test suite: any connection to a host that is not this machine fails.

``install()`` wraps the socket layer (name lookups, connects) so that only loopback addresses and local
socket files work; every refused attempt is also written to stderr as ``NETWORK BLOCKED: …``, so a test can
show that nothing even tried. The suite installs it in-process (``tests/conftest.py``) and in every trainer
subprocess (``sitecustomize.py`` beside this file, put on ``PYTHONPATH`` by ``tests/trainer_helpers.py``).
"""
from __future__ import annotations

import ipaddress
import socket
import sys

LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}
MARK = "NETWORK BLOCKED"


class NetworkBlocked(OSError):
    """A connection to another machine was attempted while the network is switched off."""


def _is_local_host(host) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).strip("[]").lower()
    if host in LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _refuse(what: str, target) -> None:
    print(f"{MARK}: {what} {target!r}", file=sys.stderr, flush=True)
    raise NetworkBlocked(f"network access is switched off in this process ({what} {target!r})")


def _address_host(address):
    if isinstance(address, tuple) and address:
        return address[0]
    return None  # AF_UNIX paths and the like stay on this machine


def install() -> None:
    """Switch the network off in this process (idempotent)."""
    if getattr(socket, "_lora_loom_guarded", False):
        return
    real_getaddrinfo, real_connect, real_connect_ex = socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex

    def getaddrinfo(host, *args, **kwargs):
        if not _is_local_host(host):
            _refuse("name lookup", host)
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local_host(_address_host(address)):
            _refuse("connect", address)
        return real_connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local_host(_address_host(address)):
            _refuse("connect", address)
        return real_connect_ex(self, address)

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket._lora_loom_guarded = True
