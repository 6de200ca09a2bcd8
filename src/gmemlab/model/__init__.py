"""The executable model of guest_memfd: merged Linux 6.18 and the seed's RFC v2 (spec section 2)."""

from .config import HostConfig
from .invariants import InvariantViolation
from .kvm_main import ModelBackend, ModelVcpu, ModelVm
from .memslot import Memslot

__all__ = ["HostConfig", "InvariantViolation", "Memslot", "ModelBackend", "ModelVcpu", "ModelVm"]
