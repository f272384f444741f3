"""Distributed layouts of the training rules, worked out when the workflow is planned (no torch).

`pretrain` and `train_lm` state their global batch in the recipe; the world size comes from the rule's resources
(profiles/default, a `--workflow-profile`, `--set-resources`): nodes x GPUs per node (gres `gpu:K`, else `gpu`), one
CPU process without GPUs, as common.launch starts them. A layout that cannot reach the recipe's batch would fail
only after the job has queued, started NCCL and been retried; here it is an error before anything runs, naming the
keys and the sizes that work, and every layout that works is printed (world size x accumulation x micro-batch =
global batch) so a dry run shows what each job will do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from common.config import ConfigError
from common.launch import LaunchError, gpus_per_node
from lm.config import batch_layout
from pipeline.config import lm_train_config, pretrain_config
from spidr.config import batch_plan

LAYOUT_RESOURCES = ("nodes", "gpu", "gres")
# A resource given as a function of the job (a rule's lambda): known only once the job exists.
PER_JOB = "<per job>"


def resource_value(resource: Any) -> Any:
    """A rule's resource as planned: the value of a constant, the text a profile or `--set-resources` gave (Snakemake
    keeps it as an expression until a job exists), PER_JOB for a function of the job."""
    if resource is None:
        return None
    is_evaluable = getattr(resource, "is_evaluable", None)
    if is_evaluable is None:
        return resource
    if not is_evaluable():
        return resource.value
    raw = getattr(resource, "raw", None)
    if raw is None:
        return PER_JOB
    if isinstance(raw, str) and raw.strip().isdigit():
        return int(raw)
    return raw


def layout_resources(resources: Mapping[str, Any]) -> dict[str, Any]:
    """nodes, gpu and gres of a rule's resources (Snakemake's Resource objects or plain values)."""
    return {key: resource_value(resources.get(key)) for key in LAYOUT_RESOURCES}


def world_size(resources: Mapping[str, Any]) -> int:
    """Processes of one job: nodes x GPUs per node, at least one per node (common.launch's rule)."""
    nodes = int(resources.get("nodes") or 1)
    gpu = int(resources.get("gpu") or 0)
    gres = str(resources.get("gres") or "")
    return nodes * max(gpus_per_node(nodes, gpu, gres), 1)


def describe_resources(resources: Mapping[str, Any]) -> str:
    """E.g. `nodes=2 gres=gpu:8` or `gpu=1`: the resources that set the world size."""
    parts = []
    if int(resources.get("nodes") or 1) > 1:
        parts.append(f"nodes={resources['nodes']}")
    if resources.get("gres"):
        parts.append(f"gres={resources['gres']}")
    elif int(resources.get("gpu") or 0) > 0:
        parts.append(f"gpu={resources['gpu']}")
    return " ".join(parts) or "no GPU"


def _pretrain_layout(config: Mapping[str, Any], encoder: str, world: int) -> str:
    where = f"encoders.{encoder}.train"
    train = pretrain_config(dict(config), encoder)
    try:
        return batch_plan(train.data, world).describe()
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def _lm_layout(config: Mapping[str, Any], lm: str, world: int) -> str:
    return batch_layout(lm_train_config(dict(config), lm), world, f"lms.{lm}.train")


def training_entries(config: Mapping[str, Any]) -> dict[str, tuple[list[str], Callable[..., str]]]:
    """Per training rule: the config entries it trains and the function that lays out one of them."""
    encoders = [name for name, entry in (config.get("encoders") or {}).items() if "train" in entry]
    return {"pretrain": (encoders, _pretrain_layout), "train_lm": (list(config.get("lms") or {}), _lm_layout)}


def plan(config: Mapping[str, Any], resources: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per training job kind: `RULE ENTRY (RESOURCES): W process(es) x A accumulation x M ... per step`.

    `resources` maps each training rule to its planned nodes / gpu / gres. Raises one ConfigError listing every
    layout that cannot reach its recipe's batch (each with the sizes that work) and how to change the layout.
    """
    lines: list[str] = []
    errors: list[str] = []
    for rule, (entries, layout) in training_entries(config).items():
        res = resources.get(rule) or {}
        if not entries:
            continue
        if PER_JOB in res.values():
            lines.append(f"{rule}: resources computed per job: the trainer checks its layout when it starts")
            continue
        try:
            world = world_size(res)
        except (LaunchError, ValueError) as err:
            errors.append(f"{rule}: resources {dict(res)}: {err}")
            continue
        for name in entries:
            try:
                lines.append(f"{rule} {name} ({describe_resources(res)}): {layout(config, name, world)}")
            except ConfigError as err:
                errors.append(f"{rule} {name} on {world} process(es) ({describe_resources(res)}): {err}")
    if errors:
        raise ConfigError(
            "the training layout cannot reach the recipe's global batch (world size x accumulation x micro-batch "
            "must equal it):\n  " + "\n  ".join(errors) + "\nChange the rule's resources in the workflow profile "
            "(its set-resources: nodes, gpu or gres) to a world size that works, or the config keys named above")
    return lines


def report(config: Mapping[str, Any], resources: Mapping[str, Mapping[str, Any]]) -> str:
    """The block a dry run prints: a header and plan()'s lines (empty when nothing is trained)."""
    lines = plan(config, resources)
    if not lines:
        return ""
    return ("Training layouts (world size x accumulation x micro-batch = global batch):\n    "
            + "\n    ".join(lines))
