"""Host facts: probed from a backend, saved as JSON, and turned into the model of that kernel (issue 15 item 3)."""

from __future__ import annotations

import errno

import pytest

from gmemlab.errors import KvmError
from gmemlab.hostfacts import HostFacts
from gmemlab.model import HostConfig, ModelBackend
from gmemlab.uapi import KVM_MEM_GUEST_MEMFD, Cap, VmType

P = 4096


def _facts(**changes) -> HostFacts:
    """Facts like realkernel-private.md column A (6.18.2 with SW_PROTECTED VMs and SMM)."""
    caps = {"MEMORY_ATTRIBUTES": 8, "VM_TYPES": 3, "PRE_FAULT_MEMORY": 1, "READONLY_MEM": 1, "NR_MEMSLOTS": 32764,
            "MULTI_ADDRESS_SPACE": 2, "X86_SMM": 1, "GUEST_MEMFD": 1, "GUEST_MEMFD_FLAGS": 3}
    base = {"release": "6.18.2-gmemlab", "system_caps": caps, "vm_caps": {"default": dict(caps)},
            "vm_types": ("default", "sw-protected"), "numa_nodes": 2, "gpa_window": (0, 1 << 40)}
    base.update(changes)
    return HostFacts(**base)


def test_json_round_trip_and_version():
    facts = _facts(module_params={"kvm.tdp_mmu": "Y"})
    again = HostFacts.from_json(facts.to_json())
    assert again == facts
    assert again.version == (6, 18) and not again.is_pvm
    assert _facts(module_params={"kvm_pvm.pvm_native": "Y"}).is_pvm


@pytest.mark.parametrize("text", ["", "[]", '{"release": 1}', '{"release": "x", "system_caps": 3}'])
def test_bad_json_is_a_clear_error(text):
    with pytest.raises(ValueError, match="not a host-facts JSON document"):
        HostFacts.from_json(text)


def test_config_from_facts_follows_the_kernel():
    config = HostConfig.from_facts(_facts())
    assert config.vm_types == (VmType.DEFAULT, VmType.SW_PROTECTED)
    assert (config.memory_attributes, config.pre_fault, config.address_spaces, config.numa_nodes) == (True, True, 2, 2)
    pvm = HostConfig.from_facts(_facts(system_caps={"VM_TYPES": 1, "GUEST_MEMFD": 1}, vm_types=("default",),
                                       numa_nodes=1))
    assert (pvm.memory_attributes, pvm.pre_fault, pvm.address_spaces, pvm.vm_types) == (False, False, 1,
                                                                                        (VmType.DEFAULT,))


def test_probe_of_a_model_reproduces_its_config():
    model = ModelBackend("linux-6.18", HostConfig.from_facts(_facts()))
    facts = HostFacts.probe(model)
    assert facts.cap(Cap.MULTI_ADDRESS_SPACE) == 2
    assert facts.cap(Cap.MULTI_ADDRESS_SPACE, VmType.SW_PROTECTED) == 1  # kvm_arch_nr_memslot_as_ids
    assert facts.cap(Cap.MEMORY_ATTRIBUTES, VmType.DEFAULT) == 0
    assert facts.cap(Cap.MEMORY_ATTRIBUTES, VmType.SW_PROTECTED) == 8
    assert HostConfig.from_facts(facts).address_spaces == 2


def test_smm_address_space_only_for_vms_without_private_memory():
    """realkernel-private.md 5/bind/as1_plain_default_vm ok, 5/bind/as1_plain_swp EINVAL."""
    model = ModelBackend("linux-6.18", HostConfig.from_facts(_facts()))
    anon = model.mmap_anonymous(4 * P)
    default = model.create_vm(0)
    default.set_user_memory_region2(1 | 1 << 16, 0, 1 << 20, 4 * P, anon.address)
    swp = model.create_vm(1)
    with pytest.raises(KvmError) as ei:
        swp.set_user_memory_region2(1 | 1 << 16, 0, 1 << 20, 4 * P, anon.address)
    assert ei.value.errno == errno.EINVAL
    g = default.create_guest_memfd(4 * P, 0)
    default.set_user_memory_region2(2 | 1 << 16, KVM_MEM_GUEST_MEMFD, 2 << 20, 4 * P, 0, g, 0)
    no_smm = ModelBackend("linux-6.18", HostConfig.from_facts(_facts(system_caps={"MULTI_ADDRESS_SPACE": 0})))
    with pytest.raises(KvmError):
        no_smm.create_vm(0).set_user_memory_region2(1 | 1 << 16, 0, 1 << 20, 4 * P, anon.address)


def test_kernel_built_without_ksm_refuses_its_madvise_advices(tmp_path):
    """The lab 6.18.2 kernel has no CONFIG_KSM: MADV_[UN]MERGEABLE are EINVAL there (found by the lockstep fuzzer
    inside it), and the facts say so through /sys/kernel/mm."""
    from gmemlab.hostfacts import read_mm_features

    (tmp_path / "transparent_hugepage").mkdir()
    mm = read_mm_features(str(tmp_path))
    assert mm == {"ksm": False, "transparent_hugepage": True, "pkeys": mm["pkeys"]}  # pkeys: /proc/cpuinfo
    facts = HostFacts("6.18.2", {}, {}, ("default",), 1, (0, 1 << 36), {}, mm)
    assert HostFacts.from_json(facts.to_json()) == facts
    kb = ModelBackend("linux-6.18", HostConfig.from_facts(facts))
    m = kb.mmap_anonymous(4 * 4096)
    for advice in (12, 13):
        with pytest.raises(KvmError) as ei:
            m.madvise(0, 4096, advice)
        assert ei.value.errno == errno.EINVAL
    m.madvise(0, 4096, 14)  # MADV_HUGEPAGE: THP is there
    ModelBackend("linux-6.18", HostConfig.upstream()).mmap_anonymous(4096).madvise(0, 4096, 12)


def test_max_gpa_bits_is_the_host_maxphyaddr_only_with_tdp(tmp_path):
    from gmemlab.hostfacts import read_phys_bits
    from gmemlab.model.config import max_gpa_bits

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\naddress sizes\t: 40 bits physical, 57 bits virtual\n")
    assert read_phys_bits(str(cpuinfo)) == 40 and read_phys_bits(str(tmp_path / "none")) == 0
    tdp = HostFacts("6.18.2", {"PRE_FAULT_MEMORY": 1}, {}, ("default",), 1, (0, 1 << 36), phys_bits=40)
    shadow = HostFacts("6.18.44", {"PRE_FAULT_MEMORY": 0}, {}, ("default",), 1, (0, 1 << 36), phys_bits=48)
    assert (max_gpa_bits(tdp), max_gpa_bits(shadow)) == (40, 52)
    vm = ModelBackend("linux-6.18", HostConfig.from_facts(tdp)).create_vm(0)
    with pytest.raises(KvmError) as ei:
        vm.set_user_memory_region(1, 0, 1 << 40, 4096, 0)
    assert ei.value.errno == errno.EINVAL
