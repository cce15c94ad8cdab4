"""The plan layer: a job, its data's inventory, the hosts and the facts in; one frozen ``Plan`` out.

``make_plan`` chooses the component by the job's kind, the one place that does
(``recipe`` for fine-tuning, ``command`` for any ps-lite program); ``plan_from_json``
reads a saved plan back, checking every field's type. Nothing here touches a disk, a
clock, a socket or a random generator.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

from cluster.errors import InputError
from cluster.hosts import HostSpec
from launcher.data.inputs import Inventory
from launcher.plan.command import CommandRun, make_command_plan
from launcher.plan.decode import DecodeError, decode, decode_with
from launcher.plan.model import (Facts, HostFacts, Plan, ProcessSpec, Relayed, Role, Transfer, fact_changes,
                                 public_addresses)
from launcher.plan.network import training_network
from launcher.plan.placement import assign_workers, place
from launcher.plan.recipe import Recipe, make_recipe_plan
from launcher.plan.sources import ShardSpec, shard_dir
from launcher.spec.command_job import CommandSpec
from launcher.spec.jobspec import JobSpec

__all__ = ["CommandRun", "Facts", "HostFacts", "Plan", "ProcessSpec", "Recipe", "Relayed", "Role", "ShardSpec",
           "Transfer", "assign_workers", "fact_changes", "make_plan", "place", "plan_from_json", "public_addresses",
           "shard_dir"]

COMPONENTS = {Recipe.kind: Recipe, CommandRun.kind: CommandRun}   # plan.json's "kind" -> its component


def make_plan(job: JobSpec | CommandSpec, hosts: Sequence[HostSpec], facts: Facts, *,
              inventory: Inventory | None = None) -> Plan:
    """Decide every process, shard, file copy and config of the run: the component of the job's kind plans it.

    Raises InputError if the job cannot fit the data or the hosts.
    """
    if isinstance(job, CommandSpec):
        facts, network = training_network(hosts, facts, None)
        return dataclasses.replace(make_command_plan(job, hosts, facts), network=network)
    if inventory is None:
        raise TypeError("a fine-tuning plan needs the inventory of its data (launcher.data.inputs.check_inputs)")
    facts, network = training_network(hosts, facts, job.cluster.interface)
    return dataclasses.replace(make_recipe_plan(job, inventory, hosts, facts), network=network)


def plan_from_json(text: str, where: str) -> Plan:
    """The Plan that ``Plan.to_json`` wrote, every field checked against its type; InputError naming ``where``
    and the field if anything does not fit."""
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:
        raise InputError(where, f"is not a plan (not JSON: {err})") from None
    component = data.get("component") if isinstance(data, dict) else None
    kind = component.get("kind") if isinstance(component, dict) else None
    if kind not in COMPONENTS:
        raise InputError(where, f"is not a plan mxft wrote (component kind {kind!r}; known: "
                         f"{', '.join(COMPONENTS)})")
    try:
        part = decode(COMPONENTS[kind], {k: v for k, v in component.items() if k != "kind"}, "component")
        return decode_with(Plan, data, "plan", component=part)
    except DecodeError as err:
        raise InputError(where, f"is not a plan mxft wrote: {err}") from None
    except RecursionError:
        raise InputError(where, "is not a plan mxft wrote (nested too deep)") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number a plan holds")
