"""The README's Python examples run, and the numbers they state are what they print."""

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_examples_run_and_their_comments_hold():
    ns: dict = {}
    checked = 0
    for block in _blocks():
        for line in block.splitlines():
            code, _, comment = line.partition("#")
            if not code.strip():
                continue
            # a comment that starts with a number or a list of numbers states the value printed
            stated = re.match(r"\s*(\[[-\d., ]+\]|-?\d+\.\d+)", comment)
            if stated and "=" not in code.split("(")[0]:
                value = eval(code, ns)
                expected = np.array(eval(stated.group(1)), dtype=float)
                digits = max(len(s.split(".")[1]) for s in re.findall(r"-?\d+\.\d+", stated.group(1)))
                np.testing.assert_allclose(np.asarray(value, dtype=float), expected, rtol=0,
                                           atol=0.51 * 10.0**-digits, err_msg=line)
                checked += 1
            else:
                exec(code, ns)
    assert checked >= 4  # the stated numbers were really compared
