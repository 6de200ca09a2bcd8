"""The workload layer: what a guest and its VMM do, as data (workloads.md §1, §5).

Scenario files validated into typed dataclasses (:mod:`.scenario`, read with :mod:`.schema` and
:mod:`.units`), the event vocabulary of §1 (:mod:`.events`) and the size rules both the generators and the
reports use (:mod:`.derived`). It imports nothing of gmemlab but ``uapi`` and ``errors``: the guest
generators (:mod:`gmemlab.arch`) and the simulator engine (:mod:`gmemlab.sim`) both stand on it.
"""
