"""``struct kvm``: the state of one VM that the MMU, guest_memfd glue and populate work on.

After ``include/linux/kvm_host.h``: memslots, the per-gfn memory attributes (``kvm->mem_attr_array``),
the stage-2 page tables and the vendor state, plus the two lookups everything uses,
``gfn_to_memslot`` (:meth:`Kvm.find_memslot`) and ``kvm_mem_is_private`` (spec 2.7). The ioctls that
change this state are :class:`gmemlab.model.kvm_main.ModelVm`, which is a :class:`Kvm`.
"""

from __future__ import annotations

from collections import Counter

from ..rangemap import RangeMap
from ..uapi import KVM_MEMORY_ATTRIBUTE_PRIVATE, VmType
from .config import HostConfig
from .host import AddressSpace
from .memslot import Memslot
from .metrics import Metrics
from .profiles import Behaviour
from .stage2 import GFN_LIMIT, Stage2
from .vendor import NoVendor, vendor_for


class Kvm:
    """One VM's memory state (``struct kvm``); references decide when it is destroyed."""

    def __init__(
        self,
        vm_type: VmType,
        config: HostConfig,
        behaviour: Behaviour,
        metrics: Metrics,
        address_space: AddressSpace,
    ) -> None:
        self.vm_type = vm_type
        self.config = config
        self.behaviour = behaviour
        self.counters = metrics
        self.address_space = address_space  # the VMM process's mappings (the HVA path)
        self._refs = 1
        self.destroyed = False
        self.memslots: dict[tuple[int, int], Memslot] = {}
        self.attributes: RangeMap[int] = RangeMap(GFN_LIMIT, 0)  # kvm->mem_attr_array, per gfn
        self.stage2 = Stage2(metrics)
        self.vendor: NoVendor = vendor_for(vm_type, self.stage2, metrics, config)
        self.memslots_generation: Counter[int] = Counter()  # per address space, bumped by every committed change

    # -- references (kvm_get_kvm / kvm_put_kvm) -------------------------------------------------------
    def get_ref(self) -> None:
        self._refs += 1

    def put_ref(self) -> None:
        self._refs -= 1
        if self._refs == 0:
            self.destroyed = True  # kvm_destroy_vm
            self.kvm_destroy_vm()

    def kvm_destroy_vm(self) -> None:
        """What the owner does when the last reference goes (the system drops the VM from its list)."""

    def kvm_swap_active_memslots(self, as_id: int) -> None:
        """A memslot change was committed in ``as_id``: its generation moves on, so cached MMIO SPTEs made
        before it are stale (``kvm_swap_active_memslots``)."""
        self.memslots_generation[as_id] += 1

    # -- lookups ---------------------------------------------------------------------------------------
    def find_memslot(self, gfn: int, as_id: int = 0) -> Memslot | None:
        for (a, _), slot in self.memslots.items():
            if a == as_id and slot.base_gfn <= gfn < slot.end_gfn:
                return slot
        return None

    def kvm_mem_is_private(self, gfn: int) -> bool:
        """Where private-ness comes from: gmem shareability for RFC v2 SUPPORT_SHARED slots, else the
        per-VM attribute array (spec 2.7)."""
        slot = self.find_memslot(gfn)
        if slot is not None and slot.gmem_tracks_shareability:
            if not self.behaviour.gmem_private_allowed(self.vm_type, self.config):
                return False
            file = slot.gmem_file
            if file is None:
                return False  # kvm_gmem_is_private() is false once the file is gone
            return file.inode.is_private(gfn - slot.base_gfn + slot.gmem_pgoff)
        return bool(self.attributes.load(gfn) & KVM_MEMORY_ATTRIBUTE_PRIVATE)
