"""Simulator tests: scenarios, events, generators, costs, CLI (workloads.md §1, §4-§6)."""
