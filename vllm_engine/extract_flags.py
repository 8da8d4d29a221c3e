"""List the long options `vllm serve` accepts, read statically from a vLLM wheel.

Job: turn a vLLM wheel into `vllm-<version>-flags.txt` (one `--option` a line, sorted),
so the test suite can check every flag `entrypoint.sh` passes against the pinned
release without installing vLLM (it needs torch and a GPU). The wheel is a zip; only
a handful of its Python sources are parsed (`ast`), nothing is imported or executed.

How the parser is found and read (vLLM 0.33.0's layout; see `docs/deployment.md`):
- entry point `make_arg_parser` in `vllm/entrypoints/common/cli_args.py`; its
  `parser.add_argument(...)` calls, and every `X.add_cli_args(parser)` it reaches,
  followed into the class (and its bases) wherever it is imported from;
- an `add_argument` call contributes its literal option strings; a call whose option
  is built in a loop over `get_kwargs(cls)` (the dataclass-derived frontend
  arguments) contributes `--<field-with-dashes>` for every dataclass field of the
  class the walk entered with, inherited fields included, minus keys the class
  hierarchy `del`etes;
- an option is boolean when its call passes `action=argparse.BooleanOptionalAction`,
  or `**kwargs[...]` of a `get_kwargs(Config)` whose field is annotated `bool` (alone
  or in a union, but not the `bool | str | None` "optional value" form), as vLLM's
  `_compute_kwargs` decides. A boolean `--x` also accepts `--no-x`, and, through the
  `EnableDisableAction` that `FlexibleArgumentParser` registers, `--enable-x` and
  `--disable-x` accept each other (the `_inverse_prefixes` read from the wheel);
- argparse's own `--help` is added.

Invariant: a construct the walk does not understand (an option name that is not a
literal outside the dataclass loop, a `**kwargs` that cannot be traced to a config
field) raises `UnsupportedSource` naming the file and line, so a vLLM release that
changes the pattern fails loudly instead of yielding a short list.

Usage: `python vllm_engine/extract_flags.py WHEEL [--output FILE] [--check]`.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import re
import sys
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ENTRY_MODULE = "vllm.entrypoints.common.cli_args"
ENTRY_FUNCTION = "make_arg_parser"
ARGPARSE_UTILS = "vllm.utils.argparse_utils"
OUTPUT_DIR = Path(__file__).resolve().parent
_VERSION_RE = re.compile(r"""__version__\s*=\s*version\s*=\s*['"]([^'"]+)['"]""")


class UnsupportedSource(RuntimeError):
    """The wheel's argument-parser code uses a construct this walk cannot follow."""


@dataclass(frozen=True, slots=True)
class ClassRef:
    module: str
    node: ast.ClassDef


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    boolean: bool


@dataclass
class Wheel:
    """Python sources of a wheel, parsed on demand (one `ast.Module` per file)."""

    archive: zipfile.ZipFile
    _parsed: dict[str, ast.Module] = field(default_factory=dict)

    def path_of(self, module: str) -> str | None:
        base = module.replace(".", "/")
        names = set(self.archive.namelist())
        for candidate in (f"{base}.py", f"{base}/__init__.py"):
            if candidate in names:
                return candidate
        return None

    def module(self, name: str) -> ast.Module:
        if name not in self._parsed:
            path = self.path_of(name)
            if path is None:
                raise UnsupportedSource(f"module {name} is not in the wheel")
            self._parsed[name] = ast.parse(self.archive.read(path), filename=path)
        return self._parsed[name]

    def has_module(self, name: str) -> bool:
        return self.path_of(name) is not None

    def version(self) -> str:
        match = _VERSION_RE.search(self.archive.read("vllm/_version.py").decode())
        if match is None:
            raise UnsupportedSource("no __version__ in vllm/_version.py")
        return match.group(1)


# --- names: where a class or an alias used in a module is defined ------------------------


def _imported_from(module_name: str, tree: ast.Module, name: str) -> tuple[str, str] | None:
    """(module, original name) of `from M import original as name` in `tree`."""
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return _absolute(module_name, node), alias.name
    return None


def _absolute(module_name: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = module_name.split(".")[: -node.level]
    return ".".join([*parts, node.module] if node.module else parts)


def find_class(wheel: Wheel, module: str, name: str, depth: int = 0) -> ClassRef | None:
    """The class `name` as seen from `module`, following re-exports."""
    if depth > 10 or not wheel.has_module(module):
        return None
    tree = wheel.module(module)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return ClassRef(module, node)
    origin = _imported_from(module, tree, name)
    if origin is None:
        return None
    return find_class(wheel, origin[0], origin[1], depth + 1)


def _alias_value(wheel: Wheel, module: str, name: str, depth: int = 0) -> tuple[str, ast.expr]:
    """The expression a module-level type alias stands for, and the module it lives in."""
    if depth > 10 or not wheel.has_module(module):
        raise KeyError(name)
    tree = wheel.module(module)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return module, node.value
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == name
            and node.value is not None
        ):
            return module, node.value
        type_alias = getattr(ast, "TypeAlias", None)  # `type X = ...`, Python 3.12+
        if type_alias is not None and isinstance(node, type_alias) and node.name.id == name:
            return module, node.value
    origin = _imported_from(module, tree, name)
    if origin is None:
        raise KeyError(name)
    return _alias_value(wheel, origin[0], origin[1], depth + 1)


# --- annotations: is this field a BooleanOptionalAction flag? -----------------------------


def _union_members(node: ast.expr) -> Iterator[ast.expr]:
    """Top-level members of `A | B`, `Optional[A]`, `Union[A, B]`, `Annotated[A, ...]`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield from _union_members(ast.parse(node.value, mode="eval").body)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        yield from _union_members(node.left)
        yield from _union_members(node.right)
    elif isinstance(node, ast.Subscript) and _name(node.value) in ("Optional", "Union"):
        inner = node.slice
        items = inner.elts if isinstance(inner, ast.Tuple) else [inner]
        for item in items:
            yield from _union_members(item)
        if _name(node.value) == "Optional":
            yield ast.Constant(None)
    elif isinstance(node, ast.Subscript) and _name(node.value) == "Annotated":
        inner = node.slice
        yield from _union_members(inner.elts[0] if isinstance(inner, ast.Tuple) else inner)
    else:
        yield node


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


_PLAIN = {"bool", "str", "int", "float", "dict", "list", "tuple", "set", "Any", "Literal"}


def _member_kinds(wheel: Wheel, module: str, annotation: ast.expr, depth: int = 0) -> set[str]:
    """Names of the top-level union members, type aliases expanded ("None" for None)."""
    kinds: set[str] = set()
    for member in _union_members(annotation):
        if isinstance(member, ast.Constant) and member.value is None:
            kinds.add("None")
            continue
        name = _name(member)
        if name is None or name in _PLAIN or isinstance(member, ast.Subscript) or depth > 5:
            kinds.add(name or "?")
            continue
        try:
            alias_module, value = _alias_value(wheel, module, name)
        except KeyError:
            kinds.add(name)  # a class or an unresolvable alias: not a bool either way
            continue
        kinds |= _member_kinds(wheel, alias_module, value, depth + 1)
    return kinds


def is_boolean(wheel: Wheel, module: str, annotation: ast.expr) -> bool:
    """vLLM's `_compute_kwargs`: `bool` in the union → BooleanOptionalAction, unless the
    union is exactly `bool | str | None` (a flag with an optional value)."""
    kinds = _member_kinds(wheel, module, annotation)
    return "bool" in kinds and kinds != {"bool", "str", "None"}


# --- dataclass fields ---------------------------------------------------------------------


def _bases(wheel: Wheel, ref: ClassRef) -> Iterator[ClassRef]:
    for base in ref.node.bases:
        name = _name(base)
        found = find_class(wheel, ref.module, name) if name else None
        if found is not None:
            yield found


def class_fields(wheel: Wheel, ref: ClassRef) -> dict[str, tuple[str, ast.expr]]:
    """Dataclass fields (name → (module, annotation)), bases first, `ClassVar`s left out."""
    found: dict[str, tuple[str, ast.expr]] = {}
    for base in reversed(list(_bases(wheel, ref))):
        found.update(class_fields(wheel, base))
    for node in ref.node.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            annotation = node.annotation
            head = annotation.value if isinstance(annotation, ast.Subscript) else annotation
            if _name(head) in ("ClassVar", "InitVar"):
                continue
            found[node.target.id] = (ref.module, annotation)
    return found


def _deleted_keys(wheel: Wheel, ref: ClassRef) -> set[str]:
    """Keys a class hierarchy removes from its kwargs dict (`del kwargs["key"]`)."""
    keys: set[str] = set()
    for base in _bases(wheel, ref):
        keys |= _deleted_keys(wheel, base)
    for node in ast.walk(ref.node):
        if isinstance(node, ast.Delete):
            for target in node.targets:
                if (
                    isinstance(target, ast.Subscript)
                    and isinstance(target.value, ast.Name)
                    and isinstance(target.slice, ast.Constant)
                ):
                    keys.add(str(target.slice.value))
    return keys


def find_method(wheel: Wheel, ref: ClassRef, name: str) -> tuple[ClassRef, ast.FunctionDef]:
    for node in ref.node.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return ref, node
    for base in _bases(wheel, ref):
        try:
            return find_method(wheel, base, name)
        except LookupError:
            continue
    raise LookupError(f"{ref.node.name}.{name}")


# --- the walk -----------------------------------------------------------------------------


@dataclass
class Walk:
    wheel: Wheel
    options: dict[str, bool] = field(default_factory=dict)

    def add(self, option: Option) -> None:
        self.options[option.name] = self.options.get(option.name, False) or option.boolean

    def function(self, module: str, func: ast.FunctionDef, owner: ClassRef | None) -> None:
        kwargs_of = self._kwargs_sources(module, func)
        for node in ast.walk(func):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            if node.func.attr == "add_argument":
                self._add_argument(module, node, owner, kwargs_of)
            elif node.func.attr == "add_cli_args" and isinstance(node.func.value, ast.Name):
                self._enter(module, node.func.value.id)

    def _enter(self, module: str, class_name: str) -> None:
        ref = find_class(self.wheel, module, class_name)
        if ref is None:
            raise UnsupportedSource(f"{module}: cannot find class {class_name}")
        owner, method = find_method(self.wheel, ref, "add_cli_args")
        self.function(owner.module, method, ref)

    def _kwargs_sources(
        self, module: str, func: ast.FunctionDef
    ) -> dict[str, tuple[ClassRef, str | None]]:
        """Local names bound to `get_kwargs(C)` (→ (C, None)) or to one field's kwargs."""
        sources: dict[str, tuple[ClassRef, str | None]] = {}
        assigns = [
            node
            for node in ast.walk(func)
            if isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ]
        for node in sorted(assigns, key=lambda n: (n.lineno, n.col_offset)):
            assert isinstance(node.targets[0], ast.Name)
            traced = self._trace(module, node.value, sources)
            if traced is not None:
                sources[node.targets[0].id] = traced
        return sources

    def _trace(
        self, module: str, value: ast.expr, sources: dict[str, tuple[ClassRef, str | None]]
    ) -> tuple[ClassRef, str | None] | None:
        if (
            isinstance(value, ast.Call)
            and _name(value.func) == "get_kwargs"
            and value.args
            and isinstance(value.args[0], ast.Name)
        ):
            ref = find_class(self.wheel, module, value.args[0].id)
            return (ref, None) if ref is not None else None
        if isinstance(value, ast.Subscript) and isinstance(value.slice, ast.Constant):
            inner = (
                sources.get(value.value.id)
                if isinstance(value.value, ast.Name)
                else self._trace(module, value.value, sources)
            )
            if inner is not None and inner[1] is None:
                return inner[0], str(value.slice.value)
        if isinstance(value, ast.Name):
            return sources.get(value.id)
        return None

    def _add_argument(
        self,
        module: str,
        call: ast.Call,
        owner: ClassRef | None,
        kwargs_of: dict[str, tuple[ClassRef, str | None]],
    ) -> None:
        where = f"{module}:{call.lineno}"
        literal = [a.value for a in call.args if isinstance(a, ast.Constant)]
        dynamic = [a for a in call.args if not isinstance(a, ast.Constant | ast.Starred)]
        if dynamic:
            if owner is None or not all(isinstance(a, ast.JoinedStr) for a in dynamic):
                raise UnsupportedSource(f"{where}: option name is not a literal")
            self._dataclass_options(owner)
            return
        names = [str(v) for v in literal if isinstance(v, str) and v.startswith("--")]
        boolean = self._is_boolean_call(module, call, kwargs_of, where)
        for name in names:
            self.add(Option(name, boolean))

    def _is_boolean_call(
        self,
        module: str,
        call: ast.Call,
        kwargs_of: dict[str, tuple[ClassRef, str | None]],
        where: str,
    ) -> bool:
        for keyword in call.keywords:
            if keyword.arg == "action":
                return _name(keyword.value) == "BooleanOptionalAction"
        for keyword in call.keywords:
            if keyword.arg is None:  # **kwargs
                return self._is_boolean_kwargs(module, keyword.value, kwargs_of, where)
        return False

    def _is_boolean_kwargs(
        self,
        module: str,
        value: ast.expr,
        kwargs_of: dict[str, tuple[ClassRef, str | None]],
        where: str,
    ) -> bool:
        if isinstance(value, ast.Dict):  # **{**kwargs["f"], "key": override, ...}
            for key, item in zip(value.keys, value.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "action":
                    return _name(item) == "BooleanOptionalAction"
            spread = [
                item for key, item in zip(value.keys, value.values, strict=True) if key is None
            ]
            if len(spread) == 1:
                return self._is_boolean_kwargs(module, spread[0], kwargs_of, where)
            raise UnsupportedSource(f"{where}: cannot trace **{ast.unparse(value)}")
        traced = self._trace(module, value, kwargs_of)
        if traced is None or traced[1] is None:
            raise UnsupportedSource(f"{where}: cannot trace **{ast.unparse(value)}")
        ref, field_name = traced
        fields = class_fields(self.wheel, ref)
        if field_name not in fields:
            raise UnsupportedSource(f"{where}: {ref.node.name} has no field {field_name}")
        field_module, annotation = fields[field_name]
        return is_boolean(self.wheel, field_module, annotation)

    def _dataclass_options(self, owner: ClassRef) -> None:
        deleted = _deleted_keys(self.wheel, owner)
        for name, (module, annotation) in class_fields(self.wheel, owner).items():
            if name not in deleted:
                boolean = is_boolean(self.wheel, module, annotation)
                self.add(Option("--" + name.replace("_", "-"), boolean))


def _inverse_prefixes(wheel: Wheel) -> dict[str, str]:
    """`EnableDisableAction._inverse_prefixes`, if this vLLM registers that action."""
    tree = wheel.module(ARGPARSE_UTILS)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "_inverse_prefixes" for t in node.targets)
            and isinstance(node.value, ast.Dict)
        ):
            return {
                str(k.value): str(v.value)
                for k, v in zip(node.value.keys, node.value.values, strict=True)
                if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)
            }
    return {}


def expand(options: dict[str, bool], inverse_prefixes: dict[str, str]) -> set[str]:
    """Every spelling argparse accepts: `--no-x` for booleans, and enable/disable pairs."""
    spelled: set[str] = {"--help"}
    for name, boolean in options.items():
        spelled.add(name)
        if not boolean:
            continue
        spelled.add("--no-" + name.removeprefix("--"))
        for prefix, inverse in inverse_prefixes.items():
            if name.startswith(prefix):
                spelled.add(inverse + name.removeprefix(prefix))
    return spelled


def serve_flags(wheel_path: Path) -> tuple[str, list[str]]:
    """(vLLM version, sorted long options of `vllm serve`) for a wheel."""
    with zipfile.ZipFile(wheel_path) as archive:
        wheel = Wheel(archive)
        tree = wheel.module(ENTRY_MODULE)
        entry = next(
            (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == ENTRY_FUNCTION),
            None,
        )
        if entry is None:
            raise UnsupportedSource(f"{ENTRY_MODULE} has no {ENTRY_FUNCTION}()")
        walk = Walk(wheel)
        walk.function(ENTRY_MODULE, entry, None)
        return wheel.version(), sorted(expand(walk.options, _inverse_prefixes(wheel)))


def render(version: str, wheel_path: Path, flags: Iterable[str]) -> str:
    digest = hashlib.sha256(wheel_path.read_bytes()).hexdigest()
    header = [
        f"# Long options `vllm serve` accepts in vLLM {version} (one a line, sorted),",
        "# extracted statically by vllm_engine/extract_flags.py from",
        f"# {wheel_path.name}",
        f"# sha256 {digest}",
        '# Do not edit; to regenerate see docs/deployment.md, "vLLM release".',
    ]
    return "\n".join([*header, *flags]) + "\n"


def read_flags(path: Path) -> set[str]:
    """The options listed in a flags file (comments and blank lines skipped)."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return {line for line in lines if line and not line.startswith("#")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="a vLLM wheel (pip download vllm==X --no-deps)")
    parser.add_argument("--output", type=Path, help="default: vllm_engine/vllm-<version>-flags.txt")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the output file is not up to date"
    )
    args = parser.parse_args(argv)
    version, flags = serve_flags(args.wheel)
    output: Path = args.output or OUTPUT_DIR / f"vllm-{version}-flags.txt"
    text = render(version, args.wheel, flags)
    if args.check:
        current = output.read_text() if output.exists() else ""
        if current != text:
            print(f"{output} is stale: regenerate it from {args.wheel.name}", file=sys.stderr)
            return 1
        print(f"{output} is up to date ({len(flags)} options)")
        return 0
    output.write_text(text)
    print(f"wrote {len(flags)} options of vLLM {version} to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
