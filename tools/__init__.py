"""Command-line tools that use smile's libraries: `python -m tools.<name>` from the repository root.

A tool imports the top-level libraries (model.py, runtime.py, ...); no top-level file imports a
tool.
"""
