"""What the tests of launched commands look at from outside: the processes a command started (found by
a marker variable the test puts in its environment, which every child inherits), their listening
sockets, and a clean-up that ends only those processes."""
from __future__ import annotations

import ipaddress
import uuid

import psutil

MARKER = "THYME_TEST_MARKER"


def new_marker() -> str:
    return uuid.uuid4().hex


def marked(marker: str) -> list[psutil.Process]:
    """Live processes whose environment carries MARKER=marker (zombies excluded)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(MARKER) == marker:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def listening(marker: str) -> dict[tuple[str, int], str]:
    """{(address, port): process name} of every TCP socket those processes listen on."""
    procs = {p.pid: p for p in marked(marker)}
    out = {}
    for conn in psutil.net_connections("inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in procs:
            try:
                name = procs[conn.pid].name()
            except psutil.NoSuchProcess:
                name = "?"
            out[(conn.laddr.ip, conn.laddr.port)] = name
    return out


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:  # ::ffff:127.0.0.1
        ip = ip.ipv4_mapped
    return ip.is_loopback


def end_all(marker: str, timeout_s: float = 10) -> None:
    """Terminate, then kill, the processes the test started (by pid, never by name)."""
    procs = marked(marker)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _gone, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
