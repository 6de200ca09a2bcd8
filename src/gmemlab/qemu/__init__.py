"""Boot a kernel image under QEMU and run a command inside it, against that kernel's ``/dev/kvm``.

The guest's root is this machine's ``/`` shared read-only over virtio-9p (with a tmpfs overlay on top where
the kernel has overlayfs), so this machine's Python environment runs unchanged inside; a second, writable
share carries the command's exit status, the guest's ``dmesg`` and any results back. One concept per module:

* :mod:`.image` - what a kernel image is (its release string from the bzImage header, its modules);
* :mod:`.modules` - the kernel modules a guest needs (9p, overlay, kvm) and their dependencies;
* :mod:`.initramfs` - the initramfs: busybox, those modules and our own two-page init;
* :mod:`.machine` - the QEMU command line, accelerator choice, timeouts, console and clean-up;
* :mod:`.debian` - Debian's packaged kernel, fetched and verified with apt, for CI.

Nothing here imports the model or the CLI.
"""

from .image import KernelImage, KernelImageError
from .machine import VmError, VmResult, VmSpec, run_in_vm

__all__ = ["KernelImage", "KernelImageError", "VmError", "VmResult", "VmSpec", "run_in_vm"]
