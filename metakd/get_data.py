"""Step 1 of the pipeline: get the data of a task (and optionally pretrained BERTs).

    python -m metakd.get_data [--task senti] --source SRC --out data/SENTI [--cache-dir cache]
                              [--models-out models] [--fetch-model NAME_OR_URL ...]
    python -m metakd.get_data --task mnli [--source SRC] --out data/MNLI [--data-portion 0.05]
    python -m metakd.get_data --task tsv --source my.csv --out data/TSV [--text-column ...]
    python -m metakd.get_data --task tsv --train-file a.tsv --dev-file b.tsv --test-file c.tsv --out data/TSV

``senti``: SRC is an http(s) URL of ``domain_sentiment_data.tar.gz`` (the default), a local
archive, a local ``sorted_data_acl`` folder (or a folder holding one), or ``synthetic`` (a tiny
generated dataset plus tiny random teacher/student BERTs, for trying the pipeline on a laptop).
Writes ``train.tsv``, ``dev.tsv`` and ``test.tsv`` (the EasyNLP split) into ``--out``.

``mnli``: SRC is an http(s) URL of GLUE's ``MNLI.zip`` (the default), a local zip, or a folder
holding ``train.tsv`` and ``dev_matched.tsv``; the split is metakd.data.mnli's fixed protocol.
``tsv``: the user's own CSV/TSV (metakd.data.table). Both also write ``task.json`` (the labels
and domains every later stage uses).

``--fetch-model NAME`` downloads a Hugging Face BERT folder (config.json, vocab.txt,
model.safetensors, tokenizer_config.json) into ``--models-out/<name>``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.parse
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import pandas as pd

from metakd.data import download, mnli, sampling, senti, synthetic, table, tsv
from metakd.infra.entry import cli_main
from metakd.infra.errors import UserError
from metakd.infra.fileio import atomic_dir, atomic_files, copy_file, sha256_file, write_json

PathLike = Union[str, os.PathLike]

DEFAULT_SOURCE = "https://www.cs.jhu.edu/~mdredze/datasets/sentiment/domain_sentiment_data.tar.gz"
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
# The paper's pair; any Hugging Face BERT with a model.safetensors works the same way.
PAPER_MODELS = ("bert-base-uncased", "huawei-noah/TinyBERT_General_4L_312D")
MODEL_FILES_REQUIRED = ("config.json", "vocab.txt")
MODEL_FILES_OPTIONAL = ("tokenizer_config.json", "special_tokens_map.json")
WEIGHTS_FILE = "model.safetensors"
SPLITS = ("train", "dev", "test")
EXTRACTED_STAMP = ".metakd-extracted.json"


def _is_url(text: str) -> bool:
    return urllib.parse.urlsplit(text).scheme in ("http", "https")


def _extract_cached(archive: Path, dest: Path) -> Path:
    """Extract ``archive`` into ``dest`` unless ``dest`` already holds this very archive.

    A small stamp (path, size, mtime) in ``dest`` tells whether the extraction is current, so a
    re-run does not unpack again, but a different archive of the same name is never mistaken for
    the old one.
    """
    info = archive.stat()
    stamp = {"archive": str(archive.resolve()), "size": info.st_size, "mtime_ns": info.st_mtime_ns}
    marker = dest / EXTRACTED_STAMP
    if marker.is_file():
        try:
            if json.loads(marker.read_text(encoding="utf-8")) == stamp:
                return dest
        except (OSError, ValueError):
            pass  # unreadable stamp: extract again
    print(f"extracting {archive} -> {dest}")
    download.extract_archive(archive, dest)
    write_json(marker, stamp)
    return dest


def resolve_source(source: str, cache_dir: PathLike, models_out: PathLike, seed: int = 0,
                   synthetic_size: int = 50, sha256: Optional[str] = None,
                   retries: int = 3, task: str = "senti") -> Path:
    """The data folder for ``source`` (``senti``: ``sorted_data_acl``; ``mnli``: the folder with
    train.tsv and dev_matched.tsv), downloading/extracting/generating it.

    ``synthetic`` (``senti`` only) also writes the tiny teacher and student BERTs under ``models_out``.
    """
    cache_dir = Path(cache_dir)
    find = mnli.find_mnli_dir if task == "mnli" else senti.find_sorted_data_acl
    if source == "synthetic" and task != "senti":
        raise UserError(f"--source synthetic is the generated Amazon-style reviews of TASK=senti; TASK={task} takes "
                        "a URL, an archive or a folder (tests/_mnli.py makes an MNLI-format one; "
                        "python -m metakd.data.synthetic --table makes a CSV for TASK=tsv)")
    if source == "synthetic":
        root = cache_dir / "synthetic" / "sorted_data_acl"
        synthetic.make_synthetic_sorted_data_acl(root, synthetic_size, seed)
        teacher, student = synthetic.make_tiny_bert_pair(models_out, seed=seed)
        print(f"wrote synthetic reviews to {root}")
        print(f"wrote tiny BERTs: teacher {teacher}, student {student}")
        return root
    if _is_url(source):
        print(f"downloading {source}")
        archive = download.fetch(source, cache_dir, sha256=sha256, retries=retries)
        print(f"cached at {archive}")
        if not download.is_archive(archive):
            raise UserError("the URL does not name a .tar.gz, .tgz, .tar or .zip archive",
                            path=archive)
        extracted = _extract_cached(archive, archive.parent / download.archive_stem(archive))
        return find(extracted)
    path = Path(source)
    if path.is_dir():
        return find(path)
    if path.is_file():
        if sha256 is not None:
            actual = sha256_file(path)
            if actual != sha256.lower():
                raise UserError(f"checksum mismatch: expected sha256 {sha256.lower()}, got "
                                f"{actual}", path=path)
        extracted = _extract_cached(path, cache_dir / "extracted" / download.archive_stem(path))
        return find(extracted)
    if task == "mnli":
        raise UserError("no such file or folder; --source takes an http(s) URL, an archive (.zip/.tar.gz/.tgz/.tar) "
                        "or a folder holding train.tsv and dev_matched.tsv", path=source)
    raise UserError("no such file or folder; --source takes an http(s) URL, an archive "
                    "(.tar.gz/.tgz/.tar/.zip), a sorted_data_acl folder, or 'synthetic'",
                    path=source)


def write_splits(root: PathLike, out: PathLike, compat: str = "none") -> Dict[str, pd.DataFrame]:
    """Parse ``root``, split it as EasyNLP does, write ``<out>/{train,dev,test}.tsv``
    (``compat="easynlp"``: EasyNLP's text and file bytes, see senti.extract_reviews_easynlp)."""
    df = senti.load_sorted_data_acl(root, compat=compat)
    found = sorted(set(df["domain"]))
    if found != sorted(senti.SENTI_DOMAINS):
        print(f"note: {root} holds the genres {', '.join(found)}, not the four of the Amazon reviews "
              f"({', '.join(senti.SENTI_DOMAINS)}): the split is smaller than 6,480 / 720 / 800")
    for path, count in df.attrs.get("empty_reviews_skipped", {}).items():
        print(f"note: {path}: left out {count} empty review(s)")
    train, dev, test = senti.split_reference(df)
    splits = {"train": train, "dev": dev, "test": test}
    out = Path(out)
    write = senti.write_split_tsv_easynlp if compat == "easynlp" else senti.write_split_tsv
    with atomic_files(out) as stage:  # the three files are one split: all new or all old
        for name, frame in splits.items():
            write(frame, stage / f"{name}.tsv")
    # A task.json left by an earlier TASK=mnli/tsv run here would make the later stages refuse
    # these files as that task's; the Amazon split has none.
    tsv.task_file(out).unlink(missing_ok=True)
    return splits


def write_task_splits(splits: Dict[str, pd.DataFrame], info: dict, out: PathLike) -> None:
    """``<out>/{train,dev,test}.tsv`` (text_a text_b label domain) and ``task.json``, together."""
    info = {**info, "rows": {name: len(frame) for name, frame in splits.items()}}
    with atomic_files(out) as stage:  # one set: all new or all old
        for name, frame in splits.items():
            tsv.write_pair_split(frame, stage / f"{name}.tsv")
        write_json(stage / tsv.TASK_FILE, info)


def mnli_splits(folder: Path, portion: float, seed: int) -> Tuple[Dict[str, pd.DataFrame], dict]:
    """MNLI's split (metakd.data.mnli's protocol) and its task.json record."""
    train_all, test = mnli.load_mnli(folder)
    for name, frame in ((mnli.TRAIN_FILE, train_all), (mnli.TEST_FILE, test)):
        dropped = {k: v for k, v in frame.attrs.items() if v}
        if dropped:
            print(f"note: {folder / name}: left out " + ", ".join(
                f"{v} pair(s) {'without a gold label (-)' if k == 'no_gold_label' else 'with an empty sentence'}"
                for k, v in dropped.items()))
    splits = mnli.split_mnli(train_all, test, portion, seed)
    info = {"task": "mnli", "labels": list(mnli.MNLI_LABELS), "domains": list(mnli.MNLI_DOMAINS),
            "source": str(folder),
            "split": {"how": f"dev: a stratified {mnli.DEV_FRACTION:g} of train.tsv by genre x label; "
                             "test: dev_matched.tsv", "seed": seed, "data_portion": portion}}
    return splits, info


def format_counts(splits: Dict[str, pd.DataFrame]) -> str:
    """A table: one row per split (and all), one column per domain, plus totals."""
    domains = sorted({d for frame in splits.values() for d in frame["domain"]})
    rows: List[Tuple[str, List[int]]] = []
    for name, frame in splits.items():
        counts = frame["domain"].value_counts()
        rows.append((name, [int(counts.get(d, 0)) for d in domains] + [len(frame)]))
    rows.append(("all", [sum(r[1][i] for r in rows) for i in range(len(domains) + 1)]))
    header = ["split"] + domains + ["total"]
    widths = [max(len(h), 5) for h in header]
    lines = ["  ".join([header[0].ljust(widths[0])]
                       + [h.rjust(w) for h, w in zip(header[1:], widths[1:])])]
    for name, values in rows:
        cells = [name.ljust(widths[0])] + [str(v).rjust(w) for v, w in zip(values, widths[1:])]
        lines.append("  ".join(cells))
    return "\n".join(lines)


# ------------------------------------------------------------------------------ models

def _model_base_and_name(name_or_url: str, endpoint: str, revision: str) -> Tuple[str, str]:
    if _is_url(name_or_url):
        parts = [p for p in urllib.parse.urlsplit(name_or_url).path.split("/") if p]
        if "resolve" in parts and parts.index("resolve") > 0:
            name = parts[parts.index("resolve") - 1]
        else:
            name = parts[-1] if parts else "model"
        return name_or_url.rstrip("/"), name
    name = name_or_url.strip("/")
    if not name or any(p in ("", ".", "..") for p in name.split("/")):
        raise UserError(f"{name_or_url!r} is not a model name like 'bert-base-uncased' or "
                        "'huawei-noah/TinyBERT_General_4L_312D', nor an http(s) URL")
    return f"{endpoint.rstrip('/')}/{name}/resolve/{revision}", name.split("/")[-1]


def fetch_model(name_or_url: str, models_out: PathLike, cache_dir: PathLike,
                endpoint: str = DEFAULT_HF_ENDPOINT, revision: str = "main",
                retries: int = 3) -> Path:
    """Download a Hugging Face BERT folder into ``<models_out>/<name>`` and return it.

    ``name_or_url`` is a hub name (files at ``<endpoint>/<name>/resolve/<revision>/<file>``) or
    a base URL under which the files lie. Needs config.json, vocab.txt and model.safetensors;
    tokenizer_config.json and special_tokens_map.json are copied when present.

    Raises:
      UserError: a required file is missing (a model with only ``pytorch_model.bin`` is named
        as such, with how to convert it) or the network is unreachable.
    """
    base, name = _model_base_and_name(name_or_url, endpoint, revision)
    files: Dict[str, Path] = {}
    for filename in MODEL_FILES_REQUIRED:
        files[filename] = download.fetch(f"{base}/{filename}", cache_dir, retries=retries)
    for filename in MODEL_FILES_OPTIONAL:
        try:
            files[filename] = download.fetch(f"{base}/{filename}", cache_dir, retries=retries)
        except download.DownloadError as e:
            if e.status != 404:
                raise
    dest = Path(models_out) / name
    try:
        files[WEIGHTS_FILE] = download.fetch(f"{base}/{WEIGHTS_FILE}", cache_dir, retries=retries)
    except download.DownloadError as e:
        if e.status != 404:
            raise
        if download.url_status(f"{base}/pytorch_model.bin") == 200:
            raise UserError(
                f"{name_or_url} has only pytorch_model.bin, no {WEIGHTS_FILE}; metakd reads "
                "safetensors and does not depend on torch: convert it once where torch is "
                "installed (python -c \"import torch; from safetensors.torch import save_file; "
                "sd = torch.load('pytorch_model.bin', map_location='cpu'); "
                "save_file({k: v.contiguous() for k, v in sd.items()}, 'model.safetensors')\") "
                f"and put model.safetensors, config.json and vocab.txt into {dest}") from None
        raise UserError(f"no {WEIGHTS_FILE} at {base}/{WEIGHTS_FILE} (HTTP 404); is "
                        f"{name_or_url!r} a BERT model with safetensors weights?") from None
    with atomic_dir(dest) as tmp:
        for filename, cached in files.items():
            copy_file(cached, tmp / filename)
    return dest


# ------------------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    from metakd.cli import Parser

    parser = Parser(
        prog="python -m metakd.get_data",
        description="Get the data of a task and write its train/dev/test split as TSV files: the Amazon "
                    "multi-domain sentiment data (TASK=senti, the EasyNLP split, 6480/720/800 reviews), GLUE's MNLI "
                    "(TASK=mnli) or your own CSV/TSV (TASK=tsv); optionally download pretrained BERT folders.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m metakd.get_data --out data/SENTI                   # download\n"
               "  python -m metakd.get_data --source ~/domain_sentiment_data.tar.gz\n"
               "  python -m metakd.get_data --source ~/data/sorted_data_acl\n"
               "  python -m metakd.get_data --source synthetic --models-out models\n"
               "  python -m metakd.get_data --fetch-model bert-base-uncased "
               "--fetch-model huawei-noah/TinyBERT_General_4L_312D\n"
               "  python -m metakd.get_data --task mnli --out data/MNLI --data-portion 0.05\n"
               "  python -m metakd.get_data --task tsv --source tickets.csv --out data/TSV --text-column body\n"
               "\nOffline: download the archive by hand and pass it with --source.")
    parser.add_argument(
        "--source", default=None,
        help="TASK=tsv: your CSV/TSV file (split here). TASK=mnli: an http(s) URL of GLUE's MNLI.zip (default "
             f"{mnli.DEFAULT_SOURCE}), a local zip, or a folder with train.tsv and dev_matched.tsv. TASK=senti: "
             "where the reviews come from: an http(s) URL of domain_sentiment_data.tar.gz "
             f"(default {DEFAULT_SOURCE}), a local .tar.gz/.tgz/.tar/.zip archive, a local "
             "sorted_data_acl folder (or a folder holding one), or 'synthetic' (a tiny "
             "generated dataset, and tiny random teacher/student BERTs in --models-out). "
             "If only --fetch-model is given, no data is fetched.")
    parser.add_argument("--task", default="senti", choices=list(tsv.TASKS),
                        help="senti: the Amazon reviews; mnli: GLUE's MNLI (five genres, sentence pairs); tsv: your "
                             "own CSV/TSV (default: %(default)s)")
    parser.add_argument("--out", default="data/SENTI",
                        help="folder for train.tsv, dev.tsv, test.tsv (default: %(default)s)")
    parser.add_argument("--cache-dir", default="cache",
                        help="downloads and extracted archives are kept here "
                             "(default: %(default)s)")
    parser.add_argument("--models-out", default="models",
                        help="where model folders go: tiny-teacher/tiny-student for "
                             "'synthetic', <name> for --fetch-model (default: %(default)s)")
    parser.add_argument("--sha256", default=None,
                        help="expected SHA-256 of the archive (URL or local file)")
    parser.add_argument("--retries", type=int, default=3,
                        help="tries per download on network errors (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the synthetic data and tiny BERTs (default: %(default)s); "
                             "the split always uses EasyNLP's seed 11111")
    parser.add_argument("--synthetic-size", type=int, default=50,
                        help="synthetic reviews per domain and label (default: %(default)s)")
    parser.add_argument(
        "--fetch-model", action="append", default=[], metavar="NAME_OR_URL",
        help="download a Hugging Face BERT folder (config.json, vocab.txt, model.safetensors, "
             "tokenizer_config.json) into --models-out/<name>; a hub name such as "
             + " or ".join(PAPER_MODELS) + ", or a base URL holding those files; repeatable")
    parser.add_argument("--hf-endpoint", default=os.environ.get("HF_ENDPOINT", DEFAULT_HF_ENDPOINT),
                        help="Hugging Face hub address for --fetch-model names (default: "
                             "$HF_ENDPOINT or %s)" % DEFAULT_HF_ENDPOINT)
    parser.add_argument("--revision", default="main", help="hub revision (default: %(default)s)")
    g = parser.add_argument_group("mnli and tsv")
    g.add_argument("--data-portion", type=float, default=1.0,
                   help="keep this stratified (domain x label) fraction of train and of dev, at least one row per "
                        "stratum; test stays whole (default: %(default)s)")
    g.add_argument("--split-seed", type=int, default=mnli.SPLIT_SEED,
                   help="seed of the dev/test split and of --data-portion (default: %(default)s; TASK=senti always "
                        "uses EasyNLP's 11111)")
    g = parser.add_argument_group("tsv (your own data)")
    g.add_argument("--train-file", default=None, help="training rows (with --dev-file and --test-file, instead of "
                                                      "--source)")
    g.add_argument("--dev-file", default=None)
    g.add_argument("--test-file", default=None)
    g.add_argument("--text-column", default="text", help="column of the text (default: %(default)s)")
    g.add_argument("--text-b-column", default="", help="column of a second text (sentence pairs); empty: none")
    g.add_argument("--label-column", default="label", help="(default: %(default)s)")
    g.add_argument("--domain-column", default="domain", help="(default: %(default)s)")
    g.add_argument("--dev-fraction", type=float, default=table.DEV_FRACTION,
                   help="one file: share of each domain x label stratum for dev (default: %(default)s)")
    g.add_argument("--test-fraction", type=float, default=table.TEST_FRACTION,
                   help="one file: share of each domain x label stratum for test (default: %(default)s)")
    parser.add_argument("--compat", default="none", choices=["none", "easynlp"],
                        help="easynlp: the text and files EasyNLP's generate_senti_data.py writes, byte for byte "
                             "(repeated paragraphs, glued lines, quotes); default: the reviews read cleanly")
    return parser


def check_task_options(args: argparse.Namespace) -> None:
    """Every option of the chosen task in range, before any download or file is touched."""
    sampling.check_portion(args.data_portion)
    if not 0 <= args.split_seed < 2 ** 32:
        raise UserError(f"--split-seed must be in [0, 2^32), got {args.split_seed}")
    files = [args.train_file, args.dev_file, args.test_file]
    if args.task != "tsv" and any(f is not None for f in files):
        raise UserError(f"--train-file/--dev-file/--test-file are for TASK=tsv, not TASK={args.task}")
    if args.task == "senti":
        if args.data_portion != 1.0 or args.split_seed != senti.SPLIT_SEED:
            raise UserError("TASK=senti splits the Amazon reviews exactly as EasyNLP does (seed 11111, all of them): "
                            "leave DATA_PORTION at 1 and SPLIT_SEED at 11111")
        return
    if args.task == "tsv":
        if args.source is not None and any(f is not None for f in files):
            raise UserError("give either --source (one file, split here) or --train-file, --dev-file and --test-file, "
                            "not both")
        if args.source is None and not all(f is not None for f in files):
            raise UserError("TASK=tsv needs your data: --source FILE (split here), or all of --train-file, "
                            "--dev-file and --test-file")
        if args.source is not None and args.source == "synthetic":
            raise UserError("--source synthetic is TASK=senti's; for a generated CSV run python -m "
                            "metakd.data.synthetic --table FILE")
        for name in ("dev_fraction", "test_fraction"):
            if not 0 < getattr(args, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be in (0, 1), got {getattr(args, name)}")
        if args.dev_fraction + args.test_fraction >= 1:
            raise UserError(f"--dev-fraction + --test-fraction must be < 1 (training needs rows), got "
                            f"{args.dev_fraction} + {args.test_fraction}")
        for name in ("text_column", "label_column", "domain_column"):
            if not getattr(args, name).strip():
                raise UserError(f"--{name.replace('_', '-')} must name a column")


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.synthetic_size < 1:
        raise UserError("--synthetic-size must be at least 1")
    check_task_options(args)
    from metakd.infra.fileio import check_writable  # every output folder, before a download or a model is made

    writes_splits = not (args.source is None and args.fetch_model and args.task != "tsv")
    for folder, used in ((args.out, writes_splits), (args.cache_dir, True),
                         (args.models_out, bool(args.fetch_model) or args.source == "synthetic")):
        if used:
            check_writable(folder, folder=True)
    for name in args.fetch_model:
        dest = fetch_model(name, args.models_out, args.cache_dir, endpoint=args.hf_endpoint,
                           revision=args.revision, retries=args.retries)
        print(f"wrote model {name} to {dest}")
    if args.source is None and args.fetch_model and args.task != "tsv":
        return 0
    if args.task == "tsv":
        columns = table.Columns(args.text_column.strip(), args.text_b_column.strip(), args.label_column.strip(),
                                args.domain_column.strip())
        splits, info = table.load_own_data(columns, args.source, args.train_file, args.dev_file, args.test_file,
                                           args.dev_fraction, args.test_fraction, args.split_seed, args.data_portion)
        for domain in info["domains"]:
            for name in ("dev", "test"):
                if not (splits[name]["domain"] == domain).any():
                    print(f"note: domain {domain!r} has no {name} rows: GENRE={domain} cannot be "
                          f"{'selected on dev' if name == 'dev' else 'tested'}")
        write_task_splits(splits, info, args.out)
        print(f"labels: {', '.join(info['labels'])}; domains: {', '.join(info['domains'])}")
    elif args.task == "mnli":
        if args.compat != "none":
            print("note: --compat easynlp changes only the Amazon reviews' text; MNLI is read the one way")
        root = resolve_source(args.source or mnli.DEFAULT_SOURCE, args.cache_dir, args.models_out, sha256=args.sha256,
                              retries=args.retries, task="mnli")
        print(f"reading {root}")
        splits, info = mnli_splits(root, args.data_portion, args.split_seed)
        write_task_splits(splits, info, args.out)
    else:
        source = args.source or DEFAULT_SOURCE
        root = resolve_source(source, args.cache_dir, args.models_out, seed=args.seed,
                              synthetic_size=args.synthetic_size, sha256=args.sha256,
                              retries=args.retries)
        print(f"reading {root}")
        splits = write_splits(root, args.out, args.compat)
    print(f"wrote {', '.join(str(Path(args.out) / f'{s}.tsv') for s in SPLITS)}")
    print(format_counts(splits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
