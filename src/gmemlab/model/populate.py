"""``kvm_gmem_populate`` (virt/kvm/guest_memfd.c; spec 2.9, linux-7.md 0 and 1.3).

How SNP_LAUNCH_UPDATE and TDX_INIT_MEM_REGION put the initial image into private guest_memfd pages.
"""

from __future__ import annotations

import errno

from ..errors import KvmError
from ..uapi import PAGE_SIZE, VmType
from .kvm_host import Kvm


def kvm_gmem_populate(vm: Kvm, gfn: int, src: bytes | None, npages: int, src_addr: int | None = None, *,
                      in_place: bool = False) -> int:
    """Copy ``npages`` source pages into private gmem (SNP_LAUNCH_UPDATE / TDX_INIT_MEM_REGION), then the
    arch's post-populate hook on them (:meth:`gmemlab.model.vendor.NoVendor.post_populate`).

    Returns the number of pages populated; raises the first error if none was. ``src`` is the source's
    contents (None: a NULL source) and ``src_addr`` its address, when the caller has one. The rules follow
    the profile (:class:`gmemlab.model.profiles.PopulateRules`):

    * 6.19: the gfn must be in a gmem slot (EINVAL), the file live (EFAULT), each folio not yet prepared
      (EEXIST; RFC v2 skips this for TDX), each gfn private (EINVAL);
    * 7.0: no EEXIST ("prepared" is no longer tracked), the source address must be 4 KiB aligned (EINVAL);
    * 7.4: a NULL source keeps the page's contents, written by the VMM through the mapping while it was
      shared (in-place launch, linux-7.md 1.3); before, a NULL source populates zeros.

    ``in_place``: the caller says the VMM wrote the image through the mapping while shared (the
    simulator's in-place launch): the pages are kept as they are and no EEXIST is raised.
    """
    op = "kvm_gmem_populate"
    rules = vm.behaviour.populate
    if npages <= 0:
        raise KvmError(errno.EINVAL, op, f"npages {npages} must be positive")
    if rules.source_page_aligned and src_addr is not None and src_addr % PAGE_SIZE:
        raise KvmError(errno.EINVAL, op, f"source address {src_addr:#x} is not 4 KiB aligned (7.0)")
    slot = vm.find_memslot(gfn)
    if slot is None or not slot.has_gmem:
        raise KvmError(errno.EINVAL, op, f"gfn {gfn:#x} is not in a guest_memfd memslot")
    file = slot.gmem_file
    if file is None or file.released:
        raise KvmError(errno.EFAULT, op, "guest_memfd file is gone")
    npages = min(npages, slot.end_gfn - gfn)
    done = 0
    skip_eexist = not rules.eexist_if_prepared or (
        vm.vm_type == VmType.TDX and vm.behaviour.api.has_conversion_ioctls)
    for i in range(npages):
        g = gfn + i
        index = g - slot.base_gfn + slot.gmem_pgoff
        err: KvmError | None = None
        if file.is_uptodate(index) and not (skip_eexist or in_place):
            err = KvmError(errno.EEXIST, op, f"folio at index {index:#x} is already prepared")
        elif not vm.kvm_mem_is_private(g):
            err = KvmError(errno.EINVAL, op, f"gfn {g:#x} is not private")
        if err is not None:
            if done:
                break
            raise err
        file.inode.ensure_folio(index)  # HugeTLB: the whole huge folio (kvm_gmem_get_folio)
        if in_place or (src is None and rules.null_source_in_place):
            file.inode.pagecache.make_uptodate(index)  # launched in place: contents kept (zeroed if new)
        else:
            chunk = src[i * PAGE_SIZE : (i + 1) * PAGE_SIZE] if src is not None else None
            file.inode.pagecache.populate(index, chunk)
        done += 1
    if done:
        vm.vendor.post_populate(file.inode, gfn, gfn - slot.base_gfn + slot.gmem_pgoff, done)
    return done
