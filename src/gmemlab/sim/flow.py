"""How the VMM converts guest memory on one kernel: the run's flow (issue 14 item 8; linux-7.md 1.1, 1.3, 3).

A run simulates a scenario on the model of one kernel profile (``--profile``, else the scenario's
``profile`` key, else ``rfc-v2``: the RFC the older built-in scenarios were written for). What a VMM can do
depends on that kernel; two flows exist:

* ``in-place``: one copy of guest memory, in the guest_memfd. Shared pages are reached through the file's
  mapping, and a conversion changes the file's per-index attribute in place: ``KVM_SET_MEMORY_ATTRIBUTES2``
  on the guest_memfd (``linux-7.4``, ``linux-7.4-v8``: the run sets ``kvm.gmem_in_place_conversion=Y``,
  whatever its unverified default) or the RFC's ``KVM_GMEM_CONVERT_*`` (``rfc-v2``). The in-place launch
  (``populate.method = "mmap_inplace"``): the VMM writes the image through the mapping while the pages are
  shared, converts them private and populates with a NULL source (linux-7.md 1.3): nothing is copied.
* ``per-vm``: what QEMU upstream does on merged kernels (linux-7.md 3; ``linux-6.18``, ``linux-7.3``, and
  ``linux-7.4`` with ``kvm.gmem_in_place_conversion=N``): private pages in the guest_memfd, shared pages in a
  second copy, the anonymous memory at the memslot's ``userspace_addr``. A conversion is
  ``KVM_SET_MEMORY_ATTRIBUTES`` on the VM fd plus a discard of the copy that stops being used (a hole punched
  in the guest_memfd on the way to shared, ``MADV_DONTNEED`` on the anonymous copy on the way to private:
  QEMU's ``kvm_convert_memory``). The VMM loads the image into the shared copy and ``kvm_gmem_populate``
  (SNP_LAUNCH_UPDATE / TDX_INIT_MEM_REGION) copies it into the guest_memfd; the shared copy of the image
  stays until a conversion discards it [assumed: QEMU discards only on conversion, never after launch].

The flow defaults to the kernel's own: ``in-place`` where the profile has in-place conversion, ``per-vm``
on the other Linux profiles, and under ``rfc-v2`` whatever the scenario's ``gmem_flags.mmap`` says (an
mmap-capable file converts in place), so a run without a flow is the run it always was. A run of a flow its
kernel lacks (``--flow in-place`` on ``linux-7.3``) is refused with a one-line :class:`UsageError`.

A flow forces a few VMM-side choices on the scenario; each is listed in :attr:`Flow.changes` (the run's
title, JSON and flow table show them): in place, the file is mapped (shared memory exists only there) and
the slot-wide ``SET_ATTR`` is gone on 7.4 (``KVM_CAP_MEMORY_ATTRIBUTES`` reads 0; the file starts private);
per VM, the file is not mapped, starts private (merged kernels refuse INIT_SHARED for CoCo VMs), every slot
is made private at creation (QEMU ``kvm_set_phys_mem``), the attributes live in the kernel's xarray, and an
in-place launch becomes a copy. The Linux profiles have no HugeTLB guest_memfd (linux-7.md 0): a scenario
backed by HugeTLB or THP folios is refused there, with the ``--set`` that makes it runnable.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import UsageError
from ..model.config import HostConfig
from ..model.profiles import behaviour
from ..uapi import PROFILES
from ..workload.scenario import Scenario
from ..workload.schema import did_you_mean
from ..workload.units import format_size

DEFAULT_PROFILE = "rfc-v2"  # the HugeTLB + in-place conversion RFC the older scenarios were written for
IN_PLACE = "in-place"
PER_VM = "per-vm"
NO_PRIVATE = "none"  # a VM without private memory converts nothing
FLOWS = (IN_PLACE, PER_VM)
AUTO = "auto"
COCO_ARCHES = ("snp", "tdx", "pkvm")  # VM types with private memory (pkvm runs as SW_PROTECTED)
# The kernel a flow runs on when neither --profile nor the scenario names one that has it.
REFERENCE_KERNEL = {IN_PLACE: "linux-7.4", PER_VM: "linux-7.3"}


@dataclass(frozen=True)
class Flow:
    """The VMM's conversion flow on one kernel (see the module docstring)."""

    profile: str
    kind: str  # IN_PLACE, PER_VM or NO_PRIVATE
    ioctl: str  # what a conversion calls ("" when nothing converts)
    in_place_param: bool | None = None  # kvm.gmem_in_place_conversion as the run sets it (linux-7.4 lineage)
    changes: tuple[str, ...] = ()  # scenario changes this flow forces, as "key=value (why)"
    explicit: bool = False  # asked for (--flow or the scenario's flow key), not the kernel's default

    @property
    def named(self) -> bool:
        """Titles and column headings name the kernel and flow: not the plain rfc-v2 run of old."""
        return self.linux or self.explicit or bool(self.changes)

    @property
    def linux(self) -> bool:
        return self.profile != DEFAULT_PROFILE

    @property
    def attributes2(self) -> bool:
        """Conversions go through ``KVM_SET_MEMORY_ATTRIBUTES2`` on the guest_memfd (linux-7.md 1.2)."""
        return self.kind == IN_PLACE and self.linux

    @property
    def label(self) -> str:
        """``linux-7.4 in-place``: the run's kernel and flow, as a column heading."""
        return self.profile if self.kind == NO_PRIVATE else f"{self.profile} {self.kind}"

    def host_config_changes(self) -> dict[str, object]:
        """``HostConfig`` settings the flow needs: the in-place series' parameter where the kernel has one."""
        return {} if self.in_place_param is None else {"gmem_in_place_conversion": self.in_place_param}

    def as_json(self) -> dict[str, object]:
        return {"profile": self.profile, "kind": self.kind, "ioctl": self.ioctl,
                "gmem_in_place_conversion": self.in_place_param, "changes": list(self.changes)}


def check_profile(name: str) -> str:
    """``name`` if the model has that profile, else a one-line :class:`UsageError`."""
    if name not in PROFILES:
        raise UsageError(f"--profile {name}: unknown profile{did_you_mean(name, list(PROFILES))}; "
                         f"known: {', '.join(PROFILES)}")
    return name


def check_flow(name: str) -> str:
    if name not in (*FLOWS, AUTO):
        raise UsageError(f"--flow {name}: unknown flow{did_you_mean(name, list(FLOWS))}; known: {', '.join(FLOWS)}")
    return name


def has_in_place(profile: str) -> bool:
    """The kernel can convert in place: the RFC's ioctls, or the in-place series (its parameter on)."""
    if profile == DEFAULT_PROFILE:
        return True
    on = HostConfig.upstream().with_(gmem_in_place_conversion=True)
    return behaviour(profile).in_place_conversion(on)


def flows_of(profile: str) -> tuple[str, ...]:
    """The flows ``profile``'s kernel offers."""
    return FLOWS if has_in_place(profile) else (PER_VM,)


def native_flows(profile: str) -> tuple[str, ...]:
    """The flows a VMM uses on ``profile``'s kernel as it ships: both on ``rfc-v2`` (the scenario's mmap
    decides), in place where the in-place series is, per VM elsewhere. ``linux-7.4`` runs the per-VM flow
    too, with ``kvm.gmem_in_place_conversion=N``, but only when asked for by name (``--profile``)."""
    if profile == DEFAULT_PROFILE:
        return FLOWS
    return (IN_PLACE,) if has_in_place(profile) else (PER_VM,)


def pick_profile(flow: str | None, profile: str | None, scenario_profile: str) -> str:
    """The kernel a run uses: ``profile`` when given; else the scenario's when ``flow`` is its native flow;
    else the flow's reference kernel (in-place: ``linux-7.4``; per-vm: ``linux-7.3``, QEMU upstream's)."""
    if profile:
        return check_profile(profile)
    if not flow or flow == AUTO or check_flow(flow) in native_flows(check_profile(scenario_profile)):
        return scenario_profile
    return REFERENCE_KERNEL[flow]


def flow_for(sc: Scenario, profile: str | None = None, flow: str | None = None) -> tuple[Scenario, Flow]:
    """The scenario as the VMM runs it under ``flow`` on ``profile``'s kernel (defaults: the scenario's
    ``flow`` and ``profile`` keys, see :func:`pick_profile`), and the flow; a :class:`UsageError` naming the
    problem when that kernel cannot run it."""
    asked = flow if flow and flow != AUTO else (sc.flow if sc.flow != AUTO else None)
    if asked is not None:
        check_flow(asked)
    profile = pick_profile(asked, profile, sc.profile)
    linux = profile != DEFAULT_PROFILE
    if linux and sc.backing.allocator != "buddy":
        raise UsageError(f"--profile {profile}: backing.allocator = {sc.backing.allocator} "
                         f"({format_size(sc.backing.page)} folios): no merged or queued kernel has large guest_memfd "
                         "folios (HugeTLB guest_memfd exists only in rfc-v2, linux-7.md 0; upstream folios are "
                         "order 0); run it under --profile rfc-v2 or --set backing.allocator=buddy "
                         "--set backing.page=4KiB")
    if sc.arch not in COCO_ARCHES:
        if asked is not None:
            raise UsageError(f"--flow {asked}: arch = {sc.arch} has no private memory, so nothing converts; "
                             "a flow applies to snp, tdx and pkvm guests")
        return sc, Flow(profile, NO_PRIVATE, "")
    offered = flows_of(profile)
    if asked is not None and asked not in offered:
        raise UsageError(f"--flow {asked}: {profile} has no in-place conversion (KVM_SET_MEMORY_ATTRIBUTES2 on "
                         "the guest_memfd arrives with the in-place series in linux-7.4, linux-7.md 1); use "
                         "--profile linux-7.4, or --flow per-vm")
    if sc.arch == "pkvm" and (asked == PER_VM or IN_PLACE not in offered or (asked is None and not linux
                                                                                and not sc.gmem_flags.mmap)):
        lacks = "" if IN_PLACE in offered else f" and {profile} has no in-place conversion"
        raise UsageError(f"--flow per-vm: a pkvm guest shares and unshares through the guest_memfd in place "
                         "(MEM_SHARE/MEM_UNSHARE, launch by write then donate, workloads.md 1.4), which the per-VM "
                         f"attribute flow cannot express{lacks}; run it in place: --profile linux-7.4, or rfc-v2 "
                         "with gmem_flags.mmap=true")
    if not linux and asked is None:  # rfc-v2 without a flow: the scenario decides, unchanged
        kind = IN_PLACE if sc.gmem_flags.mmap else PER_VM
        ioctl = "KVM_GMEM_CONVERT_SHARED/PRIVATE" if kind == IN_PLACE else "KVM_SET_MEMORY_ATTRIBUTES"
        return sc, Flow(profile, kind, ioctl)
    kind = asked or offered[0]
    param = (kind == IN_PLACE) if linux and has_in_place(profile) else None
    if kind == IN_PLACE:
        ioctl = "KVM_SET_MEMORY_ATTRIBUTES2" if linux else "KVM_GMEM_CONVERT_SHARED/PRIVATE"
        return _in_place(sc, profile, ioctl, param, asked is not None)
    return _per_vm(sc, profile, param, asked is not None)


def _in_place(sc: Scenario, profile: str, ioctl: str, param: bool | None, explicit: bool) -> tuple[Scenario, Flow]:
    changes: list[str] = []
    gmem_flags, set_attr = sc.gmem_flags, sc.set_attr_private
    if not gmem_flags.mmap:
        gmem_flags = dataclasses.replace(gmem_flags, mmap=True)
        changes.append("gmem_flags.mmap=true (in place: shared memory lives only in the guest_memfd)")
    if set_attr and profile != DEFAULT_PROFILE:
        set_attr = False
        changes.append(f"set_attr_private=false (no per-VM attributes with in-place conversion on; the file "
                       f"starts {gmem_flags.init})")
    sc = dataclasses.replace(sc, gmem_flags=gmem_flags, set_attr_private=set_attr)
    return sc, Flow(profile, IN_PLACE, ioctl, param, tuple(changes), explicit)


def _per_vm(sc: Scenario, profile: str, param: bool | None, explicit: bool) -> tuple[Scenario, Flow]:
    changes: list[str] = []
    gmem_flags, populate, set_attr, store = sc.gmem_flags, sc.populate, sc.set_attr_private, sc.attr_store
    if gmem_flags.mmap:
        gmem_flags = dataclasses.replace(gmem_flags, mmap=False)
        changes.append("gmem_flags.mmap=false (per-VM attributes: shared memory is a second, anonymous copy)")
    if gmem_flags.init == "shared":
        gmem_flags = dataclasses.replace(gmem_flags, init="private")
        changes.append(f"gmem_flags.init=private ({profile} refuses INIT_SHARED for a {sc.arch} VM)")
    if not set_attr:
        set_attr = True
        changes.append("set_attr_private=true (QEMU makes each memslot private at creation)")
    if store != "xarray" and profile != DEFAULT_PROFILE:
        store = "xarray"
        changes.append(f"attr_store=xarray ({profile} keeps per-VM attributes in an xarray; the maple tree "
                       "was an RFC)")
    if populate.method == "mmap_inplace":
        populate = dataclasses.replace(populate, method="gmem_populate")
        changes.append("populate.method=gmem_populate (the image is copied from the shared copy)")
    sc = dataclasses.replace(sc, gmem_flags=gmem_flags, populate=populate, set_attr_private=set_attr,
                             attr_store=store)
    return sc, Flow(profile, PER_VM, "KVM_SET_MEMORY_ATTRIBUTES", param, tuple(changes), explicit)
