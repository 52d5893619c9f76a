"""The learners' torch.distributed rendezvous, listening on the master address only.

torch's own env:// rendezvous starts rank 0's TCPStore on every interface ("::"), whatever
MASTER_ADDR says, and gloo listens on whatever the host name resolves to. A local run's learners
all live on 127.0.0.1 (launch/ray_session.py), so nothing of theirs should be reachable from the
network: rank 0 binds the store's socket to the master address itself and hands it to TCPStore,
and gloo is pinned to the loopback interface when the master is a loopback address.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import sys
from datetime import timedelta


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def start_process_group(backend: str, master_addr: str, master_port: int, rank: int, world_size: int,
                       timeout_s: float = 1800) -> None:
    """torch.distributed.init_process_group over a TCPStore bound to MASTER_ADDR (DeepSpeed then reuses it)."""
    import torch.distributed as dist

    if is_loopback(master_addr) and sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    timeout = timedelta(seconds=timeout_s)
    listener = None
    if rank == 0:
        family = socket.AF_INET6 if ":" in master_addr else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((master_addr, master_port))
        listener.listen(max(128, world_size))
    store = dist.TCPStore(master_addr, master_port, world_size, rank == 0, timeout=timeout,
                          wait_for_workers=False, master_listen_fd=listener.fileno() if listener else None)
    if listener is not None:
        listener.detach()  # the store owns the descriptor now; closing ours would close its socket
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
