"""The README's walkthrough ("Your own data, step by step"), run command by command as a
user would type it, on the data it describes: scikit-learn's breast-cancer rows written
as CSV with word labels, unscaled."""

from __future__ import annotations

import csv
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Your own data, step by step"


def walkthrough() -> list[list[str]]:
    """The commands of the section's first shell block, split as a shell would."""
    text = (ROOT / "README.md").read_text()
    body = text[text.index(SECTION):]
    block = re.search(r"```sh\n(.*?)```", body, re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def write_csvs(folder: Path) -> None:
    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    labels = np.where(data.target == 0, "malignant", "benign")
    order = np.random.default_rng(0).permutation(len(labels))
    for name, rows in (("train.csv", order[:420]), ("test.csv", order[420:])):
        with open(folder / name, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow([*names, "diagnosis"])
            out.writerows([*data.data[i], labels[i]] for i in rows)


def test_readme_walkthrough_runs_as_written(launch, tmp_path):
    write_csvs(tmp_path)
    (tmp_path / "jobs").symlink_to(ROOT / "jobs")
    commands = walkthrough()
    assert len(commands) == 6, commands
    outputs = []
    for words in commands:
        if words[0] == "mpiexec":   # mpiexec -n N python -m mpisgd ARGS
            assert words[1] == "-n" and words[3:6] == ["python", "-m", "mpisgd"], words
            r = launch(int(words[2]), words[6:], cwd=str(tmp_path), timeout=180)
        else:
            assert words[0] == "python", words
            r = subprocess.run([sys.executable, *words[1:]], cwd=tmp_path, env=launch.env,
                               capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, f"{words}\n{r.stdout}\n{r.stderr}"
        outputs.append(r.stdout + r.stderr)
    # standardised: no scaling warning, an accurate model, predictions in the CSV's words
    assert "data.standardize" not in outputs[2], outputs[2]
    assert "accuracy" in outputs[3]
    rows = list(csv.reader(open(tmp_path / "pred.csv")))
    assert {r[0] for r in rows[1:]} == {"malignant", "benign"}, rows[:3]
    truth = list(csv.reader(open(tmp_path / "test.csv")))
    hits = sum(p[0] == t[-1] for p, t in zip(rows[1:], truth[1:]))
    assert hits / (len(truth) - 1) > 0.93, hits
    assert "benign" in outputs[5] and "malignant" in outputs[5]
