"""Every error message metakd can print, read from the source, and docs/errors.md's table of them.

    python tools/error_messages.py            # print the table
    python tools/error_messages.py --write    # put it into docs/errors.md (between the errors markers)

Sources: each ``UserError(...)`` (and its subclasses) in ``metakd/`` (all of it, recursively, so
files may move), the one-line forms of operating-system errors (``errors._OS_FIXES``), the
option-error and Ctrl-C lines, and the ``echo "error: ..."`` lines of the numbered scripts and
``tools/common.sh``. tests/test_error_table.py fails when docs/errors.md's table is not this one, so a
new message cannot be added without the documentation saying it.
"""
from __future__ import annotations

import argparse
import ast
import errno
import os
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "errors.md"  # the page that holds the table, between BEGIN and END
BEGIN = "<!-- error-messages: begin (tools/error_messages.py --write) -->"
END = "<!-- error-messages: end -->"
GAP = "…"  # a value filled in at run time
ERROR_CLASSES = {"UserError", "TrainingDiverged", "DownloadError"}
SCRIPTS = ("1_get_data.sh", "2_process_data.sh", "3_train_teacher.sh", "4_student_first.sh", "5_student_second.sh",
           "6_eval.sh", "compare.sh", "tools/common.sh")


class Unreadable(Exception):
    """A message the extractor cannot turn into a template (write it as a literal)."""


def _render(node: ast.AST, scope: "_Scope") -> List[str]:
    """The templates a message expression can produce, values replaced by GAP."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return ["".join(v.value if isinstance(v, ast.Constant) else GAP for v in node.values)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return [a + b for a in _render_part(node.left, scope) for b in _render_part(node.right, scope)]
    if isinstance(node, ast.IfExp):
        return _render(node.body, scope) + _render(node.orelse, scope)
    if isinstance(node, ast.Name):
        return scope.strings_for(node.id)
    raise Unreadable(ast.unparse(node))


def _render_part(node: ast.AST, scope: "_Scope") -> List[str]:
    try:
        return _render(node, scope)
    except Unreadable:
        return [GAP]  # e.g. (f" (process {holder})" if ... else ""): a value


class _Scope:
    """Resolves a message held in a variable: a parameter (its default and every keyword argument
    given for it anywhere in metakd), or the messages of a ``[(condition, message), ...]`` list
    in the same function."""

    def __init__(self, func: Optional[ast.FunctionDef], keyword_args: Dict[str, List[ast.AST]]):
        self.func, self.keyword_args = func, keyword_args

    def strings_for(self, name: str) -> List[str]:
        if self.func is None:
            raise Unreadable(name)
        args = self.func.args
        params = args.args + args.kwonlyargs
        defaults = [None] * (len(args.args) - len(args.defaults)) + list(args.defaults) + list(args.kw_defaults)
        for p, d in zip(params, defaults):
            if p.arg == name:
                nodes = ([d] if d is not None else []) + self.keyword_args.get(f"{self.func.name}.{name}", [])
                return [t for n in nodes for t in _render(n, _Scope(None, {}))]
        found = []
        for node in ast.walk(self.func):
            if isinstance(node, ast.List):
                for elt in node.elts:
                    if isinstance(elt, ast.Tuple) and len(elt.elts) == 2:
                        found += _render(elt.elts[1], _Scope(None, {}))
        if not found:
            raise Unreadable(name)
        return found


def _is_rewrap(node: ast.AST) -> bool:
    """``UserError(str(e), ...)`` or ``UserError(f"{e} ...")``: a message extracted where it was raised."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "str":
        return True
    return (isinstance(node, ast.JoinedStr) and bool(node.values) and isinstance(node.values[0], ast.FormattedValue)
            and isinstance(node.values[0].value, ast.Name) and node.values[0].value.id == "e")


def python_messages(package: Path = ROOT / "metakd") -> List[Tuple[str, str]]:
    """(template, file relative to ROOT) of every UserError in ``package``; Unreadable when one
    cannot be read."""
    trees = {p: ast.parse(p.read_text(encoding="utf-8")) for p in sorted(package.rglob("*.py"))}
    keyword_args: Dict[str, List[ast.AST]] = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                fname = getattr(node.func, "id", getattr(node.func, "attr", None))
                for kw in node.keywords:
                    if kw.arg:
                        keyword_args.setdefault(f"{fname}.{kw.arg}", []).append(kw.value)
    out = []
    for path, tree in trees.items():
        funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and node.args
                    and getattr(node.func, "id", getattr(node.func, "attr", None)) in ERROR_CLASSES):
                continue
            if _is_rewrap(node.args[0]):
                continue
            func = min((f for f in funcs if f.lineno <= node.lineno <= f.end_lineno),
                       key=lambda f: f.end_lineno - f.lineno, default=None)
            try:
                templates = _render(node.args[0], _Scope(func, keyword_args))
            except Unreadable as e:
                raise Unreadable(f"{path.relative_to(ROOT)}:{node.lineno}: cannot read the message {e}; write it as a "
                                 "string or f-string literal") from None
            out += [(t, str(path.relative_to(ROOT))) for t in templates]
    return out


def os_messages() -> List[Tuple[str, str]]:
    sys.path.insert(0, str(ROOT))
    from metakd.infra.errors import _OS_FIXES

    return [(f"{os.strerror(code)}; {fix}", f"metakd/infra/errors.py ({errno.errorcode[code]})")
            for code, fix in _OS_FIXES.items()]


def script_messages() -> List[Tuple[str, str]]:
    out = []
    for name in SCRIPTS:
        path = ROOT / name
        if not path.exists():
            continue
        for text in re.findall(r'echo "error: (.*?)" >&2', path.read_text(encoding="utf-8")):
            text = re.sub(r"\$\((?:[^()]|\([^()]*\))*\)|\$\{[^}]*\}|\$[A-Za-z_][A-Za-z_0-9]*", GAP, text)
            out.append((text, name))
    return out


FIXED = [  # printed by code that formats them itself (metakd/cli.py, metakd/infra/entry.py, metakd/runtime.py)
    (f"{GAP}: argument --{GAP}: {GAP}; check {GAP} (bash {GAP} --help lists the variables)",
     "metakd/cli.py (a numbered script's option)"),
    (f"{GAP}: argument --{GAP}: {GAP}; see {GAP} --help", "metakd/cli.py (an entry point's option)"),
    ("interrupted; rerun the same command to continue a training stage from its last saved state (exit 130)",
     "metakd/infra/entry.py, metakd/runtime.py (Ctrl-C)"),
]


def all_messages() -> List[Tuple[str, str]]:
    seen, out = set(), []
    for template, where in python_messages() + os_messages() + script_messages() + FIXED:
        if template not in seen:
            seen.add(template)
            out.append((template, where))
    return out


def _cell(text: str) -> str:
    return "`" + text.replace("`", "'").replace("|", "\\|") + "`"


def table() -> str:
    rows = sorted(all_messages(), key=lambda r: (r[1], r[0].lower()))
    lines = [BEGIN, "<details><summary>Every message metakd can print "
             f"({len(rows)}; {GAP} is a value filled in at run time)</summary>", "",
             "| message (after `error: <file>[:line]: `, where the error concerns a file) | printed by |",
             "|---|---|"]
    lines += [f"| {_cell(t)} | {w} |" for t, w in rows]
    lines += ["", "</details>", END]
    return "\n".join(lines)


def table_block(text: str) -> Optional[str]:
    """The generated table in ``text`` (a page's contents), markers included; None without markers."""
    if BEGIN not in text or END not in text:
        return None
    return text[text.index(BEGIN):text.index(END) + len(END)]


def covering_template(line: str, templates: Optional[List[str]] = None) -> Optional[str]:
    """The template (from the documented table, by default the code's) that a printed ``error: ...``
    line is an instance of; None when there is none."""
    if templates is None:
        templates = [t for t, _ in all_messages()]
    text = line[len("error: "):] if line.startswith("error: ") else line
    for t in templates:
        t = t[:-len(" (exit 130)")] if t.endswith(" (exit 130)") else t
        pattern = ".*".join(re.escape(part) for part in t.split(GAP))
        if re.search(f"(^|: ){pattern}$", text):
            return t
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true", help="replace the table in docs/errors.md")
    a = p.parse_args(argv)
    new = table()
    if not a.write:
        print(new)
        return 0
    page = TARGET.read_text(encoding="utf-8")
    old = table_block(page)
    if old is None:
        print(f"error: {TARGET}: no {BEGIN} ... {END} markers; add them where the table goes", file=sys.stderr)
        return 2
    TARGET.write_text(page.replace(old, new), encoding="utf-8")
    print(f"wrote the table ({new.count(chr(10)) - 6} messages) into {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

