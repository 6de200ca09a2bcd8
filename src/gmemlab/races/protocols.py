"""Protocol variants: a name, the paths (generators) and the configurations they are checked at.

Built-in variants (spec §2.13, §4 "Locking", §5.9; the seed thread's locking discussion):

``linux-6.18``  merged upstream: get_pfn and the host fault take no invalidate lock; consistency from the
                folio lock and the MMU-notifier retry; "conversion" is KVM_SET_MEMORY_ATTRIBUTES on the VM.
``rfc-v2``      RFC v2: invalidate_lock shared in get_pfn and the host fault, exclusive in conversion and
                punch hole; kvm_gmem_is_private reads the tree without it; the conversion's refcount check
                does not see the fault's in-flight reference (the posted reasoning: the lock protects the
                fault, §5.9; no modelled path takes long-term pins, so the check never fires).
``rfc-v2-refcount``  rfc-v2 whose safe-refcount check also counts in-flight lookups (strict §2.14 step 4).
``roth``        Michael Roth's proposal: a dedicated rw_semaphore; per-index updates (incl. GUEST ->
                GUEST_PREPARED at fault time) under the folio lock when a folio exists; every path that may
                allocate a folio holds the read lock.
``roth-noread`` roth with one allocating path (the host fault) skipping the read lock.
``linux-7.4``   in-place conversion as queued for 7.4 (series v13, linux-7.md 1.2-1.3; replaces the earlier
                ``ipc26`` guess): get_pfn holds invalidate_lock shared for the whole lookup and calls
                make_private for private indices; KVM_SET_MEMORY_ATTRIBUTES2 holds it exclusive: no-op return,
                unmap the host, then the reference check (EAGAIN before any invalidation), invalidation with the
                SHARED/PRIVATE filter, make_shared, store. The host fault keeps RFC2's lock scope; its folio
                reference is what fails a racing conversion to private. Populate overwrites (7.0).
``linux-7.4-norefcheck``  linux-7.4 without the reference check: the host-fault TOCTOU of §5.9 returns.

Write your own: build a :class:`Protocol` whose ``paths`` map path names to :class:`PathDef` (a generator
function ``fn(ctx, indices)``), e.g. from :mod:`gmemlab.races.paths` with a different :class:`Locking`, or
from scratch with the step constructors of :mod:`gmemlab.races.steps`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import UsageError
from . import paths as P
from .steps import Path, StepCtx
from .world import GMEM_RWSEM, INVALIDATE_LOCK, PRIVATE, SHARED, SLOTS_LOCK

PathBody = Callable[[StepCtx, tuple[int, ...]], Path]


@dataclass(frozen=True)
class PathDef:
    """A path: ``fn(ctx, indices)`` returning a step generator; ``ranged`` paths accept FIRST-LAST."""

    fn: PathBody
    doc: str
    ranged: bool = False


@dataclass(frozen=True)
class Config:
    """A documented configuration: thread spec, initial state and the search to run."""

    threads: str
    init: str = SHARED
    note: str = ""


@dataclass(frozen=True)
class Protocol:
    """A locking protocol: its paths, and the configurations it is documented and mutated at."""

    name: str
    summary: str
    paths: dict[str, PathDef]
    per_index: bool = True  # host faultability per index (False: linux-6.18, whole-file INIT_SHARED)
    default_init: str = SHARED
    declared_safe: bool = True
    disabled: frozenset[str] = frozenset()  # lock sites this variant omits (e.g. roth-noread)
    configs: tuple[Config, ...] = ()  # documented configurations; configs[0] is the default
    large: tuple[Config, ...] = ()  # documented larger configurations (5 threads, seconds each)
    spec: str = ""

    @property
    def default(self) -> Config:
        return self.configs[0] if self.configs else Config(",".join(sorted(self.paths)[:2]), self.default_init)


def locking_paths(lk: P.Locking) -> dict[str, PathDef]:
    """The standard paths of :mod:`gmemlab.races.paths` bound to the locking rules ``lk``."""

    def d(fn: Callable[[StepCtx, P.Locking, tuple[int, ...]], Path], doc: str, ranged: bool = False) -> PathDef:
        return PathDef(_adapt(fn, lk), doc, ranged)

    return {
        "guest_fault": d(P.guest_fault, "stage-2 fault: mmu_seq, kvm_mem_is_private, kvm_gmem_get_pfn, "
                                        "retry check + SPTE under mmu_lock"),
        "host_fault": d(P.host_fault, "host mmap fault: kvm_gmem_fault_shared, then finish_fault installs the PTE"),
        "convert_private": d(P.convert_private, "KVM_GMEM_CONVERT_PRIVATE / SET_MEMORY_ATTRIBUTES(2) private", True),
        "convert_shared": d(P.convert_shared, "KVM_GMEM_CONVERT_SHARED / SET_MEMORY_ATTRIBUTES(2) shared", True),
        "punch_hole": d(P.punch_hole, "fallocate(PUNCH_HOLE): invalidate, truncate folios under the folio lock",
                        True),
        "populate": d(P.populate, "kvm_gmem_populate: copy the launch payload into a private folio (EEXIST if "
                                  "prepared)"),
        "allocate": d(P.allocate, "fallocate(KEEP_SIZE): allocate folios", True),
    }


def _adapt(fn: Callable[[StepCtx, P.Locking, tuple[int, ...]], Path], lk: P.Locking) -> PathBody:
    def body(ctx: StepCtx, indices: tuple[int, ...]) -> Path:
        return fn(ctx, lk, indices)

    body.__name__ = fn.__name__
    body.__doc__ = fn.__doc__
    return body


# Configurations shared by the per-index variants: every path meets a conversion or a punch hole.
_SAFE_CONFIGS = (
    Config("host_fault:0,convert_private:0,guest_fault:0", SHARED, "host-fault TOCTOU shape + guest fault"),
    Config("guest_fault:0,convert_shared:0,punch_hole:0", PRIVATE, "MMU-notifier retry vs conversion, punch"),
    Config("guest_fault:0,populate:0,convert_shared:0", PRIVATE, "prepare vs populate vs conversion"),
    Config("host_fault:0,guest_fault:0,punch_hole:0", SHARED, "faults vs truncation"),
    Config("allocate:0,host_fault:0,convert_private:0", SHARED, "allocating paths vs conversion"),
    Config("host_fault:0,convert_private:0,punch_hole:0", SHARED, "conversion vs punch hole"),
    Config("populate:0,punch_hole:0,guest_fault:0", PRIVATE, "populate vs punch hole"),
    Config("guest_fault:0,convert_private:0-1,host_fault:1", SHARED, "two pages, ranged conversion"),
    Config("host_fault:0,guest_fault:0,convert_private:0,punch_hole:0", SHARED, "four threads"),
    Config("guest_fault:0,populate:0,punch_hole:0,convert_shared:0", PRIVATE, "four threads"),
)
_LARGE = Config("guest_fault:0,host_fault:1,convert_private:0-1,punch_hole:0-1,guest_fault:1", SHARED,
                "five threads, two pages")

_LINUX_618 = P.Locking(per_index=False, fault_lock=None, conversion_lock=SLOTS_LOCK)
_RFC_V2 = P.Locking(fault_lock=INVALIDATE_LOCK)
_RFC_V2_REFCOUNT = P.Locking(fault_lock=INVALIDATE_LOCK, strict_refcount=True)
_ROTH = P.Locking(
    fault_lock=GMEM_RWSEM,
    lookup_locked=True,
    check_under_folio_lock=True,
    conversion_lock=GMEM_RWSEM,
    conversion_folio_lock=True,
    prepared_state=True,
    allocators_take_rwsem=True,
)
_LINUX_74 = P.Locking(fault_lock=INVALIDATE_LOCK, strict_refcount=True, check_before_invalidate=True,
                      whole_range=True, filtered_invalidation=True, make_private_hook=True, populate_eexist=False)
_LINUX_74_NOREFCHECK = P.Locking(fault_lock=INVALIDATE_LOCK, check_before_invalidate=True, whole_range=True,
                                 filtered_invalidation=True, make_private_hook=True, populate_eexist=False)

BUILTIN: dict[str, Protocol] = {}


def register(protocol: Protocol) -> Protocol:
    """Add a protocol to the registry (``gmemlab races --list`` shows it)."""
    BUILTIN[protocol.name] = protocol
    return protocol


register(Protocol(
    "linux-6.18",
    "merged upstream: no invalidate lock in get_pfn/host fault; folio lock + MMU-notifier retry; "
    "conversion = KVM_SET_MEMORY_ATTRIBUTES",
    locking_paths(_LINUX_618),
    per_index=False,
    default_init=PRIVATE,
    configs=(
        Config("guest_fault:0,convert_shared:0,punch_hole:0", PRIVATE, "retry vs attributes and punch"),
        Config("guest_fault:0,populate:0,convert_shared:0", PRIVATE, "prepare vs populate vs attributes"),
        Config("host_fault:0,guest_fault:0,punch_hole:0", SHARED, "INIT_SHARED file: faults vs punch"),
        Config("guest_fault:0,guest_fault:0,convert_shared:0", PRIVATE, "two vCPUs vs attributes"),
        Config("populate:0,punch_hole:0,guest_fault:0", PRIVATE, "populate vs punch hole"),
        Config("allocate:0,guest_fault:0,punch_hole:0", PRIVATE, "fallocate vs fault vs punch"),
        Config("guest_fault:0,populate:0,punch_hole:0,convert_shared:0", PRIVATE, "four threads"),
    ),
    large=(Config("guest_fault:0,guest_fault:1,convert_shared:0-1,punch_hole:0-1,populate:1", PRIVATE,
                  "five threads, two pages"),),
    spec="§2.8, §2.9, §2.11, §2.13 (U6.18-U7.0)",
))
register(Protocol(
    "rfc-v2",
    "RFC v2: invalidate_lock shared in get_pfn and host fault, exclusive in conversion and punch; "
    "is_private read without it",
    locking_paths(_RFC_V2),
    declared_safe=False,
    configs=(Config("host_fault:0,convert_private:0", SHARED, "the host-fault TOCTOU (§5.9)"), *_SAFE_CONFIGS),
    spec="§2.4 (FT9/RFC2), §2.13, §2.14, §5.9",
))
register(Protocol(
    "rfc-v2-refcount",
    "rfc-v2 whose to-private safe-refcount check also counts in-flight folio lookups",
    locking_paths(_RFC_V2_REFCOUNT),
    configs=_SAFE_CONFIGS,
    large=(_LARGE,),
    spec="§2.14 step 4",
))
register(Protocol(
    "roth",
    "Michael Roth's proposal: dedicated rw_semaphore; per-index updates (GUEST_PREPARED at fault) under "
    "the folio lock; every allocating path holds the read lock",
    locking_paths(_ROTH),
    configs=(
        *_SAFE_CONFIGS,
        Config("guest_fault:0,guest_fault:0,punch_hole:0", PRIVATE, "two GUEST_PREPARED setters vs punch"),
    ),
    large=(Config("guest_fault:0,host_fault:0,convert_private:0,punch_hole:0,populate:0", SHARED,
                  "five threads, one page"),),
    spec="§2.13 (Discussed refinements), seed thread 2025-05-29",
))
register(Protocol(
    "roth-noread",
    "roth, but the host fault (an allocating path) skips the read lock and relies on the folio lock",
    locking_paths(_ROTH),
    declared_safe=False,
    disabled=frozenset({"host_fault.gmem_rwsem"}),
    configs=(Config("host_fault:0,convert_private:0", SHARED, "allocation TOCTOU (Roth's warning)"),),
    spec="seed thread 2025-05-29 (\"any paths that could allocate a folio need to take a read lock\")",
))
def _with_roundtrip(lk: P.Locking) -> dict[str, PathDef]:
    paths = locking_paths(lk)
    paths["convert_roundtrip"] = PathDef(_adapt(P.convert_roundtrip, lk), "gmem_convert_fault_race's host thread: "
                                         "SET_MEMORY_ATTRIBUTES2 shared, then private", True)
    return paths


# gmem_convert_fault_race (linux-7.md 1.4; googleprodkernel/linux-cc only): vCPUs write in a loop while the host
# converts the range shared and back; it passes when conversions succeed or fail with EAGAIN.
FAULT_RACE = Config("guest_fault:0,guest_fault:1,convert_roundtrip:0-1", PRIVATE,
                    "gmem_convert_fault_race: two vCPUs fault while the host converts both pages shared and back")
_FAULT_RACE_CONFIGS = (
    FAULT_RACE,
    Config("guest_fault:0,guest_fault:0,convert_roundtrip:0", PRIVATE, "two faults on one page vs the round trip"),
    Config("guest_fault:0,host_fault:0,convert_roundtrip:0", PRIVATE, "a vCPU and the host vs the round trip"),
)
register(Protocol(
    "linux-7.4",
    "in-place conversion (v13): get_pfn under invalidate_lock shared; ATTRIBUTES2 exclusive: no-op return, "
    "unmap, reference check (EAGAIN), filtered invalidation, store",
    _with_roundtrip(_LINUX_74),
    default_init=PRIVATE,
    configs=(*_FAULT_RACE_CONFIGS, *_SAFE_CONFIGS),
    large=(_LARGE, Config("guest_fault:0,guest_fault:1,host_fault:1,convert_roundtrip:0-1", PRIVATE,
                          "gmem_convert_fault_race with a host fault, two pages")),
    spec="linux-7.md 1.2 (step 9), 1.3, 1.4 (gmem_convert_fault_race); §2.13, §5.9",
))
register(Protocol(
    "linux-7.4-norefcheck",
    "linux-7.4 without the reference check after the unmap: a host fault between its check and its PTE "
    "installation survives the conversion",
    _with_roundtrip(_LINUX_74_NOREFCHECK),
    declared_safe=False,
    configs=(Config("host_fault:0,convert_private:0", SHARED, "the host-fault TOCTOU (§5.9) the check closes"),),
    spec="linux-7.md 1.2 step 9",
))


def sweep_configs(protocol: Protocol, max_threads: int = 3) -> tuple[Config, ...]:
    """Every multiset of 2..``max_threads`` of the protocol's paths on index 0, with both initial states."""
    from itertools import combinations_with_replacement

    names = list(protocol.paths)
    return tuple(
        Config(",".join(f"{p}:0" for p in combo), init, "sweep")
        for k in range(2, max_threads + 1)
        for combo in combinations_with_replacement(names, k)
        for init in (SHARED, PRIVATE)
    )


def get_protocol(name: str) -> Protocol:
    """A registered protocol, or ``FILE.py:NAME`` (a :class:`Protocol` object defined in a Python file)."""
    if name in BUILTIN:
        return BUILTIN[name]
    if ".py:" in name:
        return _load_external(name)
    raise UsageError(f"unknown protocol {name!r}{_did_you_mean(name, list(BUILTIN))} (known: {', '.join(BUILTIN)}; "
                     "or FILE.py:NAME)")


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _load_external(spec: str) -> Protocol:
    import importlib.util
    from pathlib import Path as FsPath

    file, _, attr = spec.rpartition(":")
    path = FsPath(file)
    if not path.is_file():
        raise UsageError(f"protocol file {file!r} not found")
    mod_spec = importlib.util.spec_from_file_location(f"gmemlab_races_user_{path.stem}", path)
    if mod_spec is None or mod_spec.loader is None:
        raise UsageError(f"cannot load {file!r}")
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception as exc:  # user code: report in one line
        raise UsageError(f"loading {file!r} failed: {type(exc).__name__}: {exc}") from exc
    proto = getattr(module, attr, None)
    if not isinstance(proto, Protocol):
        raise UsageError(f"{file!r} defines no Protocol named {attr!r}")
    return proto


@dataclass(frozen=True)
class ThreadSpec:
    path: str
    indices: tuple[int, ...]

    def __str__(self) -> str:
        idx = str(self.indices[0]) if len(self.indices) == 1 else f"{self.indices[0]}-{self.indices[-1]}"
        return f"{self.path}:{idx}"


THREADS_HELP = (
    "Comma-separated threads, one per kernel path: PATH[:INDEX] or PATH[:FIRST-LAST] for range paths "
    "(convert_private, convert_shared, punch_hole, allocate). INDEX is the page index in the guest_memfd "
    "(default 0); the file has max index + 1 pages. Example: host_fault:0,convert_private:0,guest_fault:0."
)


def parse_threads(text: str, protocol: Protocol) -> list[ThreadSpec]:
    specs: list[ThreadSpec] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise UsageError(f"--threads {text!r}: empty thread entry")
        path, _, where = item.partition(":")
        path = path.strip()
        if path not in protocol.paths:
            raise UsageError(
                f"--threads: unknown path {path!r} for {protocol.name}{_did_you_mean(path, list(protocol.paths))} "
                f"(paths: {', '.join(protocol.paths)})"
            )
        indices = _parse_indices(where.strip() or "0", item)
        if len(indices) > 1 and not protocol.paths[path].ranged:
            raise UsageError(f"--threads: {path} takes a single index, not a range ({item!r})")
        specs.append(ThreadSpec(path, indices))
    if not specs:
        raise UsageError("--threads: no threads given")
    if len(specs) > 8:
        raise UsageError("--threads: at most 8 threads")
    return specs


def _parse_indices(text: str, item: str) -> tuple[int, ...]:
    first, sep, last = text.partition("-")
    try:
        lo = int(first)
        hi = int(last) if sep else lo
    except ValueError:
        raise UsageError(f"--threads: bad index {text!r} in {item!r} (want INDEX or FIRST-LAST)") from None
    if lo < 0 or hi < lo or hi > 7:
        raise UsageError(f"--threads: index range {text!r} in {item!r} must satisfy 0 <= FIRST <= LAST <= 7")
    return tuple(range(lo, hi + 1))


@dataclass
class Setup:
    """Everything one exploration needs."""

    protocol: Protocol
    threads: list[ThreadSpec]
    init: str
    disabled: frozenset[str] = field(default_factory=frozenset)

    @property
    def npages(self) -> int:
        return max(max(t.indices) for t in self.threads) + 1

    def describe(self) -> str:
        return ", ".join(f"T{n} {t}" for n, t in enumerate(self.threads))
