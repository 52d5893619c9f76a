"""The episode's syscall filter (seccomp through pyseccomp): built once in the server, loaded by each
episode process after its other layers, right before the first line of model code runs.

Default: allow. Denied, each for a reason an image or math snippet never has:
- debugging other processes, namespaces and mounts, kernel modules/keys/BPF, io_uring, clocks;
- every path to a new program: execve/execveat (a file, or a memfd written with a static ELF) and
  memfd_create. Landlock forbids executing files, but a memfd is not a file it sees;
- sockets by allow-list: socket() for no family at all (no IP, no VSOCK, no Unix sockets, so no
  world-writable host sockets such as Ray's under /tmp/ray), socketpair() only for AF_UNIX;
- SysV IPC and POSIX message queues: they live outside every limit and outlive the episode;
- making a file lose its name (unlink, rename over it, rmdir, O_TMPFILE): a file the episode wrote
  always has a name in its work dir, so the disk quota's walk counts every byte it holds. The
  paper's scan refuses deleting and renaming too; this makes it hold for code that gets past it.
"""
from __future__ import annotations

import errno
import socket

_DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root", "chroot",
    "unshare", "setns", "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "bpf", "perf_event_open", "keyctl", "add_key", "request_key", "userfaultfd", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "reboot", "swapon", "swapoff", "syslog", "acct", "quotactl",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "open_by_handle_at", "name_to_handle_at",
    "fanotify_init", "lookup_dcookie", "move_mount", "open_tree", "fsopen", "fsmount", "fsconfig", "fspick",
    "mount_setattr", "pidfd_getfd",
    # new programs
    "execve", "execveat", "memfd_create", "memfd_secret",
    # SysV IPC and POSIX message queues
    "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semctl",
    "msgget", "msgsnd", "msgrcv", "msgctl",
    "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
    # a file losing its name
    "unlink", "unlinkat", "rmdir", "rename", "renameat", "renameat2",
    # openat2 hides its flags (O_TMPFILE) in memory where the filter cannot read them; glibc's open
    # uses openat, so nothing ordinary needs it
    "openat2")
# Families socket() may create: none. socketpair() may create AF_UNIX pairs (connected to nothing).
SOCKET_FAMILIES: tuple[int, ...] = ()
SOCKETPAIR_FAMILIES: tuple[int, ...] = (socket.AF_UNIX,)
# CLONE_NEWUSER, NEWPID, NEWNET, NEWUTS, NEWIPC, NEWNS, NEWCGROUP
_CLONE_NAMESPACE_FLAGS = (0x10000000, 0x20000000, 0x40000000, 0x04000000, 0x08000000, 0x00020000, 0x02000000)
_O_TMPFILE_BIT = 0o20000000  # __O_TMPFILE on x86_64 and arm64 (O_TMPFILE = this | O_DIRECTORY)


def build_seccomp_filter():
    """A pyseccomp filter (not loaded yet), or None when libseccomp is unavailable here."""
    try:
        import pyseccomp as sc
    except (ImportError, OSError):
        return None
    try:
        filt = sc.SyscallFilter(defaction=sc.ALLOW)
        deny = sc.ERRNO(errno.EPERM)
        for name in _DENIED_SYSCALLS:
            try:
                filt.add_rule(deny, name)
            except (OSError, ValueError, RuntimeError):
                pass  # syscall unknown on this architecture/kernel
        _allow_families(filt, sc, "socket", SOCKET_FAMILIES)
        _allow_families(filt, sc, "socketpair", SOCKETPAIR_FAMILIES)
        for call, flags_arg in (("open", 1), ("openat", 2)):
            filt.add_rule(deny, call, sc.Arg(flags_arg, sc.MASKED_EQ, _O_TMPFILE_BIT, _O_TMPFILE_BIT))
        # New namespaces through clone flags; clone3 hides its flags in memory, so make glibc fall back to clone.
        for flag in _CLONE_NAMESPACE_FLAGS:
            filt.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
        filt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
        return filt
    except Exception:  # noqa: BLE001 - any libseccomp failure means: run without this layer
        return None


def _allow_families(filt, sc, call: str, allowed: tuple[int, ...]) -> None:
    """Deny `call` unless its first argument (the address family) is in `allowed`."""
    refuse = sc.ERRNO(errno.EAFNOSUPPORT)
    if not allowed:
        filt.add_rule(refuse, call)
    elif len(allowed) == 1:
        filt.add_rule(refuse, call, sc.Arg(0, sc.NE, allowed[0]))
    else:  # libseccomp compares each argument once per rule: ranges would be needed; none is used
        raise ValueError(f"allow-list of {len(allowed)} families for {call} is not supported")
