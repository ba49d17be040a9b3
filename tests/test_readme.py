"""Every command of the README parses and resolves to a valid config: its flags exist, its
config is found, its overrides apply and validate. The commands that train, evaluate, sweep
and resume are run for real elsewhere in the suite (test_launch, test_sweep, test_evaluate,
test_install, ...); this catches the README drifting from the command line."""

import json
import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAMS = (["python", "launch.py"], ["cnnjax"], ["srun", "python", "launch.py"])

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


def readme_commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
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
                    commands.append(words[len(program):])
    return commands


def test_every_command_of_the_readme_parses_and_validates():
    commands = readme_commands()
    assert len(commands) >= 18, commands
    result = subprocess.run([sys.executable, "-c", CHECK, json.dumps(commands)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
