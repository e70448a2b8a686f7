"""The get_data CLI (behind 1_get_data.sh), run end to end as a user would, in a subprocess."""
from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from safetensors import safe_open

from _http import LocalServer
from metakd.data import senti, synthetic

ROOT = Path(__file__).resolve().parents[1]


def run_cli(args, cwd, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(ROOT), no_proxy="127.0.0.1,localhost",
               NO_PROXY="127.0.0.1,localhost")
    return subprocess.run([sys.executable, "-m", "metakd.get_data", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


class FileServer(LocalServer):
    """Serve a folder over http on 127.0.0.1 (port 0) in a thread; count GET requests."""

    def __init__(self, folder: Path):
        self.requests = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        super().__init__(functools.partial(Handler, directory=str(folder)))


@pytest.fixture(scope="module")
def acl(tmp_path_factory):
    """A synthetic sorted_data_acl, its archive (with a processed_acl decoy), expected TSVs."""
    base = tmp_path_factory.mktemp("acl")
    root = synthetic.make_synthetic_sorted_data_acl(
        base / "domain_sentiment_data" / "sorted_data_acl", n_per_domain_label=15, seed=4)
    shutil.copytree(root, base / "domain_sentiment_data" / "processed_acl")
    archive = base / "served" / "domain_sentiment_data.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(base / "domain_sentiment_data", arcname="domain_sentiment_data")
    expected = base / "expected"
    splits = senti.split_reference(senti.load_sorted_data_acl(root))
    for name, frame in zip(("train", "dev", "test"), splits):
        senti.write_split_tsv(frame, expected / f"{name}.tsv")
    return {"root": root, "archive": archive, "expected": expected}


def assert_same_splits(out: Path, expected: Path):
    for name in ("train", "dev", "test"):
        assert (out / f"{name}.tsv").read_bytes() == (expected / f"{name}.tsv").read_bytes(), name


def test_synthetic_end_to_end(tmp_path):
    r = run_cli(["--source", "synthetic", "--out", "data/SENTI", "--cache-dir", "cache",
                 "--models-out", "models"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    sizes = {n: len(senti.read_split_tsv(tmp_path / "data/SENTI" / f"{n}.tsv", domains=senti.SENTI_DOMAINS))
             for n in ("train", "dev", "test")}
    assert sizes == {"train": 324, "dev": 36, "test": 40}
    table = r.stdout[r.stdout.index("split"):].splitlines()
    assert table[0].split() == ["split", "books", "dvd", "electronics", "kitchen", "total"]
    assert [row.split()[0] for row in table[1:]] == ["train", "dev", "test", "all"]
    assert table[-1].split() == ["all", "100", "100", "100", "100", "400"]
    assert table[1].split()[-1] == "324"
    assert (tmp_path / "cache/synthetic/sorted_data_acl/kitchen_&_housewares/negative.review").is_file()

    for name, layers, hidden, ffn in (("tiny-teacher", 4, 64, 128), ("tiny-student", 2, 48, 96)):
        folder = tmp_path / "models" / name
        config = json.loads((folder / "config.json").read_text())
        assert (config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]) == (layers, hidden, ffn)
        with safe_open(str(folder / "model.safetensors"), "np") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        assert len(shapes) == 5 + 16 * layers + 2
        assert shapes["embeddings.word_embeddings.weight"] == (config["vocab_size"], hidden)
        assert shapes[f"encoder.layer.{layers - 1}.intermediate.dense.weight"] == (ffn, hidden)
        assert shapes[f"encoder.layer.{layers - 1}.output.dense.weight"] == (hidden, ffn)
        assert shapes["pooler.dense.weight"] == (hidden, hidden)
        assert (folder / "vocab.txt").is_file() and (folder / "tokenizer_config.json").is_file()


def test_local_folder(tmp_path, acl):
    # a folder that holds sorted_data_acl (and processed_acl, which must not be taken)
    r = run_cli(["--source", acl["root"].parent, "--out", "out"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert_same_splits(tmp_path / "out", acl["expected"])
    assert not (tmp_path / "models").exists()


def test_local_archive(tmp_path, acl):
    r = run_cli(["--source", acl["archive"], "--out", "out", "--cache-dir", "c"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert_same_splits(tmp_path / "out", acl["expected"])
    assert (tmp_path / "c/extracted/domain_sentiment_data/domain_sentiment_data/sorted_data_acl").is_dir()
    # Another archive under the same name replaces the old extraction.
    other = tmp_path / "elsewhere" / acl["archive"].name
    other.parent.mkdir()
    with tarfile.open(other, "w:gz") as tar:
        tar.add(acl["root"], arcname="sorted_data_acl/")
    r = run_cli(["--source", other, "--out", "out2", "--cache-dir", "c"], cwd=tmp_path)
    assert r.returncode == 0 and "extracting" in r.stdout, r.stderr
    assert_same_splits(tmp_path / "out2", acl["expected"])
    assert not (tmp_path / "c/extracted/domain_sentiment_data/domain_sentiment_data").exists()


def test_http_url_and_cache(tmp_path, acl):
    with FileServer(acl["archive"].parent) as server:
        url = server.url + "/domain_sentiment_data.tar.gz"
        for run in range(2):
            r = run_cli(["--source", url, "--out", "out", "--cache-dir", "c"], cwd=tmp_path)
            assert r.returncode == 0, r.stderr
            assert_same_splits(tmp_path / "out", acl["expected"])
            assert ("extracting" in r.stdout) == (run == 0)
        assert server.requests == ["/domain_sentiment_data.tar.gz"]  # second run: from the cache


def check_one_line_error(r, *fragments):
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr
    for fragment in fragments:
        assert fragment in r.stderr, r.stderr


def test_missing_path(tmp_path):
    r = run_cli(["--source", "no/such/dir", "--out", "out"], cwd=tmp_path)
    check_one_line_error(r, "no/such/dir: no such file or folder")
    assert not (tmp_path / "out").exists()


def test_bad_folder_and_wrong_checksum(tmp_path, acl):
    (tmp_path / "empty").mkdir()
    check_one_line_error(run_cli(["--source", "empty"], cwd=tmp_path), "no sorted_data_acl folder found")
    check_one_line_error(run_cli(["--source", acl["archive"], "--sha256", "ab" * 32], cwd=tmp_path),
                         "checksum mismatch")


def test_unreachable_url(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/domain_sentiment_data.tar.gz"
    r = run_cli(["--source", url, "--retries", "1"], cwd=tmp_path)
    check_one_line_error(r, f"could not download {url} after 1 try", "download it by hand")


@pytest.fixture
def hub(tmp_path):
    """A fake Hugging Face hub: org/tiny with safetensors, org/old with only pytorch_model.bin."""
    root = tmp_path / "hub"
    model = synthetic.make_tiny_bert(tmp_path / "src", num_layers=1, hidden_size=16, num_heads=2,
                                     intermediate_size=32)
    shutil.copytree(model, root / "org/tiny/resolve/main")
    old = root / "org/old/resolve/main"
    old.mkdir(parents=True)
    for name in ("config.json", "vocab.txt"):
        shutil.copy(model / name, old / name)
    (old / "pytorch_model.bin").write_bytes(b"torch pickle")
    with FileServer(root) as server:
        yield server, model


def test_fetch_model(tmp_path, hub):
    server, model = hub
    r = run_cli(["--fetch-model", "org/tiny", "--hf-endpoint", server.url, "--models-out", "m",
                 "--cache-dir", "c"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = tmp_path / "m" / "tiny"
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in model.iterdir())
    for p in model.iterdir():
        assert (got / p.name).read_bytes() == p.read_bytes()
    assert not (tmp_path / "data").exists()  # only --fetch-model: no data step

    r = run_cli(["--fetch-model", f"{server.url}/org/old/resolve/main", "--models-out", "m",
                 "--cache-dir", "c"], cwd=tmp_path)
    check_one_line_error(r, "has only pytorch_model.bin", "does not depend on torch", "convert it")
    assert not (tmp_path / "m" / "old").exists()


def test_help():
    r = run_cli(["--help"], cwd=ROOT)
    assert r.returncode == 0
    for word in ("--source", "synthetic", "--fetch-model", "--cache-dir", "--models-out",
                 "domain_sentiment_data.tar.gz"):
        assert word in r.stdout
