"""The real ``/dev/kvm`` backend: the :class:`gmemlab.backend.Backend` protocol on the running kernel.

Standard library only (``os``, ``ctypes``, ``signal``). One concept per module:

* :mod:`.libc` - ctypes wrappers for ioctl, mmap, fallocate, madvise, process_vm_readv/writev (raw errnos);
* :mod:`.abi` - vCPU structs (``kvm_regs``, ``kvm_sregs``) and ``kvm_run`` offsets, size-checked;
* :mod:`.system` - ``/dev/kvm`` (:class:`KernelBackend`, :func:`open_kernel_backend`);
* :mod:`.vm` - VM ioctls; :mod:`.gmem` - the guest_memfd file; :mod:`.mapping` - host mappings;
* :mod:`.hostaccess` - SIGBUS-free host accesses through GUP;
* :mod:`.guest`, :mod:`.system_slot`, :mod:`.vcpu`, :mod:`.watchdog` - the native CPL3 guest that
  performs guest reads and writes, and the timer that bounds ``KVM_RUN``;
* :mod:`.resources` - ownership, so ``close()`` leaves nothing behind.
"""

from .gmem import KernelGuestMemfd
from .mapping import KernelHostMapping
from .system import KernelBackend, KernelMemfd, open_kernel_backend
from .vcpu import KernelVcpu
from .vm import KernelVm

__all__ = [
    "KernelBackend",
    "KernelGuestMemfd",
    "KernelHostMapping",
    "KernelMemfd",
    "KernelVcpu",
    "KernelVm",
    "open_kernel_backend",
]
