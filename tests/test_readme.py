"""The README's Python examples run, and the numbers they state are what they print.

A block whose first line starts with ``# needs torch`` runs only when torch is installed (in
its own test, skipped with the reason otherwise; ``make test-all`` installs torch and turns such
a skip into a failure).
"""

import ast
import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
NEEDS_TORCH = "# needs torch"


def _blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _run(blocks) -> int:
    """Execute the blocks in one namespace; returns how many stated values were compared."""
    ns: dict = {}
    checked = 0
    for block in blocks:
        lines = block.splitlines()
        for stmt in ast.parse(block).body:
            code = ast.get_source_segment(block, stmt)
            comment = lines[stmt.end_lineno - 1].partition("#")[2]
            # a comment that starts with a number or a list of numbers states the value shown
            stated = re.match(r"\s*(\[[-\d., ]+\]|-?\d+\.\d+)", comment)
            if isinstance(stmt, ast.Expr) and stated:
                value = eval(compile(ast.Expression(stmt.value), "README", "eval"), ns)
                expected = np.array(eval(stated.group(1)), dtype=float)
                digits = max(len(s.split(".")[1]) for s in re.findall(r"-?\d+\.\d+", stated.group(1)))
                np.testing.assert_allclose(np.asarray(value, dtype=float), expected, rtol=0,
                                           atol=0.51 * 10.0**-digits, err_msg=code)
                checked += 1
            elif isinstance(stmt, ast.Expr) and comment.strip().startswith("gradients beyond"):
                assert all(eval(compile(ast.Expression(stmt.value), "README", "eval"), ns)), code
                checked += 1
            else:
                exec(compile(ast.Module([stmt], []), "README", "exec"), ns)
    return checked


def test_readme_python_examples_run_and_their_comments_hold():
    checked = _run([b for b in _blocks() if not b.startswith(NEEDS_TORCH)])
    assert checked >= 5  # the stated numbers were really compared


def test_readme_torch_examples_run_and_their_comments_hold():
    blocks = [b for b in _blocks() if b.startswith(NEEDS_TORCH)]
    assert blocks, "the README has no torch example ('Bring your own model')"
    pytest.importorskip("torch", reason="torch is not installed: pip install 'gradbench[torch]' "
                                        "(make test-all installs it)")
    assert _run(blocks) >= 4
