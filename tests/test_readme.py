"""README.md is what a newcomer follows (issue 23 §3), checked on its text.

* the first screen says what the project does, then the two commands and how
  long each takes; measurements live in docs/benchmarks.md (linked);
* Path 1 is one consistent recipe: the tokenizer it trains is the one its dumps
  use, the teacher is trained on its tokens store and dumped from its run
  directory (the recipe the dump used to refuse paired a 262k teacher with a
  32k tokenizer);
* Path 2 dumps a converted checkpoint with the tokenizer `hd-convert` copied;
* TensorBoard, which the trainer writes for, is an installable extra.

The commands themselves are run by the newcomer walk (tests/trainer/
test_trainer_outside_checkout.py runs the train / evaluate / sweep / report part).
"""

import configparser
import os
import re
import shlex

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return f.read()


def _section(title_start: str) -> str:
    """The text of the `## title...` section of README.md."""
    parts = re.split(r"^## ", _readme(), flags=re.M)
    found = [p for p in parts if p.startswith(title_start)]
    assert len(found) == 1, f"README has no single section starting {title_start!r}"
    return found[0]


def _commands(section: str) -> list[list[str]]:
    """The shell commands of a section's ```bash blocks (continuations joined, comments and
    optional `[...]` arguments dropped), as argument lists."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        text = re.sub(r"\\\n", " ", block)
        for line in text.splitlines():
            line = re.sub(r"\[[^\]]*\]", "", line.split(" #")[0]).strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line))
    return commands


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def _sets(argv: list[str]) -> dict[str, str]:
    return dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--set")


def test_first_screen_says_what_it_does_and_how_long_each_command_takes():
    lines = _readme().splitlines()[:20]
    first_command = next(i for i, line in enumerate(lines) if line.startswith("make "))
    assert "teacher" in " ".join(lines[:first_command])  # What it does comes first.
    for target in ("make demo", "make test"):
        line = next((line for line in lines if line.startswith(target)), None)
        assert line is not None and re.search(r"~\d+ min", line), f"{target}: no time given"


def test_measurements_live_in_docs_benchmarks():
    text = _readme()
    assert "](docs/benchmarks.md)" in "\n".join(text.splitlines()[:45])
    assert os.path.exists(os.path.join(ROOT, "docs", "benchmarks.md"))
    headings = re.findall(r"^##+ (.*)$", text, re.M)
    assert not [h for h in headings if re.search(r"bench|measure|timing", h, re.I)], headings


def test_path_1_dumps_with_the_tokenizer_and_teacher_it_trained():
    commands = _commands(_section("Path 1"))
    tools = [c[0] for c in commands]
    assert tools == ["hd-train-tokenizer", "hd-dump", "hd-train", "hd-dump"], tools
    tok, tokens_dump, teacher, signal_dump = commands
    model = _flag(tok, "--model-prefix") + ".model"
    assert _flag(tokens_dump, "--tokenizer") == model == _flag(signal_dump, "--tokenizer")
    assert _flag(tokens_dump, "--teacher") is None and _flag(tokens_dump, "--heldout-store")
    assert _sets(teacher)["store.url"] == _flag(tokens_dump, "--store")
    assert _flag(signal_dump, "--teacher") == _sets(teacher)["run_dir"]


def test_path_2_dumps_with_the_tokenizer_convert_copied():
    convert, dump = _commands(_section("Path 2"))
    assert convert[0] == "hd-convert" and dump[0] == "hd-dump"
    out = _flag(convert, "--out")
    assert _flag(dump, "--teacher") == out
    assert _flag(dump, "--tokenizer") == f"{out}/tokenizer.model"


def test_tensorboard_is_an_extra_and_the_readme_says_how_to_view():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    assert "tensorboard==" in cfg["options.extras_require"]["tensorboard"]
    text = _readme()
    assert "pip install -e '.[tensorboard]'" in text and "tensorboard --logdir" in text
