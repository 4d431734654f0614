"""The Ray / RLlib / torch internals the project relies on live in one module
(`rl_trading/rllib_adapter.py`): every private name it uses still exists on the installed
Ray / torch (a Ray upgrade fails here, naming what moved), the list it keeps is complete, and
no other module of the project uses a Ray / RLlib / torch private name or patches their
classes."""

from __future__ import annotations

import importlib
import inspect
import io
import re
import tokenize
from pathlib import Path

import pytest
from ray.rllib.connectors.common import AddTimeDimToBatchAndZeroPad
from ray.rllib.connectors.learner import AddOneTsToEpisodesAndTruncate

from rl_trading import rllib_adapter

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rl_trading", "envs", "policies", "tuning")
ADAPTER = ROOT / "rl_trading" / "rllib_adapter.py"


def _resolve(owner: str) -> tuple[object, str]:
    """(the module or class named by an owner key of PRIVATE_NAMES, its kind)."""
    path, _, _ = owner.partition("#")
    kind = "attr"
    for suffix, k in (("(**)", "kwargs"), ("()", "instance")):
        if path.endswith(suffix):
            path, kind = path[: -len(suffix)], k
    try:
        return importlib.import_module(path), kind
    except ImportError:
        module, _, name = path.rpartition(".")
        return getattr(importlib.import_module(module), name), kind


def _instance_attributes(cls: type) -> set[str]:
    """Attribute names the class (or a base) assigns on `self` in its source."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is object or not klass.__module__.startswith(("ray", "torch")):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        names |= set(re.findall(r"self\.(_\w+)\s*(?::[^=]*?)?=[^=]", source))
    return names


@pytest.mark.parametrize("owner", sorted(rllib_adapter.PRIVATE_NAMES))
def test_every_private_name_the_adapter_uses_still_exists(owner):
    target, kind = _resolve(owner)
    names = rllib_adapter.PRIVATE_NAMES[owner]
    if kind == "attr":
        missing = [n for n in names if not hasattr(target, n)]
    elif kind == "instance":
        missing = sorted(set(names) - _instance_attributes(target))
    else:  # constructor keywords, read from its source
        source = inspect.getsource(target.__init__)
        missing = [n for n in names if f'"{n}"' not in source and f"'{n}'" not in source]
    assert not missing, (
        f"Ray/torch changed under rl_trading/rllib_adapter.py (read from Ray "
        f"{rllib_adapter.RAY_VERSION}): {owner} no longer has {missing}"
    )


def test_the_shared_data_flag_is_still_rllibs():
    for piece in (AddOneTsToEpisodesAndTruncate, AddTimeDimToBatchAndZeroPad):
        assert rllib_adapter.LOSS_MASK_ADDED_KEY in inspect.getsource(piece), (
            f"{piece.__name__} no longer uses shared_data[{rllib_adapter.LOSS_MASK_ADDED_KEY!r}]"
        )


def _private_uses(source: str) -> set[str]:
    """`_name` in `x._name` attribute accesses and `def _name` definitions (code only)."""
    names: set[str] = set()
    tokens = [
        t
        for t in tokenize.generate_tokens(io.StringIO(source).readline)
        if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.STRING)
    ]
    for prev, tok in zip(tokens, tokens[1:], strict=False):
        private = tok.type == tokenize.NAME and re.match(r"_[a-z]", tok.string)  # no dunders
        if private and prev.string in (".", "def"):
            names.add(tok.string)
    return names


def _listed() -> set[str]:
    return {name for names in rllib_adapter.PRIVATE_NAMES.values() for name in names}


def test_the_adapter_lists_every_private_name_it_uses():
    used = _private_uses(ADAPTER.read_text())
    assert used <= _listed(), f"add to PRIVATE_NAMES: {sorted(used - _listed())}"


def _project_files() -> list[Path]:
    return [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py")) if p != ADAPTER]


def _code_tokens(source: str) -> list[tokenize.TokenInfo]:
    return [
        t
        for t in tokenize.generate_tokens(io.StringIO(source).readline)
        if t.type in (tokenize.NAME, tokenize.OP)
    ]


def _own_attributes(files: list[Path]) -> set[str]:
    """Underscore attributes the project's own classes assign on `self`."""
    names: set[str] = set()
    for path in files:
        names |= set(re.findall(r"self\.(_[a-z]\w*)\s*(?::[^=\n]*)?=[^=]", path.read_text()))
    return names


def test_no_other_module_uses_a_ray_or_torch_private_name():
    """Outside the adapter: no `ray._x` / `torch._x` module access, no override of a private
    method the adapter wraps, and no access to a wrapped private attribute (our own classes'
    underscore attributes, even of the same name, are fine)."""
    files = _project_files()
    wrapped = _listed()
    own = _own_attributes(files)
    offences = []
    for path in files:
        source = path.read_text()
        tokens = _code_tokens(source)
        for a, dot, b in zip(tokens, tokens[1:], tokens[2:], strict=False):
            private = re.match(r"_[a-z]", b.string)
            if a.string in ("ray", "torch") and dot.string == "." and private:
                offences.append(f"{path.relative_to(ROOT)}:{a.start[0]}: {a.string}.{b.string}")
        overrides = set(re.findall(r"def (_[a-z]\w*)", source)) & wrapped
        accessed = _private_uses(source) & wrapped - own
        for name in sorted(overrides | accessed):
            offences.append(f"{path.relative_to(ROOT)}: {name} (use rl_trading.rllib_adapter)")
    assert not offences, "\n".join(offences)


def test_no_module_patches_a_ray_or_torch_class():
    """No assignment to an attribute of a class imported from ray / torch (a monkeypatch)."""
    offences = []
    for path in [*_project_files(), ADAPTER]:
        source = path.read_text()
        imported = set(
            re.findall(r"^from (?:ray|torch)[\w.]* import \(?([^)]*?)\)?$", source, re.M | re.S)
        )
        names = {
            n.strip().split(" as ")[-1]
            for group in imported
            for n in group.replace("\n", ",").split(",")
            if n.strip()
        }
        for name in names:
            if name[:1].isupper() and re.search(rf"^\s*{name}\.\w+\s*=[^=]", source, re.M):
                offences.append(f"{path.relative_to(ROOT)}: {name}.<attr> = ...")
        # nor re-classing an instance of one (an object turned into a class it was not built as)
        for hit in re.findall(r"^\s*([\w.]+)\.__class__\s*=[^=]", source, re.M):
            offences.append(f"{path.relative_to(ROOT)}: {hit}.__class__ = ...")
    assert not offences, "\n".join(offences)
