"""An episode's disk quota: the bytes and entries of its work dir and of its accepted outputs.

Nothing an episode wrote can escape the count: files cannot lose their name while it runs (the
syscall filter denies unlink, rename and O_TMPFILE), the accepted copies in `outputs/` count too, and
the walk goes through directory descriptors (no path grows past PATH_MAX, so no subtree is skipped
as unreadable) with a depth limit of its own: folders nested deeper are over the quota.
"""
from __future__ import annotations

import os


def over_quota(folders: list[str], *, max_bytes: int, max_entries: int, max_depth: int) -> str | None:
    """What exceeds the quota in `folders` together (bytes, entries or depth), or None."""
    used = entries = 0
    for folder in folders:
        try:
            top = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        stack = [(top, os.scandir(top), 0)]
        try:
            while stack:
                fd, it, depth = stack[-1]
                entry = next(it, None)
                if entry is None:
                    it.close()
                    os.close(fd)
                    stack.pop()
                    continue
                entries += 1
                if entries > max_entries:
                    return f"more than {max_entries} files (sandbox.max_episode_files)"
                try:
                    st = entry.stat(follow_symlinks=False)
                    used += st.st_blocks * 512
                    if not entry.is_dir(follow_symlinks=False):
                        continue
                    if depth + 1 >= max_depth:
                        return f"folders nested more than {max_depth} deep (sandbox.max_episode_depth)"
                    inner = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                    dir_fd=fd)
                except OSError:
                    continue  # gone meanwhile
                stack.append((inner, os.scandir(inner), depth + 1))
        finally:
            for fd, it, _ in stack:
                it.close()
                os.close(fd)
        if used > max_bytes:
            break
    if used > max_bytes:
        return (f"{used / 2**20:.0f} MB, over the {max_bytes // 2**20} MB limit (sandbox.max_episode_disk_mb; "
                "accepted output images count too)")
    return None
