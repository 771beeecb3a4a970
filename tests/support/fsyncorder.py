"""Durability read from the system calls: `strace -f -y` of a real run, checked for the order
that makes a state write survive a power cut.

For every file that reaches its final name under a watched folder:
- its data was fsynced after its last write and before the rename that gave it the name
  (for a folder renamed into place: every file written below it);
- the folder it was renamed into is fsynced after the rename, by the same thread, before that
  thread does anything with an effect outside (starts a process or a thread, writes to a
  socket, exits) or renames into another folder;
- nothing is written in place under its final name.

A `.prev` copy made by `link()` holds data that was fsynced when the record was written, so a
rename of such a link needs no fsync of its own. Git objects are the one exception, checked
by their own rule: dulwich names pack files before they are fsynced, and the local copy
relies on them only once the tip names them, so every pack file written must be fsynced
before the tip (`refs/`) is renamed into place. A new local repository is built in
`repo.new` by dulwich and is a cache (a damaged one is deleted and fetched again). A
package folder moved aside to the package cache's `tmp` for deletion needs the folder it
left fsynced, not the scratch folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

#: What to trace: writes and syncs and the renames they lead to, and the effects a
#: rename must be durable before.
TRACE = (
    "open,openat,creat,write,writev,pwrite64,pwritev,pwritev2,fsync,fdatasync,"
    "rename,renameat,renameat2,link,linkat,execve,clone,clone3,fork,vfork,"
    "sendto,sendmsg,exit_group"
)

_LINE = re.compile(r"^(\d+) +(\w+)\((.*)\) += (-?\d+|\?)")
_FD = re.compile(r"^-?\d+<(.*)>$")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
WRITES = {"write", "writev", "pwrite64", "pwritev", "pwritev2"}
SYNCS = {"fsync", "fdatasync"}
EFFECTS = {"execve", "clone", "clone3", "fork", "vfork", "sendto", "sendmsg", "exit_group"}


@dataclass
class Call:
    index: int
    tid: int
    name: str
    args: str
    ok: bool

    def fd_path(self) -> str | None:
        """The path of the first argument, a file descriptor that `strace -y` annotated."""
        match = _FD.match(self.args.split(", ", 1)[0])
        return match.group(1).removesuffix(" (deleted)") if match else None

    def paths(self) -> list[str]:
        """The path arguments of rename*/link*, made absolute by their dirfd annotations."""
        strings = [s.encode().decode("unicode_escape") for s in _STRING.findall(self.args)]
        dirs = [m.group(1) for m in re.finditer(r"(?:AT_FDCWD|\d+)<([^>]*)>", self.args)]
        if dirs and len(dirs) == len(strings):
            return [os.path.join(d, s) for d, s in zip(dirs, strings, strict=True)]
        return strings


def parse(text: str) -> list[Call]:
    """The completed calls of an `strace -f -y -o FILE` output, unfinished ones joined."""
    calls: list[Call] = []
    pending: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw
        if line.endswith("<unfinished ...>"):
            tid = line.split(" ", 1)[0]
            pending[tid] = line[: -len("<unfinished ...>")].rstrip()
            continue
        resumed = re.match(r"^(\d+) +<\.\.\. \w+ resumed>(.*)$", line)
        if resumed:
            head = pending.pop(resumed.group(1), None)
            if head is None:
                continue
            line = head + resumed.group(2)
        match = _LINE.match(line)
        if match:
            tid, name, args, result = match.groups()
            ok = result != "?" and not result.startswith("-")
            calls.append(Call(len(calls), int(tid), name, args, ok))
    return calls


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _move(known: dict[str, int], src: str, dst: str) -> None:
    """What `known` says of `src` and the files below it, now said of `dst`."""
    for path in [p for p in known if _under(p, src)]:
        known[dst + path[len(src) :]] = known.pop(path)


@dataclass
class Checked:
    renames: int = 0
    violations: list[str] = field(default_factory=list)


def check(calls: list[Call], watched: list[str]) -> Checked:
    """Every ordering violation for files under the `watched` folders."""
    result = Checked()
    last_write: dict[str, int] = {}  # path -> index of its last write (follows renames)
    writes: dict[str, int] = {}  # path as written -> index of its last write
    last_sync: dict[str, int] = {}
    linked: set[str] = set()
    renamed_from: list[tuple[int, str]] = []
    open_renames: dict[int, list[tuple[int, str, str]]] = {}  # tid -> (index, folder, name)

    def watched_path(path: str) -> bool:
        return any(_under(path, w) for w in watched)

    def git_objects(path: str) -> bool:
        return "/git/repo/objects/" in path or "/git/repo.new" in path

    def settle(tid: int, why: str, keep: str | None = None) -> None:
        for index, folder, name in open_renames.pop(tid, []):
            if folder == keep:
                open_renames.setdefault(tid, []).append((index, folder, name))
                continue
            result.violations.append(
                f"{name}: renamed into place (call {index}) but its folder was not fsynced "
                f"before {why}"
            )

    for call in calls:
        if not call.ok:
            continue
        if call.name in WRITES:
            path = call.fd_path()
            if path and path.startswith("/"):
                last_write[path] = writes[path] = call.index
            elif path and ("socket:" in path or "TCP" in path or "UDP" in path):
                settle(call.tid, f"writing to a socket (call {call.index})")
        elif call.name in SYNCS:
            path = call.fd_path()
            if path:
                last_sync[path] = call.index
                still = [r for r in open_renames.get(call.tid, []) if r[1] != path]
                open_renames[call.tid] = still
        elif call.name in ("link", "linkat"):
            paths = call.paths()
            if len(paths) == 2:
                linked.add(paths[1])
        elif call.name in ("rename", "renameat", "renameat2"):
            paths = call.paths()
            if len(paths) != 2 or not watched_path(paths[1]):
                continue
            src, dst = paths
            renamed_from.append((call.index, src))
            _move(last_write, src, dst)
            _move(last_sync, src, dst)
            if git_objects(dst) or git_objects(src):
                continue
            result.renames += 1
            if "/git/repo/refs/" in dst:
                for path, index in last_write.items():
                    if git_objects(path) and last_sync.get(path, -1) < index:
                        result.violations.append(
                            f"{dst}: the tip renamed into place (call {call.index}) before "
                            f"{path} was fsynced"
                        )
            if src not in linked:
                for path, index in last_write.items():
                    if _under(path, dst) and last_sync.get(path, -1) < index:
                        result.violations.append(
                            f"{dst}: renamed into place (call {call.index}) before the data "
                            f"of {path} was fsynced"
                        )
            # moved aside to a scratch folder (deleted there): the folder it left must be synced
            folder = os.path.dirname(src if "/packages/tmp/" in dst else dst)
            settle(call.tid, f"renaming {dst} (call {call.index})", keep=folder)
            open_renames.setdefault(call.tid, []).append((call.index, folder, dst))
        elif call.name in EFFECTS:
            settle(call.tid, f"{call.name} (call {call.index})")
    for tid in list(open_renames):
        settle(tid, "the end of the run")

    for path, index in writes.items():
        if not watched_path(path) or git_objects(path):
            continue
        staged = any(i > index and _under(path, src) for i, src in renamed_from)
        if not staged:
            result.violations.append(f"{path}: written in place under its final name")
    return result


def traced(argv: list[str], out: str) -> list[str]:
    """`argv` run under strace, its trace written to `out`: its threads and forks followed,
    programs it starts (podman, which leaves conmon running) let go at their execve."""
    return [
        *("strace", "-f", "-b", "execve", "-y", "-qq", "--seccomp-bpf"),
        *("-e", f"trace={TRACE}", "-o", out, *argv),
    ]
