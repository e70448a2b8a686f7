"""Property-based robustness of the readers: any file either reads or gives one clear UserError.

The TSV readers (``read_split_tsv``, ``read_standard_tsv``) and the review parser
(``parse_review_file``, ``load_sorted_data_acl``) get random bytes and valid files mutated in the
ways real files go wrong: another encoding, a byte-order mark, bytes cut or inserted (invalid
UTF-8, NUL, CR, TAB, newline), missing and extra columns, empty lines, huge fields, truncation.
Each must either return data of the documented shape or raise :class:`UserError` whose message
is a single line naming the file; any other exception is a reader bug.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from metakd.data.tsv import STANDARD_COLUMNS, read_standard_tsv
from metakd.data.senti import (
    SENTI_DOMAINS,
    SENTI_LABELS,
    SPLIT_COLUMNS,
    load_sorted_data_acl,
    parse_review_file,
    read_split_tsv,
)
from metakd.infra.errors import UserError, one_line

SETTINGS = dict(deadline=None, max_examples=int(os.environ.get("METAKD_FUZZ_EXAMPLES", "120")),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])

# ------------------------------------------------------------------------------ strategies

# Text a valid field may hold: anything but the TSV separators (TAB, newline, CR, NUL).
field_text = st.text(st.characters(blacklist_characters="\t\n\r\x00", blacklist_categories=("Cs",)),
                     min_size=1, max_size=30)
NASTY = [b"\x00", b"\xff", b"\xfe", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\r", b"\r\n",
         b"\t", b"\n", b"\n\n", b"\x1a", b"\x0b", b"\xc2\x85", b"\xe2\x80\xa8", b'"', b"'", b"#", b"\\",
         b"<review_text>\n", b"</review_text>\n", b"nan", b"inf", b"-", b"1e999", b"positive", b"books"]
position = st.integers(0, 2**31)
mutation = st.one_of(
    st.tuples(st.just("insert"), position, st.sampled_from(NASTY) | st.binary(min_size=1, max_size=6)),
    st.tuples(st.just("delete"), position, st.integers(1, 40)),
    st.tuples(st.just("truncate"), position),
    st.tuples(st.just("huge"), position, st.sampled_from([70_000, 1_100_000])),
    st.tuples(st.just("encode"), st.sampled_from(["utf-16", "utf-16-le", "latin-1", "cp1252", "utf-8-sig"])),
    st.tuples(st.just("dup_line"), position),
    st.tuples(st.just("drop_line"), position),
    st.tuples(st.just("drop_tab"), position),
    st.tuples(st.just("add_tab"), position),
    st.tuples(st.just("empty_line"), position),
)


def mutate(data: bytes, op: tuple) -> bytes:
    kind = op[0]
    n = max(len(data), 1)
    if kind == "insert":
        i = op[1] % (n + 1)
        return data[:i] + op[2] + data[i:]
    if kind == "delete":
        i = op[1] % n
        return data[:i] + data[i + op[2]:]
    if kind == "truncate":
        return data[: op[1] % n]
    if kind == "huge":
        i = op[1] % (n + 1)
        return data[:i] + b"x" * op[2] + data[i:]
    if kind == "encode":
        return data.decode("utf-8", "replace").encode(op[1], "replace")
    lines = data.split(b"\n")
    j = op[1] % len(lines)
    if kind == "dup_line":
        lines.insert(j, lines[j])
    elif kind == "drop_line":
        del lines[j]
    elif kind == "empty_line":
        lines.insert(j, b"")
    elif kind == "drop_tab":
        lines[j] = lines[j].replace(b"\t", b"", 1)
    elif kind == "add_tab":
        lines[j] = lines[j] + b"\textra"
    return b"\n".join(lines)


@st.composite
def split_file(draw) -> bytes:
    rows = draw(st.lists(st.tuples(field_text, st.sampled_from(SENTI_DOMAINS), st.sampled_from(SENTI_LABELS)),
                         min_size=0, max_size=6))
    text = "\t".join(SPLIT_COLUMNS) + "\n" + "".join("\t".join(r) + "\n" for r in rows)
    return text.encode("utf-8")


@st.composite
def standard_file(draw) -> bytes:
    n = draw(st.integers(0, 6))
    header = list(STANDARD_COLUMNS) if draw(st.booleans()) else list(STANDARD_COLUMNS[:5]) + ["embeddings"]
    lines = ["\t".join(header)]
    for i in range(n):
        weight = draw(st.floats(allow_nan=False, allow_infinity=False, width=64))
        text_b = draw(st.one_of(st.just(""), st.just("None"), field_text))
        lines.append("\t".join([f"g{i}", draw(field_text), text_b, draw(st.sampled_from(SENTI_LABELS)),
                                draw(st.sampled_from(SENTI_DOMAINS)), repr(weight)]))
    return ("\n".join(lines) + "\n").encode("utf-8")


@st.composite
def review_file(draw) -> bytes:
    parts = ["<reviews>"]
    for _ in range(draw(st.integers(0, 4))):
        parts += ["<review>", "<rating>", "5.0", "</rating>", "<review_text>"]
        parts += draw(st.lists(st.text(st.characters(blacklist_categories=("Cs",)), max_size=30), max_size=3))
        parts += ["</review_text>", "</review>"]
    parts.append("</reviews>")
    return ("\n".join(parts) + "\n").encode("utf-8")


def mutated(base) -> st.SearchStrategy:
    return st.tuples(base, st.lists(mutation, max_size=3)).map(lambda t: _apply(*t))


def _apply(data: bytes, ops) -> bytes:
    for op in ops:
        data = mutate(data, op)
    return data


# ------------------------------------------------------------------------------ the property

def _check_user_error(err: UserError, path: Path) -> None:
    msg = str(err)
    assert "\n" not in msg and "\r" not in msg, f"message is not one line: {msg!r}"
    assert str(path) in msg, f"message does not name the file: {msg!r}"
    assert len(msg) < 2000, f"message is too long ({len(msg)} chars)"


def reads_or_user_error(read, path: Path):
    """``read(path)``'s result, or None after checking that it raised a proper UserError."""
    try:
        return read(path)
    except UserError as e:
        _check_user_error(e, path)
        return None


@pytest.fixture(scope="module")
def scratch():
    d = Path(tempfile.mkdtemp(prefix="metakd-fuzz-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


@settings(**SETTINGS)
@given(data=st.one_of(mutated(split_file()), st.binary(max_size=300)))
@example(data=b"")
@example(data=b"review\tdomain\tsentiment\n")
@example(data=b"review\tdomain\tsentiment\n\n")
@example(data=b"review\tdomain\tsentiment\nx\tbooks\tpositive")  # no final newline
@example(data=b"\xef\xbb\xbfreview\tdomain\tsentiment\n")
@example(data="review\tdomain\tsentiment\n".encode("utf-16"))
@example(data=b"review\tdomain\tsentiment\r\nx\tbooks\tpositive\r\n")
@example(data=b"review\tdomain\tsentiment\nx\x00y\tbooks\tpositive\n")
@example(data=b"review\tdomain\tsentiment\n" + b"y" * 3_000_000 + b"\tbooks\tpositive\n")
@example(data=b"review\tdomain\tsentiment\n" + b"\t" * 100_000 + b"\n")
@example(data=b"review\tdomain\tsentiment\n\x1a\tbooks\tpositive\n")
@example(data=b"review\tdomain\tsentiment\n\"q\tbooks\tpositive\n")
def test_read_split_tsv_reads_or_raises_user_error(scratch, data):
    path = _write(scratch, "split.tsv", data)
    df = reads_or_user_error(lambda p: read_split_tsv(p, domains=SENTI_DOMAINS), path)
    if df is not None:
        assert list(df.columns) == list(SPLIT_COLUMNS)
        assert all(isinstance(v, str) and v for c in SPLIT_COLUMNS for v in df[c])
        assert set(df["sentiment"]) <= set(SENTI_LABELS) and set(df["domain"]) <= set(SENTI_DOMAINS)
        assert len(df) == data.count(b"\n") - 1 + (0 if data.endswith(b"\n") else 1)


@settings(**SETTINGS)
@given(data=st.one_of(mutated(standard_file()), st.binary(max_size=300)))
@example(data=b"guid\ttext_a\ttext_b\tlabel\tdomain\tweight\ng\tt\t\tpositive\tbooks\t1_0\n")
@example(data=b"guid\ttext_a\ttext_b\tlabel\tdomain\tweight\ng\tt\t\tpositive\tbooks\t nan \n")
@example(data=b"guid\ttext_a\ttext_b\tlabel\tdomain\tweight\ng\tt\t\tpositive\tbooks\t" + b"9" * 400 + b"\n")
@example(data=b"guid\ttext_a\ttext_b\tlabel\tdomain\tweight\ng\tt\t\tpositive\tbooks\t\xd9\xa1\n")
@example(data=b"guid\ttext_a\ttext_b\tlabel\tdomain\tembeddings\ng\tt\tNone\tpositive\tbooks\t0.5\n")
@example(data=b"guid\ttext_a\ttext_b\tlabel\tdomain\tweight\ng\tt\t\tpositive\tbooks\t1\ng\tu\t\tnegative\tdvd\t1\n")
def test_read_standard_tsv_reads_or_raises_user_error(scratch, data):
    path = _write(scratch, "standard.tsv", data)
    df = reads_or_user_error(lambda p: read_standard_tsv(p, labels=SENTI_LABELS, domains=SENTI_DOMAINS), path)
    if df is not None:
        assert list(df.columns) == list(STANDARD_COLUMNS)
        assert df["weight"].dtype == "float64" and all(math.isfinite(w) for w in df["weight"])
        assert df["guid"].is_unique and all(df["text_a"] != "")
        assert set(df["label"]) <= set(SENTI_LABELS) and set(df["domain"]) <= set(SENTI_DOMAINS)


@settings(**SETTINGS)
@given(data=st.one_of(mutated(review_file()), st.binary(max_size=300)))
@example(data=b"")
@example(data=b"<review_text>\n")
@example(data=b"</review_text>\n")
@example(data=b"<review_text>\n\xff\n</review_text>\n")
@example(data=b"<review_text>\r\nok\r\n</review_text>\r\n")
@example(data=b"\xef\xbb\xbf<review_text>\nok\n</review_text>\n")
@example(data=b"<review_text>\n" + b"z" * 3_000_000 + b"\n</review_text>\n")
@example(data=b"<review_text>\n\x00\x00\n</review_text>\n")
@example(data="<review_text>\nok\n</review_text>\n".encode("utf-16"))
def test_parse_review_file_reads_or_raises_user_error(scratch, data):
    path = _write(scratch, "positive.review", data)
    reviews = reads_or_user_error(parse_review_file, path)
    if reviews is not None:
        assert all(isinstance(r, str) and r == " ".join(r.split()) and r for r in reviews)
        assert all(ch not in r for r in reviews for ch in "\t\n\r\x00")


@settings(**dict(SETTINGS, max_examples=max(10, SETTINGS["max_examples"] // 3)))
@given(files=st.lists(st.one_of(mutated(review_file()), st.none()), min_size=2, max_size=4),
       names=st.sampled_from([("books", "dvd"), ("kitchen_&_housewares", "electronics"), ("books", "books_x"),
                              ("_x", "dvd"), ("books", "dvd\nx")]))
def test_load_sorted_data_acl_reads_or_raises_user_error(files, names):
    root = Path(tempfile.mkdtemp(prefix="metakd-acl-"))
    try:
        for k, data in enumerate(files):  # None = the file is missing
            folder = root / names[k // 2]
            folder.mkdir(exist_ok=True)
            if data is not None:
                (folder / ("positive.review" if k % 2 == 0 else "negative.review")).write_bytes(data)
        try:
            df = load_sorted_data_acl(root)
        except UserError as e:
            msg = str(e)
            assert "\n" not in msg and str(root) in one_line(msg), msg
            return
        assert list(df.columns) == list(SPLIT_COLUMNS) and len(df) > 0 or df.attrs["empty_reviews_skipped"]
        assert set(df["sentiment"]) <= set(SENTI_LABELS)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------ fixed cases

def test_unreadable_paths_are_user_errors(tmp_path):
    """A folder where a file is expected, a missing file, an unreadable file."""
    for read in (read_split_tsv, read_standard_tsv, parse_review_file):
        for path in (tmp_path, tmp_path / "missing.tsv"):
            with pytest.raises(UserError) as e:
                read(path)
            _check_user_error(e.value, path)
    if os.geteuid() != 0:  # root reads everything
        p = tmp_path / "secret.tsv"
        p.write_text("review\tdomain\tsentiment\n")
        p.chmod(0)
        with pytest.raises(UserError, match="cannot read"):
            read_split_tsv(p)
    with pytest.raises(UserError):
        load_sorted_data_acl(tmp_path / "missing")


def test_huge_valid_field_reads_back(tmp_path):
    """A 3 MB review is data, not an error (EasyNLP's csv reader has a 128 kB field limit)."""
    text = "word " * 600_000
    path = tmp_path / "big.tsv"
    path.write_text("review\tdomain\tsentiment\n" + text.strip() + "\tbooks\tpositive\n", encoding="utf-8")
    df = read_split_tsv(path)
    assert df["review"][0] == text.strip()


def test_messages_name_file_and_line(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_bytes(b"review\tdomain\tsentiment\nok\tbooks\tpositive\nbad\tbooks\n")
    with pytest.raises(UserError, match=r"train\.tsv:3: expected 3 TAB-separated fields, found 2"):
        read_split_tsv(path)
    path.write_bytes(b"review\tdomain\tsentiment\nok\tbooks\tpositive\n\xff\tbooks\tpositive\n")
    with pytest.raises(UserError, match=r"train\.tsv:3: not valid UTF-8"):
        read_split_tsv(path)
    path.write_bytes(b"review\tdomain\tsentiment\n\nok\tbooks\tpositive\n")
    with pytest.raises(UserError, match=r"train\.tsv:2: .*empty line"):
        read_split_tsv(path)
    path.write_bytes("review\tdomain\tsentiment\n".encode("utf-16"))
    with pytest.raises(UserError, match=r"train\.tsv:1: .*UTF-16"):
        read_split_tsv(path)


# ------------------------------------------------------------------------------ entry points check inputs first

def _fails_cleanly(module: str, args, *must_contain: str, out: Path = None) -> str:
    """``module.main(args)`` exits 2 with one ``error:`` line containing ``must_contain``; no output."""
    from _tiny import call_main

    code, stdout, stderr = call_main(module, args)
    lines = stderr.strip().splitlines()
    assert code == 2, f"exit {code}; stderr: {stderr[-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for text in must_contain:
        assert str(text) in lines[0], lines[0]
    if out is not None:
        assert not out.exists() and not out.parent.joinpath(out.name + ".resume").exists()
    return lines[0]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from _tiny import make_checkpoint, tiny

    t = tiny()
    return t, make_checkpoint(tmp_path_factory.mktemp("ckpt") / "meta_teacher")


def test_train_teacher_checks_inputs_first(tiny_ckpt, tmp_path):
    from _tiny import teacher_args

    t, _ = tiny_ckpt
    out = tmp_path / "t"
    _fails_cleanly("metakd.train_teacher", teacher_args(out, "--batch-size", "0"), "batch size must be >= 1", out=out)
    _fails_cleanly("metakd.train_teacher", teacher_args(out, "--lr", "0"), "learning rate", out=out)
    _fails_cleanly("metakd.train_teacher", teacher_args(out, "--lr", "1e30"), "learning rate", out=out)
    _fails_cleanly("metakd.train_teacher", teacher_args(out, "--epochs", "0"), "epochs", out=out)
    _fails_cleanly("metakd.train_teacher", teacher_args(out, "--max-seq-length", "100000"),
                   "exceeds the model's max_position_embeddings", out=out)
    _fails_cleanly("metakd.train_teacher", teacher_args(out, data=tmp_path / "nodata"),
                   tmp_path / "nodata" / "train_with_weights.tsv", "not found", out=out)
    broken = Path(shutil.copytree(t.teacher, tmp_path / "bert"))
    (broken / "vocab.txt").unlink()
    args = teacher_args(out)
    args[args.index("--model") + 1] = broken
    _fails_cleanly("metakd.train_teacher", args, broken, "vocab.txt", out=out)
    data = Path(shutil.copytree(t.data, tmp_path / "data"))
    train = data / "train_with_weights.tsv"
    lines = train.read_bytes().split(b"\n")
    lines[5] = lines[5].replace(b"\t", b"", 1)
    train.write_bytes(b"\n".join(lines))
    _fails_cleanly("metakd.train_teacher", teacher_args(out, data=data), f"{train}:6: expected 6 TAB-separated", out=out)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    _fails_cleanly("metakd.train_teacher", teacher_args(foreign), foreign, "did not write")
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_distill_checks_inputs_first(tiny_ckpt, tmp_path):
    from _tiny import SEQ

    t, teacher = tiny_ckpt
    out = tmp_path / "books" / "s1"

    def args(*extra, genre="books", stage="first", data=None, student=None, teacher_dir=None, out_dir=None):
        return ["--stage", stage, "--genre", genre, "--data-dir", data or t.data, "--teacher", teacher_dir or teacher,
                "--student", student or t.student, "--out", out_dir or out, "--max-seq-length", SEQ, "--no-progress",
                "--device", "cpu", *extra]

    before = sorted((p.name, p.stat().st_mtime_ns) for p in teacher.iterdir())
    _fails_cleanly("metakd.distill", args(out_dir=teacher), "the output folder is also an input")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in teacher.iterdir()) == before

    _fails_cleanly("metakd.distill", args(genre="toys"), "unknown GENRE 'toys'", out=out)
    _fails_cleanly("metakd.distill", args("--temperature", "0", stage="second"), "--temperature must be in [0.01, 1000]", out=out)
    _fails_cleanly("metakd.distill", args("--batch-size", "-1"), "batch size", out=out)
    _fails_cleanly("metakd.distill", args(teacher_dir=t.teacher), t.teacher, "not a metakd checkpoint", out=out)
    # (stage second from a pretrained student is allowed: it skips stage 1, test_baselines.py)
    _fails_cleanly("metakd.distill", args("--alpha", "-0.1", stage="second"), "--alpha must be in [0, 1]", out=out)
    _fails_cleanly("metakd.distill", args("--max-seq-length", "4096"), "max_position_embeddings", out=out)
    data = Path(shutil.copytree(t.data, tmp_path / "data"))
    dev = data / "dev_standard.tsv"
    kept = [ln for ln in dev.read_text().split("\n") if "\tbooks\t" not in ln]
    dev.write_text("\n".join(kept))
    _fails_cleanly("metakd.distill", args(data=data), dev, "no rows of genre 'books'", out=out)


def test_evaluate_and_process_data_check_inputs_first(tiny_ckpt, tmp_path):
    from _tiny import SEQ

    t, teacher = tiny_ckpt
    _fails_cleanly("metakd.evaluate", ["--genre", "books", "--data-dir", t.data, "--student", teacher, "--teacher", teacher,
                                       "--batch-size", "0", "--device", "cpu"], "--batch-size must be >= 1")
    _fails_cleanly("metakd.evaluate", ["--genre", "all", "--out-root", tmp_path, "--data-dir", t.data, "--device", "cpu"],
                   "no students found")
    _fails_cleanly("metakd.evaluate", ["--genre", "books", "--data-dir", t.data, "--student", tmp_path / "none",
                                       "--teacher", teacher, "--device", "cpu"], tmp_path / "none",
                   "no student here; run 5_student_second.sh first")  # the step to run, not "a BERT folder"
    data = Path(shutil.copytree(t.data, tmp_path / "data"))
    _fails_cleanly("metakd.process_data", ["--data-dir", data, "--teacher-model", tmp_path / "nomodel", "--max-seq-length",
                                           SEQ, "--device", "cpu"], tmp_path / "nomodel", "model folder not found")
    (data / "dev.tsv").write_bytes((data / "dev.tsv").read_bytes() + b"x\tbooks\n")
    _fails_cleanly("metakd.process_data", ["--data-dir", data, "--teacher-model", t.teacher, "--max-seq-length", SEQ,
                                           "--device", "cpu", "--no-progress"], data / "dev.tsv", "TAB-separated fields")


# Out-of-range numbers that used to pass the checks and then crash or train nothing (second pass).
@pytest.mark.parametrize("module,extra,msg", [
    ("metakd.train_teacher", ["--seed", "-1"], "seed must be in [0, 2^32)"),
    ("metakd.train_teacher", ["--seed", str(2**40)], "seed must be in [0, 2^32)"),
    ("metakd.train_teacher", ["--domain-loss-weight", "nan"], "--domain-loss-weight must be >= 0 and finite"),
    ("metakd.train_teacher", ["--domain-loss-weight", "inf"], "--domain-loss-weight must be >= 0 and finite"),
    ("metakd.train_teacher", ["--max-grad-norm", "inf"], "max grad norm must be > 0 and finite"),
    ("metakd.train_teacher", ["--device", "cpu:5"], "there is one CPU device"),
    ("metakd.distill", ["--temperature", "inf"], "--temperature must be in [0.01, 1000]"),
    ("metakd.distill", ["--temperature", "nan"], "--temperature must be in [0.01, 1000]"),
    ("metakd.distill", ["--domain-loss-weight", "nan"], "--domain-loss-weight must be >= 0 and finite"),
    ("metakd.distill", ["--teacher-cache-gb", "-1"], "--teacher-cache-gb must be in [0, 1e6]"),
    ("metakd.distill", ["--teacher-cache-gb", "nan"], "--teacher-cache-gb must be in [0, 1e6]"),
    ("metakd.distill", ["--alpha", "nan"], "--alpha must be in [0, 1]"),
])
def test_numeric_options_range_checked_before_work(tiny_ckpt, tmp_path, module, extra, msg):
    from _tiny import SEQ, teacher_args

    t, teacher = tiny_ckpt
    out = tmp_path / "out"
    if module == "metakd.train_teacher":
        args = teacher_args(out, *extra)
    else:
        args = ["--stage", "first", "--genre", "books", "--data-dir", t.data, "--teacher", teacher, "--student",
                t.student, "--out", out, "--max-seq-length", SEQ, "--device", "cpu", *extra]
    _fails_cleanly(module, args, msg, out=out)


@pytest.mark.parametrize("value", ["abc", "1.5", "0", "-2"])
def test_nproc_must_be_a_whole_number(tmp_path, value):
    import subprocess
    import sys

    from _tiny import ROOT

    env = dict(os.environ, METAKD_PYTHON=sys.executable, NPROC=value, OUT_DIR=str(tmp_path / "out"),
               DATA_DIR=str(tmp_path / "data"))
    p = subprocess.run(["bash", "3_train_teacher.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.strip() == f"error: 3_train_teacher.sh: NPROC={value}; it must be a whole number >= 1"
    assert not (tmp_path / "out").exists()


# Outputs that belong together appear together or not at all (second pass, item 2).
def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_get_data_split_set_all_or_nothing(tmp_path, monkeypatch):
    from _tiny import call_main
    from metakd.data import senti

    out = tmp_path / "data"
    code, _, err = call_main("metakd.get_data", ["--source", "synthetic", "--out", out, "--models-out",
                                                 tmp_path / "models", "--synthetic-size", "12"])
    assert code == 0, err
    before = _snapshot(out)
    real = senti.write_split_tsv
    calls = []

    def disk_full_on_second(frame, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(frame, path)

    monkeypatch.setattr(senti, "write_split_tsv", disk_full_on_second)
    code, _, err = call_main("metakd.get_data", ["--source", "synthetic", "--out", out, "--models-out",
                                                 tmp_path / "models", "--synthetic-size", "14"])
    assert code == 2 and "No space left on device" in err and "nothing was replaced" in err
    assert _snapshot(out) == before  # train.tsv was written (staged) but not swapped in
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_process_data_set_all_or_nothing_with_a_folder_in_the_way(tmp_path):
    from _tiny import SEQ, call_main, copy_data, tiny

    data = copy_data(tmp_path / "data")
    before = _snapshot(data)
    (data / "prototypes.json").unlink()
    (data / "prototypes.json").mkdir()  # a folder where one of the outputs goes
    code, _, err = call_main("metakd.process_data", ["--data-dir", data, "--teacher-model", tiny().teacher,
                                                     "--max-seq-length", SEQ, "--no-progress", "--device", "cpu"])
    assert code == 2 and err.startswith("error: ") and "a folder is in the way" in err, err
    after = _snapshot(data)
    before.pop("prototypes.json")
    assert after == before  # the standard files of the earlier run, untouched


# argparse's own errors: one line naming the script variable (second pass, item 5).
@pytest.mark.parametrize("script,var,value,msg", [
    ("3_train_teacher.sh", "COMPAT", "garbage", "check COMPAT"),
    ("6_eval.sh", "SPLIT", "train", "check SPLIT"),
    ("3_train_teacher.sh", "TEACHER_EPOCHS", "1.5", "check TEACHER_EPOCHS"),
    ("4_student_first.sh", "STAGE1_EPOCHS", "x", "check STAGE1_EPOCHS"),
    ("4_student_first.sh", "SEED", "abc", "check SEED"),
    ("3_train_teacher.sh", "TEACHER_LR", "-1e-3", "learning rate must be in (0, 1), got -0.001"),
])
def test_script_option_errors_are_one_line_naming_the_variable(tmp_path, script, var, value, msg):
    import subprocess
    import sys

    from _tiny import ROOT

    env = dict(os.environ, METAKD_PYTHON=sys.executable, OUT_DIR=str(tmp_path / "out"), DATA_DIR=str(tmp_path / "d"),
               **{var: value})
    p = subprocess.run(["bash", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], p.stderr
    assert not (tmp_path / "out").exists()


# Output problems outside training: one line, exit 2 (second pass, items 1 and 3).
def test_output_under_a_file_is_one_line(tmp_path):
    from _tiny import call_main

    (tmp_path / "afile").write_text("x")
    code, _, err = call_main("metakd.get_data", ["--source", "synthetic", "--out", tmp_path / "afile" / "data",
                                                 "--models-out", tmp_path / "models", "--cache-dir", tmp_path / "c",
                                                 "--synthetic-size", "12"])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "part of the path is a file" in lines[0], err


def test_bench_json_folder_refused_before_work(tmp_path):
    from _tiny import call_main

    code, out, err = call_main("metakd.bench", ["--json", tmp_path, "--iters", "1"])
    assert code == 2 and "give a file name" in err and "samples/s" not in out


def test_full_disk_while_saving_is_one_line(monkeypatch, tmp_path):
    """OneFlow's saver failing with ENOSPC in the middle of a resumable state: one line, exit 2,
    nothing published."""
    import errno

    from _tiny import call_main, teacher_args
    from metakd.runtime import flow

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "t.resume"))

    monkeypatch.setattr(flow, "save", full)
    out = tmp_path / "t"
    code, _, err = call_main("metakd.train_teacher", teacher_args(out, "--epochs", "1", "--batch-size", "8",
                                                                  "--save-every", "2", "--eval-every", "0"))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "the disk is full" in lines[0], err
    assert not out.exists()


# Model folders that load but would compute something else (second pass, item 7).
def test_vocab_longer_than_the_embedding_table_is_refused(tmp_path):
    import json
    import shutil

    from _tiny import call_main, teacher_args, tiny

    model = Path(shutil.copytree(tiny().teacher, tmp_path / "teacher"))
    size = json.loads((model / "config.json").read_text())["vocab_size"]
    with open(model / "vocab.txt", "a") as f:
        f.write("".join(f"extra{i}\n" for i in range(5)))
    code, _, err = call_main("metakd.train_teacher", [*teacher_args(tmp_path / "out")[:2], "--model", model,
                                                      *teacher_args(tmp_path / "out")[4:]])
    assert code == 2 and f"has {size + 5} entries but config.json's vocab_size is {size}" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key,value", [("hidden_size", "64"), ("num_hidden_layers", 2.5), ("layer_norm_eps", "x"),
                                       ("hidden_dropout_prob", -0.1)])
def test_config_value_of_the_wrong_type_is_one_line(tmp_path, key, value):
    import json
    import shutil

    from _tiny import call_main, teacher_args, tiny

    model = Path(shutil.copytree(tiny().teacher, tmp_path / "teacher"))
    cfg = json.loads((model / "config.json").read_text())
    cfg[key] = value
    (model / "config.json").write_text(json.dumps(cfg))
    code, _, err = call_main("metakd.train_teacher", [*teacher_args(tmp_path / "out")[:2], "--model", model,
                                                      *teacher_args(tmp_path / "out")[4:]])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and key in lines[0] and "fix config.json" in lines[0], err


# Messages that name the right fix (second pass, item 8).
def test_missing_earlier_outputs_name_the_script_to_run(tiny_ckpt, tmp_path):
    from _tiny import SEQ

    t, teacher = tiny_ckpt
    base = ["--genre", "books", "--data-dir", t.data, "--max-seq-length", SEQ, "--device", "cpu"]
    _fails_cleanly("metakd.distill", ["--stage", "second", *base, "--teacher", teacher, "--student",
                                      tmp_path / "books" / "meta_student_pretrain", "--out", tmp_path / "s2"],
                   "run 4_student_first.sh first", out=tmp_path / "s2")
    _fails_cleanly("metakd.distill", ["--stage", "first", *base, "--teacher", tmp_path / "meta_teacher", "--student",
                                      t.student, "--out", tmp_path / "s1"], "run 3_train_teacher.sh first",
                   out=tmp_path / "s1")
    (tmp_path / "afile").write_text("x")
    _fails_cleanly("metakd.distill", ["--stage", "first", *base, "--teacher", teacher, "--student", t.student,
                                      "--out", tmp_path / "afile" / "s1"], "a file is in the way")


def test_source_with_some_genres_is_said(tmp_path):
    import shutil

    from _tiny import call_main

    code, _, err = call_main("metakd.get_data", ["--source", "synthetic", "--out", tmp_path / "d0", "--models-out",
                                                 tmp_path / "m", "--cache-dir", tmp_path / "c", "--synthetic-size", "12"])
    assert code == 0, err
    src = next((tmp_path / "c").rglob("sorted_data_acl"))
    part = Path(shutil.copytree(src, tmp_path / "part"))
    shutil.rmtree(next(p for p in part.iterdir() if p.name.startswith("dvd")))
    code, out, err = call_main("metakd.get_data", ["--source", part, "--out", tmp_path / "d1"])
    assert code == 0 and "holds the genres books, electronics, kitchen, not the four" in out, out + err
