"""Debian's packaged kernel for CI: the newest ``linux-image-amd64`` of a suite, fetched with apt.

Debian 12's own kernel (6.1) predates guest_memfd; ``trixie-backports`` carries a 7.x kernel built with
``CONFIG_KVM_GUEST_MEMFD``, KVM as modules and 9p as modules, which is what the kernel suite needs. apt does
the work with a private configuration (its own lists and cache under :func:`cache_dir`, nothing added to
this machine's sources): it checks the suite's signed ``InRelease`` against debian-archive-keyring and each
``.deb`` against the SHA256 in the signed index. The archive is the one this machine's apt already uses.
Packages are unpacked with ``dpkg -x`` into the cache, never installed; a second run reuses them.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

from .machine import VmError

SUITE = "trixie-backports"
META = "linux-image-amd64"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gmemlab", "debian-kernel")


def cached_kernel(directory: str | None = None) -> str | None:
    """The newest unpacked kernel image in the cache, without touching the network."""
    found = sorted(glob.glob(os.path.join(directory or cache_dir(), "root-*", "usr", "lib", "modules", "*",
                                          "vmlinuz")))
    return found[-1] if found else None


def archive_uri(sources_dir: str = "/etc/apt") -> str:
    """The Debian archive this machine's apt uses (the first non-security ``debian`` URI)."""
    texts = []
    for path in [os.path.join(sources_dir, "sources.list"), *sorted(glob.glob(f"{sources_dir}/sources.list.d/*"))]:
        if path.endswith((".list", ".sources")):
            try:
                with open(path) as f:
                    texts.append(f.read())
            except OSError:
                continue
    for text in texts:
        for uri in re.findall(r"^\s*URIs:\s*(\S+)", text, re.M) + re.findall(r"^\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)",
                                                                              text, re.M):
            if uri.rstrip("/").endswith("/debian"):
                return str(uri)
    raise VmError(f"no Debian archive in {sources_dir}/sources.list*: cannot fetch the packaged kernel")


class _Apt:
    def __init__(self, root: str, uri: str) -> None:
        self.root = root
        for d in ("lists/partial", "cache/archives/partial", "etc/preferences.d", "download"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        self.sources = os.path.join(root, "etc", "sources.list")
        with open(self.sources, "w") as f:
            f.write(f"deb [signed-by={KEYRING}] {uri} {SUITE} main\n")
        self.options = [
            "-o", f"Dir::Etc::SourceList={self.sources}", "-o", "Dir::Etc::SourceParts=-",
            "-o", f"Dir::State::Lists={root}/lists", "-o", f"Dir::Cache={root}/cache",
            "-o", f"Dir::Etc::Preferences={root}/etc/preferences",
            "-o", f"Dir::Etc::PreferencesParts={root}/etc/preferences.d",
            "-o", "Dir::State::status=/dev/null", "-o", "Debug::NoLocking=1", "-o", "APT::Architecture=amd64",
        ]

    def run(self, tool: str, *args: str, cwd: str | None = None) -> str:
        proc = subprocess.run([tool, *self.options, *args], capture_output=True, text=True, cwd=cwd, check=False)
        if proc.returncode:
            last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
            raise VmError(f"{tool} {' '.join(args)} failed: {' | '.join(last)}")
        return proc.stdout

    def depends(self, package: str) -> list[str]:
        text = self.run("apt-cache", "show", "--no-all-versions", package)
        found = re.search(r"^Depends:\s*(.*)$", text, re.M)
        return [d.split("(")[0].strip() for d in found.group(1).split(",")] if found else []


def fetch(directory: str | None = None) -> str:
    """Path of the packaged kernel image (``.../usr/lib/modules/RELEASE/vmlinuz``), fetched if not cached."""
    directory = directory or cache_dir()
    cached = cached_kernel(directory)
    if cached:
        return cached
    for tool in ("apt-get", "apt-cache", "dpkg"):
        if shutil.which(tool) is None:
            raise VmError(f"{tool} not found: the packaged kernel comes from Debian's archive through apt")
    if not os.path.exists(KEYRING):
        raise VmError(f"{KEYRING} missing: install debian-archive-keyring")
    apt = _Apt(os.path.join(directory, "apt"), archive_uri())
    apt.run("apt-get", "update")
    image = next((d for d in apt.depends(META) if d.startswith("linux-image-")), None)
    if image is None:
        raise VmError(f"{META} in {SUITE} names no linux-image package")
    parts = [d for d in apt.depends(image) if d.startswith(("linux-binary-", "linux-modules-"))] or [image]
    download = os.path.join(apt.root, "download")
    os.chmod(download, 0o777)  # apt downloads as its unprivileged _apt user
    apt.run("apt-get", "download", *parts, cwd=download)
    release = image.removeprefix("linux-image-")
    target = os.path.join(directory, f"root-{release}")
    tmp = target + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    for deb in sorted(glob.glob(os.path.join(download, "*.deb"))):
        if any(os.path.basename(deb).startswith(p + "_") for p in parts):
            subprocess.run(["dpkg", "-x", deb, tmp], check=True)
    os.replace(tmp, target)
    for deb in glob.glob(os.path.join(download, "*.deb")):
        os.unlink(deb)
    found = cached_kernel(directory)
    if found is None:
        raise VmError(f"{', '.join(parts)} unpacked to {target} but hold no usr/lib/modules/*/vmlinuz")
    return found
