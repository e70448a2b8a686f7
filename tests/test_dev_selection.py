"""tools/dev_selection.py: dev accuracy per method on one seed, against a reference, by hand."""
import importlib.util
import subprocess
import sys

import pandas as pd
import pytest

from _tiny import ROOT

spec = importlib.util.spec_from_file_location("dev_selection", ROOT / "tools" / "dev_selection.py")
dev_selection = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dev_selection)


def _rows():
    rows = []
    for method, accs in {"student_alone": (0.80, 0.70), "metakd": (0.90, 0.66), "kd_meta": (0.5, None)}.items():
        for genre, acc in zip(("books", "dvd"), accs):
            if acc is not None:
                rows.append({"method": method, "genre": genre, "seed": 42, "dev_accuracy": acc, "test_accuracy": 0.0})
                rows.append({"method": method, "genre": genre, "seed": 43, "dev_accuracy": 0.0, "test_accuracy": 0.0})
    return pd.DataFrame(rows)


def test_table_by_hand():
    table = dev_selection.selection_table(_rows(), 42, "student_alone").splitlines()
    assert table[0].startswith("| method | books | dvd | average | minus student_alone |")
    # metakd: (90 + 66) / 2 = 78.00, alone 75.00; kd_meta lacks dvd and is left out; best first
    assert table[2].startswith("| metakd | 90.00 | 66.00 | 78.00 | +3.00 |")
    assert table[3].startswith("| student_alone | 80.00 | 70.00 | 75.00 | +0.00 |")
    assert len(table) == 4


def test_missing_csv_is_one_error_line(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "dev_selection.py"), str(tmp_path / "no.csv")],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.strip().startswith("error: tools/dev_selection.py: ")
    with pytest.raises(ValueError, match="no finished cells"):
        dev_selection.selection_table(_rows(), 42, "kd_meta")
