"""The settings reference (docs/settings.md), generated from the settings classes.

    python -m voxbus.dev.settings_doc           # print it
    python -m voxbus.dev.settings_doc --write   # write docs/settings.md

Every setting is a field of a frozen dataclass read once from the environment by one reader (the
class's ``from_env``, or a function). Each row is taken from the code, so the reference cannot
drift from it (``tests/test_settings_doc.py`` compares the file with this output):

- the variable: the name the reader hands to ``Env.<type>()`` (with that ``Env``'s prefix) or to
  ``environ.get()`` in the keyword that sets the field, followed through the reader's local names
  and through helpers it passes its ``Env`` to;
- the type and the default: the field's annotation and default;
- the description: the field's ``#:`` comment, on the lines right above it or after it on its
  line (the attribute-comment convention Sphinx reads).

Variables read outside the settings classes (logging, probes, tracing, the model cache) are
listed from ``OTHER_VARIABLES``; the test checks that list against every ``environ.get`` in the
package.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import re
import sys
import tokenize
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from voxbus.runtime.settings import BusSettings
from voxbus.runtime.worker import WorkerOptions, worker_options_from_env
from voxbus.services.bridge.settings import BridgeSettings
from voxbus.services.llm.settings import LlmSettings
from voxbus.services.stt.settings import SttSettings
from voxbus.services.tts.settings import TtsSettings

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "settings.md"
REGENERATE = "python -m voxbus.dev.settings_doc --write"

_ENV_TYPES = frozenset({"str", "int", "float", "bool"})
VARIABLE_NAME = re.compile(r"[A-Z][A-Z0-9_]*(<[A-Z]+>[A-Z0-9_]*)?")


@dataclass(frozen=True)
class Source:
    """One settings class and the reader that fills it from the environment."""

    cls: type
    title: str
    about: str
    #: The reader: the name of a classmethod of ``cls``, or a module-level function.
    reader: str | Callable[..., object] = "from_env"
    #: Only the fields the reader sets (the class also holds options set in code).
    env_only: bool = False


SOURCES: tuple[Source, ...] = (
    Source(BusSettings, "Bus: every process", "How a process reaches its region's NATS servers "
           "and who it is there (`voxbus.runtime.settings`)."),
    Source(WorkerOptions, "Stage workers: leases and acks", "The timings of leases, pulls and "
           "acks (`voxbus.runtime.worker`); see "
           "[architecture.md](architecture.md#stateless-for-real).",
           reader=worker_options_from_env, env_only=True),
    Source(SttSettings, "STT: speech to text", "One STT worker: Whisper, turn detection, "
           "speculative finals, capacity (`voxbus.services.stt.settings`)."),
    Source(LlmSettings, "LLM: the replies", "One LLM worker: the backend, llama.cpp's threads "
           "and engines, the conversation (`voxbus.services.llm.settings`)."),
    Source(TtsSettings, "TTS: text to speech", "One TTS worker: the voice, the unit splitter, "
           "capacity (`voxbus.services.tts.settings`)."),
    Source(BridgeSettings, "Bridge: LiveKit rooms", "The bridge between LiveKit rooms and the "
           "bus (`voxbus.services.bridge.settings`)."),
)

#: Variables read outside the settings classes, with what they do.
OTHER_VARIABLES: Mapping[str, str] = {
    "VOXBUS_LOG_LEVEL": "Log level of the logs on stderr (default `info`; `voxbus nats`: "
                        "`warning`).",
    "VOXBUS_LOG_FORMAT": "`json` (one JSON object a line; the default unless stderr is a "
                         "terminal) or `console` (readable lines; the default at a terminal).",
    "VOXBUS_LOG_PII": "`1` keeps the values logged under the `pii` key (transcripts, prompts, "
                      "replies, room names); otherwise they are redacted.",
    "VOXBUS_METRICS_PORT": "Serve Prometheus metrics on `/metrics` at this port (unset: off).",
    "VOXBUS_METRICS_HOST": "The address the metrics endpoint binds (default all interfaces).",
    "VOXBUS_HEALTH_PORT": "Serve `/livez` and `/readyz` at this port (unset: off).",
    "VOXBUS_HEALTH_HOST": "The address the probes bind (default all interfaces).",
    "VOXBUS_TRACE_DIR": "Write each process's spans to `<dir>/<service>.jsonl`.",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "Send spans to this OTLP collector (when the OTLP exporter "
                                   "package is installed and `VOXBUS_TRACE_DIR` is unset).",
    "VOXBUS_CACHE": "The model cache (default `$XDG_CACHE_HOME/voxbus`, else "
                    "`~/.cache/voxbus`).",
    "XDG_CACHE_HOME": "Where the model cache goes when `VOXBUS_CACHE` is unset.",
    "LIVEKIT_SERVER_BIN": "The dev harness's livekit-server binary (default `.bin/server` from "
                          "`./dev setup`, then `livekit-server` on the PATH).",
    "LIVEKIT_SIP_BIN": "The dev harness's livekit-sip binary (default `.bin/livekit-sip` from "
                       "`./dev setup`, then `livekit-sip` on the PATH).",
    "VOXBUS_DEBUG": "`1`: a command stopped by bad input shows the traceback instead of one "
                    "line.",
    "BENCH_PROFILE": "`voxbus bench bus`: write a cProfile of the worker to this file.",
    "VOXBUS_NETNS": "Set by the dev harness in its children: the network namespace they run in.",
    "VOXBUS_NETNS_IP": "Set by the dev harness in its children: their address in that namespace.",
    "VOXBUS_NETNS_UNAVAILABLE": "Set by the dev harness in its children: why there is no "
                                "private network namespace.",
    "VOXBUS_SUPERVISED": "Set by the dev harness in a command it supervises.",
}


@dataclass(frozen=True)
class Row:
    field: str
    variables: tuple[str, ...]
    type: str
    default: str
    description: str


# --- the code, read -----------------------------------------------------------------------------

@cache
def _module_tree(module: str) -> tuple[ast.Module, str]:
    source = inspect.getsource(sys.modules[module])
    return ast.parse(source), source


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def _class_node(tree: ast.Module, name: str) -> ast.ClassDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise LookupError(f"class {name} not found")


def _render(arg: ast.expr) -> str | None:
    """A variable name as written: ``"MODEL"``, or ``f"NATS_URL_{region_env_suffix(r)}"`` as
    ``NATS_URL_<REGION>``."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr):
        parts = []
        for v in arg.values:
            if isinstance(v, ast.Constant):
                parts.append(str(v.value))
            elif isinstance(v, ast.FormattedValue):
                text = ast.unparse(v.value)
                parts.append("<REGION>" if "region" in text.lower() else f"<{text.upper()}>")
        return "".join(parts)
    return None


def _env_prefixes(fn: ast.FunctionDef) -> dict[str, str]:
    """Names bound to ``Env("PREFIX", ...)`` in ``fn``."""
    found: dict[str, str] = {}
    for node in ast.walk(fn):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name) and node.value.func.id == "Env"
                and node.value.args and isinstance(node.value.args[0], ast.Constant)):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = str(node.value.args[0].value)
    return found


def _assignments(fn: ast.FunctionDef) -> dict[str, list[ast.expr]]:
    """Every value a local name of ``fn`` is given, in source order (``x = v``, ``x: T = v``,
    ``x[k] = v``, ``(x := v)``)."""
    found: list[tuple[int, int, str, ast.expr]] = []

    def target_name(t: ast.expr) -> str | None:
        if isinstance(t, ast.Name):
            return t.id
        if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name):
            return t.value.id
        return None

    for node in ast.walk(fn):
        pairs: list[tuple[ast.expr, ast.expr]] = []
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if (isinstance(t, ast.Tuple) and isinstance(node.value, ast.Tuple)
                        and len(t.elts) == len(node.value.elts)):
                    pairs += zip(t.elts, node.value.elts, strict=True)
                else:
                    pairs.append((t, node.value))
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            pairs.append((node.target, node.value))
        elif isinstance(node, ast.NamedExpr):
            pairs.append((node.target, node.value))
        for t, v in pairs:
            if (name := target_name(t)) is not None:
                found.append((t.lineno, t.col_offset, name, v))
    out: dict[str, list[ast.expr]] = {}
    for _, _, name, v in sorted(found, key=lambda f: (f[0], f[1])):
        out.setdefault(name, []).append(v)
    return out


class _Reader:
    """What environment variables each keyword of a reader's construction call reads."""

    def __init__(self, fn: ast.FunctionDef, helpers: Mapping[str, ast.FunctionDef]) -> None:
        self.fn = fn
        self.helpers = helpers
        self.prefixes = _env_prefixes(fn)
        self.locals = _assignments(fn)

    def direct(self, tree: ast.AST, prefixes: Mapping[str, str]) -> list[str]:
        """The variables read in ``tree`` itself: ``env.int("N")``, ``environ.get("N")``, and
        through helpers it hands an ``Env`` to."""
        found: list[str] = []
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func, name = node.func, _render(node.args[0])
            if isinstance(func, ast.Attribute):
                if (isinstance(func.value, ast.Name) and func.value.id in prefixes
                        and func.attr in _ENV_TYPES and name is not None):
                    found.append(f"{prefixes[func.value.id]}_{name}")
                elif func.attr == "get" and name is not None and VARIABLE_NAME.fullmatch(name):
                    found.append(name)
            elif isinstance(func, ast.Name) and func.id in self.helpers:
                found += self.helper(self.helpers[func.id], node, prefixes)
        return list(dict.fromkeys(found))

    def helper(self, fn: ast.FunctionDef, call: ast.Call,
               prefixes: Mapping[str, str]) -> list[str]:
        """A helper handed the reader's ``Env``: ``_caps(env, "RAMP", ...)`` reads
        ``<PREFIX>_RAMP``; one handed no name reads what its own body reads."""
        params = [a.arg for a in fn.args.args]
        bound = {params[i]: prefixes[a.id] for i, a in enumerate(call.args)
                 if isinstance(a, ast.Name) and a.id in prefixes and i < len(params)}
        if not bound:
            return []
        names = [n for a in call.args
                 if (n := _render(a)) is not None and VARIABLE_NAME.fullmatch(n)]
        if names:
            prefix = next(iter(bound.values()))
            return [f"{prefix}_{n}" for n in names]
        return self.direct(fn, bound)

    def variables(self, expr: ast.expr, field: str,
                  seen: frozenset[str] = frozenset()) -> list[str]:
        """The variables ``expr`` reads; where it reads none itself, those of the local names it
        uses (the field's own name first, else each), through the first of their values that
        reads any."""
        if found := self.direct(expr, self.prefixes):
            return found
        names = [n.id for n in ast.walk(expr) if isinstance(n, ast.Name)
                 and n.id in self.locals and n.id not in seen]
        if field in names:
            names = [field]
        out: list[str] = []
        for name in dict.fromkeys(names):
            for value in self.locals[name]:
                if got := self.variables(value, "", seen | {name}):
                    out += got
                    break
        return list(dict.fromkeys(out))

    def construction(self, cls_name: str) -> ast.Call:
        calls = [n for n in ast.walk(self.fn) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name) and n.func.id in ("cls", cls_name)]
        if not calls:
            raise LookupError(f"{self.fn.name} never makes a {cls_name}")
        return max(calls, key=lambda c: len(c.keywords))


def field_variables(source: Source) -> dict[str, tuple[str, ...]]:
    """Field name -> the variables its reader reads for it (absent: not from the environment)."""
    cls = source.cls
    if isinstance(source.reader, str):
        tree, _ = _module_tree(cls.__module__)
        methods = [n for n in _class_node(tree, cls.__name__).body
                   if isinstance(n, ast.FunctionDef) and n.name == source.reader]
        if not methods:
            raise LookupError(f"{cls.__name__}.{source.reader} not found")
        fn = methods[0]
    else:
        tree, _ = _module_tree(source.reader.__module__)
        fn = _functions(tree)[source.reader.__name__]
    reader = _Reader(fn, _functions(tree))
    out: dict[str, tuple[str, ...]] = {}
    for kw in reader.construction(cls.__name__).keywords:
        if kw.arg is not None and (found := reader.variables(kw.value, kw.arg)):
            out[kw.arg] = tuple(found)
    return out


def _comments(source: str) -> dict[int, str]:
    """Line number -> the text of its comment."""
    return {tok.start[0]: tok.string for tok in
            tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type == tokenize.COMMENT}


def field_descriptions(cls: type) -> dict[str, str]:
    """Field name -> its ``#:`` comment (the lines right above it, or the end of its line),
    joined into one line."""
    tree, source = _module_tree(cls.__module__)
    lines = source.splitlines()
    comments = _comments(source)
    out: dict[str, str] = {}
    for node in _class_node(tree, cls.__name__).body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        text: list[str] = []
        line = node.lineno - 1
        while line >= 1 and lines[line - 1].strip().startswith("#:"):
            text.insert(0, lines[line - 1].strip()[2:].strip())
            line -= 1
        if not text:
            after = comments.get(node.end_lineno or node.lineno, "")
            if after.startswith("#:"):
                text = [after[2:].strip()]
        out[node.target.id] = " ".join(t for t in text if t)
    return out


# --- the reference, written ---------------------------------------------------------------------

def _type_text(t: object) -> str:
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        text = " or ".join(_type_text(a) for a in rest)
        return f"{text} or unset" if len(rest) < len(args) else text
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"comma-separated list of {_type_text(args[0])}"
    if origin is not None and args:
        return f"{getattr(origin, '__name__', str(origin))} of " + " to ".join(
            _type_text(a) for a in args)
    return getattr(t, "__name__", str(t))


def _default_text(f: dataclasses.Field[object]) -> str:
    if f.default is not dataclasses.MISSING:
        value: object = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, tuple):
        return f"`{','.join(map(str, value))}`"
    if isinstance(value, Mapping) and not value or value == "":
        return "empty"
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("``", "`").replace("|", "\\|").replace("\n", " ")


def rows(source: Source) -> list[Row]:
    hints = typing.get_type_hints(source.cls)
    variables = field_variables(source)
    descriptions = field_descriptions(source.cls)
    out = []
    for f in dataclasses.fields(source.cls):
        if source.env_only and f.name not in variables:
            continue
        out.append(Row(f.name, variables.get(f.name, ()), _type_text(hints[f.name]),
                       _default_text(f), descriptions.get(f.name, "")))
    return out


def class_variables() -> set[str]:
    """Every variable the settings classes' readers read."""
    return {v for s in SOURCES for vs in field_variables(s).values() for v in vs}


def _table(header: Sequence[str], body: Iterator[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in body]
    return lines


def render() -> str:
    out = [
        "# Settings reference",
        "",
        "Generated from the settings classes (each field's `#:` comment) by",
        f"`{REGENERATE}`; do not edit by hand: `tests/test_settings_doc.py` fails",
        "when this file and the code disagree.",
        "",
        "Every process reads its settings once, at start, from environment variables, into a",
        "frozen object passed explicitly. A bad value stops the command with one line saying",
        "which (`voxbus stt: STT_DEVICE must be cpu or cuda, got 'tpu'`). Booleans take",
        "`1`/`true`/`yes`/`on` and `0`/`false`/`no`/`off`; an empty variable means its default.",
        "",
    ]
    for s in SOURCES:
        out += [f"## {s.title}", "", s.about, ""]
        table = rows(s)
        out += _table(("variable", "type", "default", "what it does"), (
            (", ".join(f"`{v}`" for v in r.variables) or f"— (`{r.field}`, set in code)",
             r.type, r.default, r.description) for r in table))
        out.append("")
    out += ["## Other variables", "",
            "Read where they are used (logging, probes, tracing, the model cache, the dev",
            "harness), not by a settings class.", ""]
    out += _table(("variable", "what it does"),
                  ((f"`{name}`", text) for name, text in OTHER_VARIABLES.items()))
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m voxbus.dev.settings_doc",
                                 description="Print (or --write) docs/settings.md.")
    ap.add_argument("--write", action="store_true", help=f"write {DOC.relative_to(REPO)}")
    args = ap.parse_args(argv)
    text = render()
    if args.write:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(text)
        print(f"wrote {DOC.relative_to(REPO)}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
