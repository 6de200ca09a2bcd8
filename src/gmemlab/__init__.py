"""gmemlab: a lab for KVM guest_memfd.

An executable model of guest_memfd (merged Linux 6.18 and the 2025 in-place conversion RFC), a real
``/dev/kvm`` backend behind the same interface, a simulator of guest workloads under each design, and a
race checker for the locking protocols.
"""

__version__ = "0.1.0"
