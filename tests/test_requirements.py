"""requirements/cpu.txt, the pinned CPU install, against pyproject.toml (with every extra) and
the installed environment.

`make install` installs that file with --no-deps, so pip checks nothing: these tests do.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "cpu.txt"
# What a CPU install leaves out: torch imports and runs without it (it compiles GPU kernels).
LEFT_OUT = ("triton",)


def _pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def _project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    return [Requirement(r) for r in project["dependencies"] + extras]


def _applies(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**default_environment(), "extra": e}) for e in extras | {""})


def _left_out(name: str) -> bool:
    return name.startswith(LEFT_OUT)


def test_every_project_requirement_is_pinned_within_its_range() -> None:
    pins = _pins()
    for requirement in _project_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not pinned in {LOCK.name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{LOCK.name} pins {name}=={pins[name]}, outside {requirement}"
        )


def test_the_pins_are_closed_under_their_dependencies_but_triton() -> None:
    pins = _pins()
    wanted = {canonicalize_name(r.name): set(r.extras) for r in _project_requirements()}
    missing, seen, queue = [], set(), list(wanted)
    while queue:
        name = queue.pop()
        if name in seen:
            continue
        seen.add(name)
        for text in metadata.distribution(name).requires or []:
            requirement = Requirement(text)
            dependency = canonicalize_name(requirement.name)
            if not _applies(requirement, wanted.get(name, set())) or _left_out(dependency):
                continue
            if dependency not in pins:
                missing.append(f"{dependency} (needed by {name})")
            elif not requirement.specifier.contains(pins[dependency], prereleases=True):
                missing.append(f"{dependency}=={pins[dependency]} outside {requirement} (needed by {name})")
            else:
                wanted.setdefault(dependency, set()).update(requirement.extras)
                queue.append(dependency)
    assert not missing, missing


def test_the_environment_runs_the_pinned_versions_and_triton_is_not_pinned() -> None:
    pins = _pins()
    assert not [name for name in pins if _left_out(name)]
    differ = {}
    for name, version in pins.items():
        installed = metadata.version(name)
        if installed != version:
            differ[name] = (version, installed)
    assert not differ, f"pinned vs installed: {differ}"
