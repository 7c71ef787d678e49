"""The README's Python examples run, and the numbers they state are what they print."""

import ast
import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_examples_run_and_their_comments_hold():
    ns: dict = {}
    checked = 0
    for block in _blocks():
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
    assert checked >= 5  # the stated numbers were really compared
