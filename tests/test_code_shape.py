"""Rules the code keeps (issue 11): no function over 60 lines in launcher/, cluster/ or trainer/."""
from __future__ import annotations

import ast
import dataclasses
import glob
import os

from tests.helpers import REPO

MAX_FUNCTION_LINES = 60


def modules(*packages: str) -> list[str]:
    """Every module of the packages, their subpackages' too (relative paths, sorted)."""
    return sorted(os.path.relpath(path, REPO) for package in packages
                  for path in glob.glob(os.path.join(REPO, package, "**", "*.py"), recursive=True))


def tree_of(path: str) -> ast.Module:
    with open(os.path.join(REPO, path), encoding="utf-8") as handle:
        return ast.parse(handle.read())


def test_no_function_over_sixty_lines():
    long = []
    for path in modules("launcher", "cluster", "trainer"):
        long += [f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})"
                 for node in ast.walk(tree_of(path)) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                 and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def test_no_module_imports_a_test_module():
    """What several test modules share lives in tests/helpers.py, tests/plan_literals.py or a fixture: a test module
    imported by another runs its import-time code twice and ties the two together."""
    importers = []
    for path in sorted(glob.glob(os.path.join(REPO, "tests", "*.py")) + glob.glob(os.path.join(REPO, "bench", "*.py"))):
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        for node in ast.walk(tree):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            importers += [f"{os.path.relpath(path, REPO)}:{node.lineno} {name}" for name in names
                          if name.split(".")[-1].startswith("test_")
                          or (path.startswith(os.path.join(REPO, "bench")) and name.split(".")[0] == "tests")]
    assert importers == []  # what both need lives in testing/


def test_no_tar_archive_is_unpacked_anywhere():
    """Files come back from hosts by name (launcher/run/fetch.py), never as an archive whose members name their own
    paths: tarfile's filters could be bypassed (CVE-2025-4517) and Python 3.11.0-3.11.3 has none."""
    users = [f"{path}:{node.lineno}" for path in modules("launcher", "cluster", "trainer")
             for node in ast.walk(tree_of(path)) if isinstance(node, (ast.Import, ast.ImportFrom))
             and "tarfile" in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module])]
    assert users == []


JOB_SECTIONS = ("cfg.job", "cfg.train", "cfg.data", "cfg.model", "cfg.job['cluster']", "cfg.job[\"cluster\"]")


def test_the_trainer_keeps_no_default_of_a_job_key():
    """A job key's default is declared once, in launcher/spec/jobspec.py; the worker's config holds the effective job
    (every key the schema declares, absent only where its default is None), so the trainer reads each key as it is
    and never supplies a second default with ``.get(KEY, DEFAULT)``."""
    seconds = []
    for path in sorted(glob.glob(os.path.join(REPO, "trainer", "*.py"))):
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                    and len(node.args) == 2 and ast.unparse(node.func.value) in JOB_SECTIONS:
                seconds.append(f"{os.path.relpath(path, REPO)}:{node.lineno} {ast.unparse(node)}")
    assert seconds == []


MAX_MODULE_LINES = 400


def test_no_module_of_the_launcher_over_four_hundred_lines():
    """A module that holds several concerns is split by them (issue 25: plan.py and jobspec.py were god-modules)."""
    long = []
    for path in modules("launcher"):
        with open(os.path.join(REPO, path), encoding="utf-8") as handle:
            count = sum(1 for _ in handle)
        if count > MAX_MODULE_LINES:
            long.append(f"{path} ({count})")
    assert long == []


# Where a job's kind or a host's transport may be asked for by type: the component choice (make_plan), the job kind
# choice (kinds.kind_of) and the transport choice (remote_host). Everywhere else a component, kind or transport is
# asked to do its part.
CHOSEN_BY_TYPE = {"JobSpec", "CommandSpec", "Recipe", "CommandRun", "FineTuning", "Command", "SSHHost", "SrunHost",
                  "LocalTransport", "SSHProcess", "SrunProcess", "LocalProcess"}
CHOICE_POINTS = {"launcher/plan/__init__.py", "launcher/run/kinds.py", "cluster/backend.py"}


def test_job_kinds_and_transports_are_told_apart_only_where_they_are_chosen():
    asked = []
    for path in modules("launcher", "cluster"):
        for node in ast.walk(tree_of(path)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance" \
                    and len(node.args) == 2 and {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)} \
                    & CHOSEN_BY_TYPE and path not in CHOICE_POINTS:
                asked.append(f"{path}:{node.lineno} {ast.unparse(node)}")
    assert asked == []


def import_graph() -> dict[str, set[str]]:
    """Module -> the project's modules it imports (at any depth of the module, lazy imports too)."""
    names = {path[:-3].replace("/", ".").removesuffix(".__init__"): path
             for path in modules("launcher", "cluster", "trainer")}
    graph = {}
    for name, path in names.items():
        found = set()
        for node in ast.walk(tree_of(path)):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in names else node.module
                          for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = {other for other in found if other in names and other != name}
    return graph


def test_no_import_cycle():
    graph, cycles, done = import_graph(), [], set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycles.append(" -> ".join(path[path.index(name):] + [name]))
            return
        if name in done:
            return
        for other in sorted(graph[name]):
            visit(other, path + [name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert cycles == []


# The layers, lowest first: a module may import its own layer and those below it, never one above.
# ``launcher.remote`` runs on the hosts: the standard library only (and its own package).
LAYERS = ("cluster", "trainer", "launcher.spec", "launcher.data", "launcher.plan", "launcher.report", "launcher.run",
          "launcher")


def _layer(module: str) -> int:
    """The index of the most specific layer holding ``module`` (``launcher.run.x``: run, not launcher)."""
    matching = [layer for layer in LAYERS if module == layer or module.startswith(layer + ".")]
    return LAYERS.index(max(matching, key=len))


def test_packages_import_only_the_layers_below_them():
    upward = []
    for module, imported in import_graph().items():
        if module.startswith("launcher.remote"):
            upward += [f"{module} -> {other}" for other in imported if not other.startswith("launcher.remote")]
            continue
        upward += [f"{module} -> {other}" for other in sorted(imported)
                   if not other.startswith("launcher.remote") and _layer(other) > _layer(module)]
    assert upward == []


PROBED = {"mxnet"}   # what host_probe looks for on a host (imported there only to ask its version)


def test_the_host_programs_import_the_standard_library_only():
    import sys
    foreign = []
    for path in modules("launcher/remote"):
        for node in ast.walk(tree_of(path)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            foreign += [f"{path}:{node.lineno} {name}" for name in names
                        if name.split(".")[0] not in sys.stdlib_module_names | PROBED and name != "__future__"
                        and not name.startswith("launcher.remote")]
    assert foreign == []


def test_the_trainers_typed_settings_name_keys_of_the_job_schema():
    """The trainer reads typed settings (trainer/config.py) that the launcher fills from the effective job: each field
    is a key the schema declares in that section, so a key renamed in the schema cannot leave the trainer behind."""
    from launcher.spec.jobspec import DataSpec, ModelSpec
    from launcher.spec.train_keys import TrainSpec
    from launcher.spec.schema import keys_of
    from trainer.config import SECTIONS
    schema = {"train": TrainSpec, "data": DataSpec, "model": ModelSpec}
    strays = [f"{name}.{field.name}" for name, kind in SECTIONS.items() for field in dataclasses.fields(kind)
              if field.name not in keys_of(schema[name])]
    assert strays == [] and set(SECTIONS) == set(schema)


def test_each_way_of_reaching_a_remote_host_has_what_the_launch_asks_of_one():
    """``cluster.backend.RemoteHost`` is a protocol, not a union: SSH and srun hosts each have all of it."""
    from cluster.backend import RemoteHost
    from cluster.hosts import HostSpec
    from cluster.srun import SrunHost
    from cluster.ssh import SSHHost, SSHOptions
    from cluster.supervise import Transport
    asked = ({name for name in vars(RemoteHost) if not name.startswith("_")}
             | set(RemoteHost.__annotations__) | set(Transport.__annotations__) | {"start"})
    assert {"address", "run", "stream_to", "stream_from", "close", "unreachable", "label", "starts_in_pool",
            "watched_by_keepalive", "start"} <= asked
    for host in (SSHHost(HostSpec("gpu01"), SSHOptions()), SrunHost(HostSpec("node01"))):
        assert [name for name in sorted(asked - {"address"}) if not hasattr(host, name)] == [], type(host).__name__
        assert isinstance(getattr(type(host), "address"), property)
