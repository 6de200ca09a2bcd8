"""The simulator: a scenario's events applied to the model under a policy, priced by the cost model.

Public API: :func:`gmemlab.sim.run.simulate` / :func:`gmemlab.sim.run.run_scenario` returning a
:class:`gmemlab.sim.run.RunResult` (``as_json()`` is the documented result object).
"""
