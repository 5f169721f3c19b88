"""perf/real_logs.py: the fetch-and-verify of public logs (from a git snapshot made here) and the sets' readers."""
import hashlib
import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from perf import real_logs
from perf.real_logs import SETS, LogSet, Source, order_to_rows, prepare_argv, sequences_to_rows

MIRROR = Path(real_logs.DEFAULT_MIRROR)


def git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def mirror(tmp_path):
    """A mirror holding owner+name/repo: a bare clone of a repository with one commit of data/log.txt."""
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "data" / "log.txt").write_bytes(b"0 made up\n1 2 3\n4 5 6\n")
    git("init", "-q", cwd=work)
    git("add", ".", cwd=work)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "data", cwd=work)
    commit = git("rev-parse", "HEAD", cwd=work)
    git("clone", "-q", "--bare", str(work), str(tmp_path / "mirror" / "owner+name" / "repo"), cwd=tmp_path)
    published = b"1 2 3\n4 5 6\n"
    source = Source("owner/name", commit, "data/log.txt", len(published), hashlib.sha256(published).hexdigest(),
                    skip_lines=1)
    return tmp_path / "mirror", source, published


def test_fetch_writes_the_verified_file(mirror, tmp_path, monkeypatch, capsys):
    path, source, published = mirror
    monkeypatch.setattr(real_logs, "SETS", {"toy": LogSet(files={"log.txt": source}, prepare=[])})
    assert real_logs.main(["fetch", "--out", str(tmp_path / "raw"), "--mirror", str(path)]) == 0
    assert (tmp_path / "raw" / "toy" / "log.txt").read_bytes() == published
    assert "toy/log.txt: 12 bytes, sha256 verified (owner/name@" in capsys.readouterr().out
    bad = replace(source, sha256="0" * 64)
    monkeypatch.setattr(real_logs, "SETS", {"toy": LogSet(files={"log.txt": bad}, prepare=[])})
    assert real_logs.main(["fetch", "--out", str(tmp_path / "raw2"), "--mirror", str(path)]) == 2
    assert f"is 12 bytes, sha256 {source.sha256}; expected 12 bytes, sha256 {'0' * 64}" in capsys.readouterr().err
    assert not (tmp_path / "raw2" / "toy" / "log.txt").exists()
    assert real_logs.main(["fetch", "--out", str(tmp_path / "raw"), "--sets", "nope"]) == 2


def test_sequences_to_rows(tmp_path):
    (tmp_path / "items.txt").write_text("1 7 8 9\n2 8\n")
    (tmp_path / "times.txt").write_text("1 100 100 200\n2 50\n")
    sequences_to_rows(tmp_path, "items.txt", "times.txt", tmp_path / "rows.csv")
    assert (tmp_path / "rows.csv").read_text() == "1,7,100\n1,8,100\n1,9,200\n2,8,50\n"
    (tmp_path / "times.txt").write_text("1 100 100 200\n2 50 60\n")
    with pytest.raises(real_logs.UserError, match="differ at line 2"):
        sequences_to_rows(tmp_path, "items.txt", "times.txt", tmp_path / "rows.csv")


def test_order_to_rows_times_by_position(tmp_path):
    (tmp_path / "items.txt").write_text("1 7 8 9\n2 8\n")
    order_to_rows(tmp_path, "items.txt", tmp_path / "rows.csv")
    assert (tmp_path / "rows.csv").read_text() == "1,7,0\n1,8,1\n1,9,2\n2,8,0\n"


def test_every_set_prepares_with_its_column_mapping_only(tmp_path):
    for name, log_set in SETS.items():
        argv = prepare_argv(name, tmp_path / "raw", tmp_path / "out")
        assert argv[:3] == ["data", "prepare", "--input"] and argv[-2:] == ["--out", str(tmp_path / "out" / name)]
        assert not any("{" in a for a in argv), argv
        flags = {a for a in argv if a.startswith("--")}
        assert flags <= {"--input", "--columns", "--items", "--item-columns", "--out"}, (name, flags)
        assert (log_set.reader is None) == argv[3].startswith(str(tmp_path / "raw")), name


@pytest.mark.skipif(not all((MIRROR / s.repo.replace("/", "+") / "repo").is_dir()
                            for ls in SETS.values() for s in ls.files.values()),
                    reason=f"the sets' snapshots are not in {MIRROR} on this machine")
def test_the_committed_table_matches_the_snapshots(tmp_path):
    assert real_logs.main(["fetch", "--out", str(tmp_path)]) == 0
    assert sum(1 for _ in (tmp_path / "ml-100k" / "u.data").open()) == 100_000


def test_nann_recall_at_deep_retrievals_items_is_interpolated_on_log_items():
    points = [{"items_scored": 100, "recall_retrieval": 0.2}, {"items_scored": 10_000, "recall_retrieval": 0.4},
              {"items_scored": 1000, "recall_retrieval": 0.3}]
    assert real_logs.at_items(points, 1000) == pytest.approx(0.3)
    assert real_logs.at_items(points, 100 * 10 ** 0.5) == pytest.approx(0.25)
    assert real_logs.at_items(points, 50) is None and real_logs.at_items(points, 20_000) is None


def test_report_tables_hold_every_number_with_its_interval():
    def rec(mean):
        return {"mean": mean, "low": mean - 0.01, "high": mean + 0.01}

    result = {"name": "toy", "stats": {"users": 1000, "items": 500, "split": "last"},
              "beam": {"recall_retrieval": 0.31, "coverage": 0.995, "scored_fraction": 0.2,
                       "baselines": {"users": 1000, "verdict": ["attention beats popularity: +0.2"],
                                     "recall_all": {"attention": rec(0.32), "popularity": rec(0.12),
                                                    "popularity (unseen)": rec(0.13), "two-tower": rec(0.28)}}},
              "sweep": [{"items_scored": 10, "recall_retrieval": 0.1}, {"items_scored": 1000, "recall_retrieval": 0.3}],
              "dr": {b: {"recall_retrieval": 0.2, "scored_fraction": 0.02, "items_scored": 100} for b in real_logs.DR_BEAMS},
              "seconds": {"attention": 120.0, "two-tower": 30.0},
              "training": {"kept": 7, "refine_from": None, "two_tower": 0.25, "random": [0.3, 7], "refined": None}}
    refined = {**result, "name": "toy2", "training": {"kept": 12, "refine_from": 9, "two_tower": 0.3,
                                                      "random": [0.29, 4], "refined": [0.31, 12]}}
    text = real_logs.tables([result, refined])
    assert "| toy | 1,000 / 500 | last (1,000) | 0.120 [0.110, 0.130] | 0.130 [0.120, 0.140] | 0.280 [0.270, 0.290] " \
           "| **0.320 [0.310, 0.330]** | 7 | 120 / 30 |" in text
    assert "| **0.320 [0.310, 0.330]** | 12 (from the two-tower model, after epoch 9) | 120 / 30 |" in text
    assert "- toy: attention beats popularity: +0.2" in text
    assert "- toy: validation two-tower 0.2500; attention from random weights 0.3000 (epoch 7); kept epoch 7" in text
    assert "- toy2: validation two-tower 0.3000; attention from random weights 0.2900 (epoch 4); trained on from the " \
           "two-tower model 0.3100 (epoch 12); kept epoch 12 (from the two-tower model, after epoch 9)" in text
    assert "| toy | 0.310 / 0.9950 / 20.00% | 0.200 / 2.00% · 0.200 / 2.00% | 0.200 · 0.200 |" in text


def test_training_summary_reads_both_phases_from_the_logs(tmp_path):
    """The report's "what training tried" comes from the run's log and its baseline's: epoch 0 (the two-tower model)
    and mid-epoch validations are not epochs trained; the second phase starts after refine_from."""
    def log(path, records):
        path.mkdir(parents=True)
        (path / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    def val(epoch, step, recall, **kw):
        return {"kind": "val", "epoch": epoch, "step": step, "recall_all@200": recall, **kw}

    run = tmp_path / "run"
    log(run, [val(0, 0, 0.5, elapsed_s=1), val(0, 5, 0.9), val(1, 10, 0.3, elapsed_s=2), val(2, 20, 0.4, elapsed_s=3),
              val(3, 30, 0.55, elapsed_s=4), val(4, 40, 0.52, elapsed_s=5), {"kind": "best", "epoch": 3,
                                                                             "recall_all@200": 0.55, "refine_from": 2}])
    log(run / "baseline", [val(1, 10, 0.5, elapsed_s=1), {"kind": "best", "epoch": 1, "recall_all@200": 0.5}])
    assert real_logs.training_summary(run) == {"kept": 3, "refine_from": 2, "two_tower": 0.5, "random": [0.4, 2],
                                               "refined": [0.55, 3]}


def test_deep_retrieval_section_on_a_trained_run(tiny_run, tmp_path, capsys):
    """`python -m perf.deep_retrieval` runs the real-logs steps on a run trained elsewhere: NANN's evaluation and
    sweep, Deep Retrieval trained and evaluated on the same data, in the same tables."""
    from perf import deep_retrieval

    work = tmp_path / "work"
    assert deep_retrieval.main(["--data", str(tiny_run.data), "--run", str(tiny_run.run), "--work", str(work),
                                "--no-write"]) == 0
    text = capsys.readouterr().out
    assert "| synthetic | " in text and "two-tower" in text
    assert "- synthetic: validation two-tower 0." in text  # what training tried, read from the run's logs
    search_row = next(line for line in text.splitlines() if line.startswith("| synthetic | 0."))
    assert search_row.count("%") == 1 + len(real_logs.DR_BEAMS)  # NANN's beam, then DR at each beam
    for beam in real_logs.DR_BEAMS:
        assert (work / "eval" / "synthetic" / f"dr{beam}.json").is_file()
    assert not (work / "runs" / "synthetic").exists()  # the given run was used, none trained here


def test_deep_retrieval_refuses_a_run_without_its_baselines(tmp_path, capsys):
    from perf import deep_retrieval

    assert deep_retrieval.main(["--data", str(tmp_path), "--run", str(tmp_path / "run"), "--work",
                                str(tmp_path / "w"), "--no-write"]) == 2
    assert "nann train" in capsys.readouterr().err
