"""``gmemlab profiles``: the model's kernel profiles, their lineage, and what each changes."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console

from ..model.profiles import BEHAVIOURS, GMEM_IN_PLACE_CONVERSION_DEFAULT, IN_PLACE_DEFAULT_ENV
from ..uapi import CAP_GMEM_ATTRIBUTES_ENV, KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES, PROFILES, lineage
from .common import Col, fit_table, unknown, versioned


def unverified() -> list[dict[str, str]]:
    """The values linux-7.md marks unverified, each one overridable constant."""
    return [
        {"name": "KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES", "value": str(KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES),
         "override": f"${CAP_GMEM_ATTRIBUTES_ENV}", "where": "gmemlab.uapi",
         "why": "the number moved with every rebase (246, 248, 249, 250 in v8, 251); 250 is the recorded kernel's"},
        {"name": "kvm.gmem_in_place_conversion default", "value": GMEM_IN_PLACE_CONVERSION_DEFAULT,
         "override": f"${IN_PLACE_DEFAULT_ENV} (auto|Y|N), or HostConfig.gmem_in_place_conversion",
         "where": "gmemlab.model.profiles.linux_7_4",
         "why": "v8: on iff CONFIG_KVM_VM_MEMORY_ATTRIBUTES is off ('auto'); the final default is not known"},
    ]


def describe(name: str) -> dict[str, Any]:
    b = BEHAVIOURS[name]
    return {
        "name": name,
        "parent": b.api.parent,
        "lineage": list(reversed(lineage(name))),
        "description": b.api.description,
        "changes": [{"summary": c.summary, "source": c.source, "hooks": list(c.hooks)} for c in type(b).CHANGES],
    }


def register(app: typer.Typer) -> None:
    @app.command()
    def profiles(
        name: Annotated[str | None, typer.Argument(help="one profile: show its whole lineage", show_default=False,
                                                   autocompletion=lambda incomplete: [
                                                       p for p in PROFILES if p.startswith(incomplete)])] = None,
        as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    ) -> None:
        """List the model's kernel profiles and what each changes relative to its parent.

        Merged Linux is a lineage (linux-6.18 -> linux-7.3 -> linux-7.4 -> linux-7.4-v8); rfc-v2 is its own.
        With NAME, every profile from the lineage's root down to NAME is shown."""
        if name is not None and name not in PROFILES:
            raise unknown("profile", name, list(PROFILES))
        names = list(reversed(lineage(name))) if name else list(PROFILES)
        if as_json:
            print(json.dumps(versioned({"profiles": [describe(n) for n in names], "unverified": unverified()}),
                             indent=2))
            return
        console = Console(highlight=False)
        for n in names:
            d = describe(n)
            title = f"{n}" + (f"  (parent: {d['parent']})" if d["parent"] else "  (root)")
            console.print(fit_table([Col("changes" if d["parent"] else "defines"), Col("source")],
                                    [(c["summary"], c["source"]) for c in d["changes"]], title=title,
                                    caption=d["description"]))
        if name is None or "linux-7.4" in lineage(name):
            console.print(fit_table([Col("what"), Col("value", "id"), Col("override"), Col("why")],
                                    [(u["name"], u["value"], u["override"], u["why"]) for u in unverified()],
                                    title="unverified values (linux-7.md 1.1): one overridable constant each"))
