"""Griffe extension: the reStructuredText bits of our docstrings, rewritten as Markdown.

The docstrings are Google style (sections that griffe parses) whose prose uses a few Sphinx
constructs. mkdocstrings renders docstring text as Markdown, so before parsing this rewrites:

- ``.. math::`` blocks into ``$$ ... $$`` and ``:math:`x``` into ``\\(x\\)``, which
  ``pymdownx.arithmatex`` (generic mode) hands to MathJax in the browser;
- ``.. code-block:: LANG`` blocks and ``text::`` literal blocks into fenced code blocks;
- ``:func:``, ``:class:``, ``:meth:``, ``:mod:``, ``:data:``, ``:attr:``, ``:exc:`` and ``:obj:``
  roles into mkdocs-autorefs cross-references (``[`name`][crossentropy.path]``), resolved in the
  scope of the docstring's object as Python resolves names there.

A role is rendered as a link when its target is part of the documented public API, and as plain
inline code when it names something outside this package (``torch.Tensor``, a builtin) or an
existing private helper of this package. A role naming a ``crossentropy`` object that does not
exist becomes a link all the same, so that ``mkdocs build --strict`` fails on it (autorefs reports
it as an unresolved cross-reference): that is how a stale or mistyped reference is caught.

Option ``pending``: dotted paths announced in docstrings before their code has landed. While
absent they render as plain code (and are listed in the build log); once they exist they link.
"""

from __future__ import annotations

import ast
import builtins
import logging
import re
from typing import Any

import griffe

_log = logging.getLogger("mkdocs.plugins.griffe_rst")

_ROLE = re.compile(
    r":(?P<role>func|class|meth|mod|data|attr|exc|obj):`(?P<tilde>~?)(?P<target>[^`]+)`"
)
_MATH_ROLE = re.compile(r":math:`(?P<tex>[^`]+)`")
_DIRECTIVE = re.compile(
    r"^(?P<indent>[ ]*)\.\. (?P<name>math|code-block|code)::[ ]*(?P<arg>\S*)[ ]*$"
)
_LITERAL_INTRO = re.compile(r"^(?P<indent>[ ]*)(?P<text>\S.*?)(?P<sep>[ ]?)::[ ]*$")


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _block(lines: list[str], start: int, indent: int) -> tuple[list[str], int]:
    """The lines of the indented block after ``lines[start - 1]``: its body, and where it ends."""
    end = start
    while end < len(lines) and (not lines[end].strip() or _indent_of(lines[end]) > indent):
        end += 1
    while end > start and not lines[end - 1].strip():  # trailing blank lines stay outside
        end -= 1
    body = lines[start:end]
    while body and not body[0].strip():
        body = body[1:]
    if not body:
        return [], end
    cut = min(_indent_of(b) for b in body if b.strip())
    return [b[cut:] if b.strip() else "" for b in body], end


def _language(body: list[str], given: str) -> str:
    if given:
        return given
    try:
        ast.parse("\n".join(body))
    except SyntaxError:
        return "text"
    return "python"


_SECTION = re.compile(r"^(?P<indent>[ ]*)(?P<title>[A-Z][\w ]*):[ ]*$")
_PARAM_SECTIONS = {"args", "arguments", "params", "parameters", "keyword args", "other args"}
_GROUPED = re.compile(r"^(?P<names>[*\w]+(?:,[ ]*[*\w]+)+)[ ]*:(?P<rest>.*)$")


def rewrite_sections(text: str) -> str:
    """Sections griffe would miss: ``Example:`` (it reads ``Examples:``), grouped parameters.

    ``a, b: text`` (whose names may wrap onto the next line after a comma) becomes one entry per
    name with the same text, as griffe's Google parser reads one name per entry.
    """
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        head = _SECTION.match(line)
        if head and head.group("title") == "Example":
            out.append(head.group("indent") + "Examples:")
            i += 1
            continue
        if head and head.group("title").lower() not in _KNOWN_SECTIONS:
            i = _definitions_as_list(lines, i, out)
            continue
        if not head or head.group("title").lower() not in _PARAM_SECTIONS:
            out.append(line)
            i += 1
            continue
        out.append(line)
        base = len(head.group("indent"))
        i += 1
        item_indent = None
        while i < len(lines) and (not lines[i].strip() or _indent_of(lines[i]) > base):
            cur = lines[i]
            if item_indent is None and cur.strip():
                item_indent = _indent_of(cur)
            if not cur.strip() or _indent_of(cur) != item_indent:
                out.append(cur)
                i += 1
                continue
            # an item: join a name list that wraps after a comma
            joined, j = cur.strip(), i + 1
            while joined.endswith(",") and ":" not in joined and j < len(lines):
                joined += " " + lines[j].strip()
                j += 1
            grouped = _GROUPED.match(joined)
            if grouped is None:
                out.append(cur)
                i += 1
                continue
            k = j
            while k < len(lines) and lines[k].strip() and _indent_of(lines[k]) > item_indent:
                k += 1
            pad = " " * item_indent
            names = [n.strip() for n in grouped.group("names").split(",")]
            for name in names:
                out.append(f"{pad}{name}:{grouped.group('rest')}")
                out.extend(lines[j:k])
            i = k
    return "\n".join(out)


# griffe's Google sections; any other "Title:" block becomes an admonition
_KNOWN_SECTIONS = _PARAM_SECTIONS | {
    "keyword arguments", "other arguments", "other params", "other parameters", "raises",
    "exceptions", "returns", "yields", "receives", "examples", "example", "attributes",
    "functions", "methods", "classes", "modules", "warns", "warnings",
}  # fmt: skip
_DEFINITION = re.compile(r"^(?P<name>[*\w]+):[ ]+(?P<text>\S.*)$")


def _definitions_as_list(lines: list[str], i: int, out: list[str]) -> int:
    """An admonition block made of ``name: text`` items (``Call arguments:``) as a bullet list.

    Returns the index after the lines it consumed (only the title when it changed nothing).
    """
    out.append(lines[i])
    base = _indent_of(lines[i])
    j = i + 1
    while j < len(lines) and (not lines[j].strip() or _indent_of(lines[j]) > base):
        j += 1
    body = lines[i + 1 : j]
    filled = [b for b in body if b.strip()]
    if not filled:
        return i + 1
    item = min(_indent_of(b) for b in filled)
    heads = [b for b in filled if _indent_of(b) == item]
    if not all(_DEFINITION.match(b.strip()) for b in heads):
        return i + 1
    for b in body:
        m = _DEFINITION.match(b.strip()) if b.strip() and _indent_of(b) == item else None
        if m is not None:
            out.append(" " * item + f"- `{m.group('name')}`: {m.group('text')}")
        else:
            out.append(b)
    return j


_BULLET = re.compile(r"^(?P<indent>[ ]*)[*-][ ]+(?=\S)")


def rewrite_bullets(text: str) -> str:
    """``*``/``-`` lists as Python-Markdown reads them.

    reST aligns an item's later lines (and a ``.. math::`` inside it) with the item's text, two
    columns in; Python-Markdown keeps only lines indented by four inside the item, and starts a
    list only after a blank line. Lines inside a directive's body are shifted with their item
    but never read as items themselves (a formula line may start with ``-``).
    """
    out: list[str] = []
    item: int | None = None  # indent of the current item's bullet
    shift = 0
    body: int | None = None  # indent of the directive whose body the lines are in
    for line in text.split("\n"):
        ind, filled = _indent_of(line), bool(line.strip())
        if body is not None and filled and ind <= body:
            body = None
        if item is not None and filled and ind <= item and body is None:
            item = None
        bullet = _BULLET.match(line) if body is None else None
        if bullet:
            if out and out[-1].strip() and not _BULLET.match(out[-1]):
                out.append("")
            item = len(bullet.group("indent"))
            shift = max(0, 4 - (bullet.end() - item))
        elif item is not None and filled:
            line = " " * shift + line
        if body is None and (_DIRECTIVE.match(line) or _LITERAL_INTRO.match(line)):
            body = ind
        out.append(line)
    return "\n".join(out)


def rewrite_blocks(text: str) -> str:
    """``.. math::``, ``.. code-block::`` and ``::`` literal blocks as Markdown blocks."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = _DIRECTIVE.match(line)
        literal = None if directive else _LITERAL_INTRO.match(line)
        if directive is None and literal is None:
            out.append(line)
            i += 1
            continue
        m = directive or literal
        assert m is not None
        pad = m.group("indent")
        body, end = _block(lines, i + 1, len(pad))
        if not body:  # a stray "::" or an empty directive: leave the line alone
            out.append(line)
            i += 1
            continue
        if directive is not None:
            if out and out[-1].strip():
                out.append("")
            if directive.group("name") == "math":
                # reST: blank lines separate equations; a Markdown $$ block cannot hold one
                equations: list[list[str]] = [[]]
                for b in body:
                    if b:
                        equations[-1].append(b)
                    elif equations[-1]:
                        equations.append([])
                for k, eq in enumerate(e for e in equations if e):
                    out += ([""] if k else []) + [pad + "$$", *(pad + b for b in eq), pad + "$$"]
            else:
                lang = _language(body, directive.group("arg"))
                out += [pad + "```" + lang, *(pad + b if b else "" for b in body), pad + "```"]
        else:
            assert literal is not None
            # reST: "text::" shows "text:", and "text ::" shows "text"
            intro = literal.group("text") + ("" if literal.group("sep") else ":")
            out += [pad + intro, ""]
            lang = _language(body, "")
            out += [pad + "```" + lang, *(pad + b if b else "" for b in body), pad + "```"]
        i = end
    return "\n".join(out)


class RstToMarkdown(griffe.Extension):
    """Rewrite the docstrings of a loaded package (see the module docstring)."""

    def __init__(self, pending: list[str] | None = None) -> None:
        super().__init__()
        self.pending = set(pending or ())

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if getattr(pkg, "_rst_converted", False):
            return
        pkg._rst_converted = True  # type: ignore[attr-defined]
        public = _public_paths(pkg)
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = self._convert(obj.docstring.value, obj, public, loader)

    # griffe 1 names the same event on_package_loaded
    on_package_loaded = on_package

    def _convert(
        self, text: str, obj: griffe.Object, public: dict[str, str], loader: griffe.GriffeLoader
    ) -> str:
        text = rewrite_sections(rewrite_blocks(rewrite_bullets(text)))
        text = _MATH_ROLE.sub(lambda m: r"\(" + m.group("tex") + r"\)", text)

        def link(m: re.Match[str]) -> str:
            role, target = m.group("role"), m.group("target").strip()
            shown = target.rsplit(".", 1)[-1] if m.group("tilde") else target
            if role in ("func", "meth"):
                shown += "()"
            path = _resolve(obj, target, loader)
            if path is None:  # outside this package: a builtin, torch, sklearn, ...
                return f"`{shown}`"
            if path in public:
                return f"[`{shown}`][{public[path]}]"
            if _exists(loader, path):  # a private helper: no page to link to
                return f"`{shown}`"
            if path in self.pending:
                _log.info("griffe_rst: %s (pending) named in %s's docstring", path, obj.path)
                return f"`{shown}`"
            return f"[`{shown}`][{path}]"  # broken: autorefs reports it, --strict fails

        return _ROLE.sub(link, text)


def _walk(obj: griffe.Object) -> Any:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)  # type: ignore[arg-type]


def _is_private(path: str) -> bool:
    return any(part.startswith("_") for part in path.split("."))


def _public_paths(pkg: griffe.Module) -> dict[str, str]:
    """Canonical path of each documented object -> the public path its page shows it under.

    Documented: the public modules (no ``_`` in their path) and the names in their ``__all__``,
    with the public members of those classes.
    """
    found: dict[str, str] = {}

    def add(canonical: str, shown: str) -> None:
        if canonical not in found or len(shown) < len(found[canonical]):
            found[canonical] = shown
        found.setdefault(shown, shown)

    for mod in _walk(pkg):
        if not mod.is_module or _is_private(mod.path):
            continue
        add(mod.path, mod.path)
        for name in [str(e) for e in (mod.exports or ())]:
            if name not in mod.members:
                continue
            member = mod.members[name]
            try:
                target = member.final_target if member.is_alias else member
            except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                continue
            shown = f"{mod.path}.{name}"
            add(target.path, shown)
            if target.is_class:
                for sub_name, sub in target.members.items():
                    if not sub_name.startswith("_") and not sub.is_alias:
                        add(f"{target.path}.{sub_name}", f"{shown}.{sub_name}")
    return found


def _resolve(obj: griffe.Object, target: str, loader: griffe.GriffeLoader) -> str | None:
    """The dotted path ``target`` names in ``obj``'s scope, or None when it is not ours."""
    root = obj.path.split(".", 1)[0]
    head, _, rest = target.partition(".")
    if head == root:
        return target
    try:
        base = obj.resolve(head)
    except griffe.NameResolutionError:
        if rest or hasattr(builtins, head):
            return None  # a builtin, or a module this file does not import (sklearn.metrics...)
        return f"{obj.path}.{target}"  # unknown: reported as a broken reference
    path = f"{base}.{rest}" if rest else base
    if path.split(".", 1)[0] != root:
        return None
    # an alias inside our package (``from ._x import y`` then ``y.z``): follow it
    try:
        found = loader.modules_collection[base]
        if found.is_alias:
            final = found.final_target.path
            path = f"{final}.{rest}" if rest else final
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        pass
    return path


def _exists(loader: griffe.GriffeLoader, path: str) -> bool:
    try:
        loader.modules_collection[path]
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return False
    return True
