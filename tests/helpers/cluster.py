"""Helpers for the Ray tests: file digests of a folder and the processes of Ray actors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import psutil


def tree_digest(folder: Path) -> dict[str, str]:
    """``relative path -> sha256`` of every file under ``folder``."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


def actor_processes(class_name: str) -> list[psutil.Process]:
    """Live worker processes of Ray actors of ``class_name`` (Ray titles them ``ray::<class>[.method]``)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if cmd and cmd[0].split(".")[0] == f"ray::{class_name}":
            found.append(proc)
    return found
