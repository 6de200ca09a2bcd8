"""``kvm_gmem_populate`` (virt/kvm/guest_memfd.c, 6.19 rules; spec 2.9).

How SNP_LAUNCH_UPDATE and TDX_INIT_MEM_REGION put the initial image into private guest_memfd pages.
"""

from __future__ import annotations

import errno

from ..errors import KvmError
from ..uapi import PAGE_SIZE, VmType
from .kvm_host import Kvm


def kvm_gmem_populate(vm: Kvm, gfn: int, src: bytes | None, npages: int) -> int:
    """Copy ``npages`` source pages into private gmem (SNP_LAUNCH_UPDATE / TDX_INIT_MEM_REGION).

    Returns the number of pages populated; raises the first error if none was. 6.19 rules: the
    gfn must be in a gmem slot (EINVAL), the file live (EFAULT), each folio not yet prepared
    (EEXIST; RFC v2 skips this for TDX), each gfn private (EINVAL).
    """
    op = "kvm_gmem_populate"
    if npages <= 0:
        raise KvmError(errno.EINVAL, op, f"npages {npages} must be positive")
    slot = vm.find_memslot(gfn)
    if slot is None or not slot.has_gmem:
        raise KvmError(errno.EINVAL, op, f"gfn {gfn:#x} is not in a guest_memfd memslot")
    file = slot.gmem_file
    if file is None or file.released:
        raise KvmError(errno.EFAULT, op, "guest_memfd file is gone")
    npages = min(npages, slot.end_gfn - gfn)
    done = 0
    skip_eexist = vm.vm_type == VmType.TDX and vm.behaviour.api.has_conversion_ioctls
    for i in range(npages):
        g = gfn + i
        index = g - slot.base_gfn + slot.gmem_pgoff
        err: KvmError | None = None
        if file.is_uptodate(index) and not skip_eexist:
            err = KvmError(errno.EEXIST, op, f"folio at index {index:#x} is already prepared")
        elif not vm.kvm_mem_is_private(g):
            err = KvmError(errno.EINVAL, op, f"gfn {g:#x} is not private")
        if err is not None:
            if done:
                break
            raise err
        chunk = src[i * PAGE_SIZE : (i + 1) * PAGE_SIZE] if src is not None else None
        file.inode.ensure_folio(index)  # HugeTLB: the whole huge folio (kvm_gmem_get_folio)
        file.inode.pagecache.populate(index, chunk)
        done += 1
    return done
