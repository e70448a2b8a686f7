"""Named distillation recipes: ``RECIPE=NAME`` in 4_student_first.sh and 5_student_second.sh.

    RECIPE=paper bash 5_student_second.sh            # the default
    python -m metakd.recipes                         # every recipe and the variables it sets
    python -m metakd.recipes --shell NAME            # what the scripts evaluate

A recipe is a set of defaults for the scripts' variables; a variable set in the environment still
wins (``RECIPE=NAME ALPHA=0.3 ...``). ``paper`` is the paper's (and EasyNLP's) recipe. The others
were chosen on dev accuracy only (docs/results.md, "Making the transfer work").
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Dict, Optional, Sequence

from metakd.infra.entry import cli_main

# Every variable a recipe may set: the distillation scripts' (4 and 5) recipe knobs.

from metakd.infra.errors import UserError
KNOBS = ("STUDENT_FROM_TEACHER", "USE_ATTENTION_TERM", "SKIP_STAGE1", "ALPHA", "T_SQUARED", "STAGE2_LR")

# stage 1: attention scores + hidden states (+ Meta-KD's domain term and weights);
# stage 2: soft labels only, lr 3e-5, no T^2.
_PAPER = {"STUDENT_FROM_TEACHER": "0", "USE_ATTENTION_TERM": "1", "SKIP_STAGE1": "0", "ALPHA": "0",
          "T_SQUARED": "0", "STAGE2_LR": "3e-5"}
RECIPES: Dict[str, Dict[str, str]] = {
    "paper": _PAPER,
    # the paper's recipe on a student made of 3 of the pretrained teacher's own layers (every 2nd of 6:
    # 1, 3, 5), which starts in the teacher's representation space; the best student on dev, seed 42
    # (docs/results.md, "Making the transfer work"). With a 12-layer teacher, 3 takes layers 3, 7, 11.
    "teacher_layers": {**_PAPER, "STUDENT_FROM_TEACHER": "3"},
}
DESCRIPTIONS = {
    "paper": "the paper's: stage 1 attention + hidden states, stage 2 soft labels only at lr 3e-5",
    "teacher_layers": "the paper's, on a student made of 3 of TEACHER_MODEL's own layers (best on dev)",
}


def recipe(name: str) -> Dict[str, str]:
    """The variables of recipe ``name``; a UserError naming the known ones otherwise."""
    if name not in RECIPES:
        script = os.environ.get("METAKD_SCRIPT", "python -m metakd.recipes")
        raise UserError(f"{script}: RECIPE={name}: unknown recipe; use one of {', '.join(RECIPES)} "
                        "(python -m metakd.recipes lists them)")
    return RECIPES[name]


def shell(name: str) -> str:
    """Bash that makes recipe ``name``'s variables the defaults: ``: "${ALPHA:=0.5}"``, one per line.

    ``:=`` assigns only an unset or empty variable, so the environment wins, as everywhere in the scripts.
    """
    lines = []
    for var, value in recipe(name).items():
        assert var in KNOBS and re.fullmatch(r"[0-9A-Za-z.+-]*", value), (var, value)  # safe to eval
        lines.append(f': "${{{var}:={value}}}"')
    return "\n".join(lines)


def table() -> str:
    width = max(map(len, RECIPES))
    out = []
    for name, values in RECIPES.items():
        out.append(f"{name:{width}s}  {DESCRIPTIONS[name]}")
        out.append(" " * (width + 2) + " ".join(f"{k}={v}" for k, v in values.items()))
    return "\n".join(out)


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m metakd.recipes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shell", metavar="NAME", help="print bash assignments of recipe NAME's defaults")
    args = p.parse_args(argv)
    print(shell(args.shell) if args.shell is not None else table())


if __name__ == "__main__":
    main(sys.argv[1:])
