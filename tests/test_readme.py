"""The README and the pages of docs/ against the code.

Every command of the README and of docs/ parses and resolves to a valid config: its flags
exist, its config is found, its overrides apply and validate. The commands that train,
evaluate, sweep and resume are run for real elsewhere in the suite (test_launch, test_sweep,
test_evaluate, test_install, ...); this catches the documentation drifting from the command
line. Every relative link of the documentation, and every ``docs/*.md#section`` that the code
points to, resolves; the README keeps its set-up commands and stays a front page; and
benchmark figures are written in docs/performance.md, not in the code's prose."""

import glob
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAMS = (["python", "launch.py"], ["cnnjax"], ["srun", "python", "launch.py"])
DOCS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
PAGES = ["README.md", *DOCS]

CHECK = r"""
import json, sys
from absl import flags
from cnnjax import cli, config as config_lib

failures = []
for argv in json.loads(sys.argv[1]):
    try:
        cli._parse_flags(["cnnjax", *argv])
        config, _ = cli._load_config()
        config_lib.validate(config)
        cli._sweep_points(config)  # a sweep's points, each overridden and validated
    except BaseException as e:  # SystemExit from a bad flag included
        failures.append([argv, f"{type(e).__name__}: {e}"])
    flags.FLAGS.unparse_flags()
print(json.dumps(failures))
"""


def read(page: str) -> str:
    with open(os.path.join(ROOT, page)) as f:
        return f.read()


def commands(page: str) -> list[list[str]]:
    """The arguments of every cnnjax command in the page's bash blocks."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", read(page), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip().rstrip("&").strip()
            if not line or line.startswith("#") or "..." in line:
                continue
            words = [w for w in shlex.split(line.replace("$SLURM_ARRAY_TASK_ID", "0"))
                     if not w.startswith("[")]
            while words and re.match(r"^[A-Z_]+=", words[0]):  # VAR=value before the command
                words.pop(0)
            for program in PROGRAMS:
                if words[:len(program)] == program:
                    found.append(words[len(program):])
    return found


def prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return re.sub(r"^ *```.*?^ *```", "", text, flags=re.S | re.M)


def anchors(page: str) -> set[str]:
    """The section anchors GitHub gives the page's headings."""
    seen: dict[str, int] = {}
    for title in re.findall(r"^#{1,6} +(.+?) *#*$", prose(read(page)), re.M):
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
    return {f"{slug}-{i}" if i else slug for slug, n in seen.items() for i in range(n)}


def links(page: str) -> list[str]:
    """The page's relative link targets (``file``, ``file#section``, ``#section``)."""
    targets = re.findall(r"\]\(([^)\s]+)\)", prose(read(page)))
    return [t for t in targets if not re.match(r"^[a-z]+:", t)]


def resolves(page: str, target: str) -> bool:
    path, _, section = target.partition("#")
    linked = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
    if not os.path.exists(os.path.join(ROOT, linked)):
        return False
    return not section or (linked.endswith(".md") and section in anchors(linked))


def test_every_command_of_the_readme_and_docs_parses_and_validates():
    found = {page: commands(page) for page in PAGES}
    assert len(found["README.md"]) >= 6, found["README.md"]
    unique = list({json.dumps(c): c for cs in found.values() for c in cs}.values())
    assert len(unique) >= 18, unique
    result = subprocess.run([sys.executable, "-c", CHECK, json.dumps(unique)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_the_readme_keeps_its_two_setup_commands_and_stays_a_front_page():
    text = read("README.md")
    blocks = [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, re.S)]
    assert "pip install -e . && python launch.py" in blocks
    test_command = 'pip install -e ".[test]" && python -m pytest'
    assert test_command in blocks
    assert test_command in read(os.path.join(".ci", "run")).splitlines()  # CI runs it verbatim
    assert len(text.splitlines()) <= 220
    assert "## Contents" in text
    linked = {os.path.normpath(t.partition("#")[0]) for t in links("README.md")}
    assert DOCS and set(DOCS) <= linked, set(DOCS) - linked


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_resolves(page):
    broken = [t for t in links(page) if not resolves(page, t)]
    assert not broken, broken


def test_every_section_the_code_points_to_exists():
    pointers = []
    for pattern in ("cnnjax/**/*.py", "experiments/**/*.py", "experiments/*.sh", "tests/*.py"):
        for path in glob.glob(os.path.join(ROOT, pattern), recursive=True):
            with open(path) as f:
                for target in re.findall(r"\b((?:README|docs/\w+)\.md(?:#[\w-]+)?)", f.read()):
                    pointers.append((os.path.relpath(path, ROOT), target))
    assert any(t.startswith("docs/performance.md#") for _, t in pointers), pointers
    broken = [(p, t) for p, t in pointers if not resolves("README.md", t)]
    assert not broken, broken


def test_the_zoo_speed_table_is_in_performance():
    text = read(os.path.join("docs", "performance.md"))
    assert "zoo-speed" in anchors(os.path.join("docs", "performance.md"))
    section = text.split("## Zoo speed", 1)[1].split("\n## ", 1)[0]
    assert "python -m experiments.benchmarks.zoo" in section
    assert len(re.findall(r"^\| \w+ \| [\d.]+ \|", section, re.M)) >= 10


# A measured figure in prose: images/s, milliseconds or seconds a step, "1.4x faster", "+27%".
FIGURE = re.compile(r"\d(?:[\d,.]*\d)? ?(?:images/s|img/s|ms\b|s/step|GB/s|TFLOP\b)"
                    r"|\d(?:\.\d+)?x (?:faster|slower)|\+\d+(?:\.\d+)?%")


def test_benchmark_figures_live_in_docs_performance_not_in_the_code():
    found = []
    for pattern in ("cnnjax/**/*.py", "experiments/**/*.py", "experiments/*.sh"):
        for path in glob.glob(os.path.join(ROOT, pattern), recursive=True):
            with open(path) as f:
                for n, line in enumerate(f, 1):
                    # Prose only: docstrings and comments, not the f-strings that print results.
                    if "{" not in line and FIGURE.search(line):
                        found.append(f"{os.path.relpath(path, ROOT)}:{n}: {line.strip()}")
    allowed = {"cnnjax/progress.py"}  # its docstring shows what a progress line looks like
    found = [f for f in found if f.split(":")[0] not in allowed]
    assert not found, "\n".join(found)
