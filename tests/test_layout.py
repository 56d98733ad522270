"""The layout (README "Files and the paper", docs/layout.md): the method and its shared libraries at
the top level, the toolbox in tools/; no file over 450 non-blank lines; entry scripts import
libraries only; the README's file table (lines, names) matches the files. When a file changes, run
`python tests/test_layout.py` to rewrite the table's line counts."""
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the project card's files, then the libraries the entry scripts share
METHOD = ["model.py", "motion.py", "masking.py", "teacher.py", "train.py", "probe.py",
          "finetune.py"]
LIBRARIES = ["data.py", "runtime.py", "evaluation.py", "augment.py", "hubconf.py"]
ENTRY = {"train.py", "probe.py", "finetune.py"}   # top-level scripts run from the command line
MAX_LINES = 450
# Files still over the limit, each with the ceiling it may not pass (shrink them, never grow them):
# runtime.py took the flag and checkpoint checks of the bad-input issue after the split, and the
# project card allows no top-level checkpoints.py to move them to (docs/layout.md, "runtime.py").
# data.py took the reader of prepared videos without FFmpeg's demuxer (issue 26: an MP4 sample
# table, one decoder per thread) and the card allows no decode.py (docs/layout.md, "data.py").
CEILING = {"runtime.py": 700, "data.py": 557}
ROW = re.compile(r"^\| `(?P<file>[\w/]+\.py)` \((?P<lines>\d+)\) \|")


def lines(path):
    """Non-blank lines, the measure of the README's table and of the 450-line rule."""
    return sum(1 for ln in path.read_text().splitlines() if ln.strip())


def imports(path):
    """Top-level module names a file imports (any depth: lazy imports count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def python_files():
    return sorted(p for p in [*ROOT.glob("*.py"), *ROOT.glob("tools/*.py")])


def test_top_level_holds_the_method_and_its_libraries_only():
    top = sorted(p.name for p in ROOT.glob("*.py"))
    assert set(top) <= set(METHOD + LIBRARIES), f"move to tools/: {set(top) - set(METHOD + LIBRARIES)}"
    assert set(METHOD) <= set(top)


def test_no_file_over_450_non_blank_lines():
    counts = {p.relative_to(ROOT).as_posix(): lines(p) for p in python_files()}
    big = {f: n for f, n in counts.items() if n > CEILING.get(f, MAX_LINES)}
    assert not big, f"over {MAX_LINES} non-blank lines (or a CEILING): {big}"
    stale = {f for f in CEILING if counts.get(f, 0) <= MAX_LINES}
    assert not stale, f"back under {MAX_LINES}: remove {stale} from CEILING"


def test_libraries_import_no_tool_and_entry_scripts_no_entry_script():
    for p in ROOT.glob("*.py"):
        names = imports(p)
        assert not any(n == "tools" or n.startswith("tools.") for n in names), p.name
        others = {e[:-3] for e in ENTRY} - {p.stem}
        assert not names & others, f"{p.name} imports the entry script(s) {names & others}"
    tools = {p.stem for p in ROOT.glob("tools/*.py")} - {"__init__"}
    entry_tools = {t for t in tools if "__main__" in (ROOT / "tools" / f"{t}.py").read_text()}
    for t in tools:
        names = imports(ROOT / "tools" / f"{t}.py")
        wrong = {n for n in names if n.split(".")[-1] in entry_tools - {t}
                 or f"{n.split('.')[0]}.py" in ENTRY}
        assert not wrong, f"tools/{t}.py imports the entry script(s) {wrong}"


def table_rows(text):
    return [(m["file"], int(m["lines"]), ln) for ln in text.splitlines() if (m := ROW.match(ln))]


def test_readme_file_table_counts_and_names_are_current():
    text = (ROOT / "README.md").read_text()
    rows = table_rows(text)
    listed = {f for f, _, _ in rows}
    every = {p.relative_to(ROOT).as_posix() for p in python_files()} - {"tools/__init__.py"}
    assert listed == every, f"missing from the table: {every - listed}; gone: {listed - every}"
    stale = {f: (n, lines(ROOT / f)) for f, n, _ in rows if n != lines(ROOT / f)}
    assert not stale, f"(table, file) lines: {stale}; run python tests/test_layout.py to rewrite"
    for f, _, ln in rows:   # every name the row quotes exists in its file
        source = (ROOT / f).read_text()
        for name in re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", ln.split("|", 4)[3]):
            assert re.search(rf"\b(def|class) {name}\b|^{name} = ", source, re.M), (f, name)


def test_readme_is_a_teaching_page():
    """README.md at most 300 lines: the lab notes live in docs/."""
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= 300, f"README.md has {n} lines; move lab notes to docs/"


if __name__ == "__main__":   # rewrite the table's line counts in README.md
    readme = ROOT / "README.md"
    text = readme.read_text()
    for f, n, ln in table_rows(text):
        text = text.replace(ln, ln.replace(f"`{f}` ({n})", f"`{f}` ({lines(ROOT / f)})", 1))
    readme.write_text(text)
    sys.exit(0)
