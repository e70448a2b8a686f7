"""tools/before_after.py: the before/after table from a measured before-run and from a per-step
estimate, checked against the arithmetic written out for made-up runs."""
import json
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ["1_get_data.sh", "2_process_data.sh", "3_train_teacher.sh", "4_student_first.sh", "5_student_second.sh", "6_eval.sh"]


def write_times(folder: Path, times: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["script\twall_s\tpeak_rss_mb"] + [f"{s}\t{w}\t100" for s, w in times.items()]
    (folder / "stage_times.tsv").write_text("\n".join(rows) + "\n")


def write_run(out: Path, times: dict, acc: float, second_train_s: float = 300.0) -> None:
    write_times(out, times)
    (out / "meta_teacher").mkdir(parents=True, exist_ok=True)
    (out / "meta_teacher" / "results.json").write_text(json.dumps({"steps": 10, "history": [{}, {}]}))
    for sub, res in (("meta_student_pretrain", {"steps": 6}),
                     ("meta_student_finetune", {"steps": 6, "epochs": 3, "history": [{}], "dev": {"n": 4},
                                                "train_seconds": second_train_s})):
        (out / "books" / sub).mkdir(parents=True, exist_ok=True)
        (out / "books" / sub / "results.json").write_text(json.dumps(res))
    res = {"student": {"accuracy": acc, "n": 8}, "meta-teacher": {"accuracy": acc + 0.1, "n": 8}}
    (out / "eval_test.json").write_text(json.dumps({"results": {"books": res}}))


def run_tool(*args) -> str:
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "before_after.py"), *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def total_line(out: str) -> list:
    return next(line for line in out.splitlines() if line.startswith("total")).split()


def test_measured_before_run(tmp_path):
    after = dict(zip(SCRIPTS, [2.0, 10.0, 20.0, 30.0, 40.0, 5.0]))
    write_run(tmp_path / "after", after, 0.75)
    before = tmp_path / "before"
    a_times = dict(zip(SCRIPTS[:3], [2.0, 40.0, 60.0]))
    b_times = dict(zip(SCRIPTS[3:], [90.0, 200.0, 10.0]))
    write_times(before / "a" / "out", a_times)
    write_run(before / "b" / "out", b_times, 0.70, second_train_s=570.0)
    (before / "a" / "out" / "eval_test.json").write_text((before / "b" / "out" / "eval_test.json").read_text())
    out = run_tool("--run", str(tmp_path / "after"), "--before-run", str(before))
    assert total_line(out) == ["total", "402.0", "107.0", f"{402 / 107:.2f}x"]
    assert "5_student_second.sh" in out and f"{200 / 40:.2f}x" in out
    assert "stage 2 per epoch, before: training 190.0 s, whole script 66.7 s" in out
    assert "stage 2 per epoch, after: training 100.0 s, whole script 13.3 s" in out
    assert "student 0.7000 (n=8)" in out and "student 0.7500 (n=8)" in out


def test_per_step_estimate(tmp_path):
    after = dict(zip(SCRIPTS, [2.0, 10.0, 20.0, 30.0, 40.0, 5.0]))
    write_run(tmp_path / "after", after, 0.75)
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.tsv").write_text("h\n" + "r\n" * 128)        # 128 rows
    (data / "dev_standard.tsv").write_text("h\n" + "r\n" * 64)  # 64 rows
    ms = {"embed": 1000.0, "teacher_step": 2000.0, "stage1_step": 3000.0, "stage2_step": 4000.0, "eval": 500.0}
    stages = {k: {"ms_per_step": v, "batch_size": 64 if k in ("embed", "eval") else 16} for k, v in ms.items()}
    (tmp_path / "before.json").write_text(json.dumps({"stages": stages}))
    out = run_tool("--run", str(tmp_path / "after"), "--data", str(data), "--before", str(tmp_path / "before.json"))
    # 2: 128/64 x 1 s; 3: 10 x 2 s + 2 evals x 64/64 x 1 s; 4: 6 x 3 s; 5: 6 x 4 s + 1 eval x 4/64 x 0.5 s;
    # 6: 8/64 x (1 + 0.5) s; 1_get_data counts the after-run's 2 s on both sides.
    before = 2.0 + 2.0 + 22.0 + 18.0 + (24.0 + 4 / 64 * 0.5) + 8 / 64 * 1.5
    assert total_line(out)[:3] == ["total", f"{before:.1f}", "107.0"]


def test_before_run_unfinished(tmp_path):
    write_run(tmp_path / "after", dict(zip(SCRIPTS, [1.0] * 6)), 0.75)
    write_times(tmp_path / "before" / "a" / "out", {"1_get_data.sh": 1.0})
    write_times(tmp_path / "before" / "b" / "out", {})
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "before_after.py"), "--run", str(tmp_path / "after"),
                        "--before-run", str(tmp_path / "before")], capture_output=True, text=True)
    assert r.returncode == 2 and "is tools/research/before_run.sh finished?" in r.stderr


def test_real_run_times_the_chosen_scripts_of_another_checkout(tmp_path):
    """tools/real_run.sh with REPO/FROM/TO (how tools/research/before_run.sh runs its chains): only scripts
    FROM..TO, the other checkout's own, each timed into OUT_DIR/stage_times.tsv there."""
    repo = tmp_path / "checkout"
    repo.mkdir()
    for s in SCRIPTS:
        (repo / s).write_text(f'echo "{s} $DATA_DIR $(basename "$SOURCE")" >> ran.txt\n')
    env = {"PATH": "/usr/bin:/bin", "REPO": str(repo), "OUT_DIR": "out", "FROM": "2", "TO": "3"}
    r = subprocess.run(["bash", str(ROOT / "tools" / "real_run.sh")], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (repo / "ran.txt").read_text().splitlines() == [
        "2_process_data.sh data/SENTI sorted_data_acl", "3_train_teacher.sh data/SENTI sorted_data_acl"]
    rows = (repo / "out" / "stage_times.tsv").read_text().splitlines()
    assert rows[0] == "script\twall_s\tpeak_rss_mb" and [r.split("\t")[0] for r in rows[1:]] == SCRIPTS[1:3]
