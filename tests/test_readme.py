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


# a comment that starts with a string, a tuple, True, False or None states the value shown;
# "(depth,)" or "(batch, width)" describe a shape (names, not values)
_LITERAL = re.compile(r"""\s*('[^']*'|"[^"]*"|\([^()]*\)|True\b|False\b|None\b)""")
_NO_LITERAL = object()


def _literal(comment: str):
    found = _LITERAL.match(comment)
    try:
        return ast.literal_eval(found.group(1)) if found else _NO_LITERAL
    except ValueError:
        return _NO_LITERAL


def _same(value, expected) -> bool:
    if isinstance(expected, tuple):
        return len(tuple(value)) == len(expected) and all(_same(v, e) for v, e in zip(value, expected))
    return type(expected) is type(None) and value is None or expected is not None and bool(value == expected)


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
            elif isinstance(stmt, ast.Expr) and (expected := _literal(comment)) is not _NO_LITERAL:
                value = eval(compile(ast.Expression(stmt.value), "README", "eval"), ns)
                assert _same(value, expected), f"{code}: {value!r}, the README says {expected!r}"
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


DESIGN = README.parent / "docs" / "design.md"


def test_design_environment_table_names_every_variable_the_package_reads_with_its_default():
    """docs/design.md section 10 lists exactly the GRADBENCH_* variables the package reads, and
    the defaults it states are the ones the code uses (read in a process with none of them set)."""
    import os
    import subprocess
    import sys

    section = DESIGN.read_text().split("## 10. Environment variables", 1)[1].split("\n## ", 1)[0]
    table = dict(re.findall(r"^\| `(GRADBENCH_[A-Z0-9_]+)` \|[^|]*\| ([^|]*?) \|$", section, flags=re.M))
    root = README.parent
    read = set()
    for path in [*root.joinpath("gradbench").rglob("*.py"), *root.joinpath("kernels").rglob("*.py"),
                 root / "setup.py"]:  # the build's own (GRADBENCH_BUILD_JOBS)
        read |= set(re.findall(r"\"(GRADBENCH_[A-Z0-9_]+)\"", path.read_text()))
    assert set(table) == read, f"documented only: {set(table) - read}; read but undocumented: {read - set(table)}"

    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADBENCH_")}
    code = ("import gradbench.cbackend as c, gradbench.cli.progress as p, gradbench.blas as b; "
            "print(c.BLAS_MIN_WIDTH, c.BLAS_MIN_WIDTH_F32, c.PAR_MIN_WORK, c.PAR_MIN_TOTAL, p.PROGRESS_SECONDS, "
            "int(b.runs_avx512_kernels()), c.SPIN_LAYER, c.SPIN_TOTAL, c.RELOOK_TOTAL, c.isa(), b.gemm_threads())")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if proc.returncode != 0 and "C extension not built" in proc.stderr + proc.stdout:
        pytest.skip("C extension not built")
    assert proc.returncode == 0, proc.stderr
    blas, blas32, par, total, progress, avx512, spin_layer, spin_total, relook, isa, threads = proc.stdout.split()
    # "512 (2^31, never, when the OpenBLAS it calls runs more than one thread, or when the own
    # kernels run AVX-512 and it does not)"
    for name, value in (("GRADBENCH_C_BLAS_MIN_WIDTH", blas), ("GRADBENCH_C_BLAS_MIN_WIDTH_F32", blas32)):
        usual, base, exp = re.fullmatch(r"(\d+) \((\d+)\^(\d+), never, when the OpenBLAS it calls runs more than one "
                                        r"thread, or when the own kernels run AVX-512 and it does not\)",
                                        table[name]).groups()
        never = (int(isa) == 4 and avx512 == "0") or threads != "1"
        assert int(value) == (int(base) ** int(exp) if never else int(usual)), name
    for name, value in (("GRADBENCH_C_PAR_MIN_WORK", par), ("GRADBENCH_C_PAR_MIN_TOTAL", total),
                        ("GRADBENCH_C_SPIN_LAYER", spin_layer), ("GRADBENCH_C_SPIN_TOTAL", spin_total),
                        ("GRADBENCH_C_RELOOK_TOTAL", relook)):
        base, exp = table[name].split("^")
        assert int(base) ** int(exp) == int(value), name
    assert float(table["GRADBENCH_PROGRESS_SECONDS"]) == float(progress)
    code = ("import gradbench.recurrent.cbackend as r; "
            "print(r.BLAS_MIN_WIDTH, r.BLAS_MIN_WIDTH_F32, r.PAR_MIN_WORK, r.PAR_MIN_TOTAL)")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rblas, rblas32, rpar, rtotal = map(int, proc.stdout.split())
    assert table["GRADBENCH_C_RECURRENT_BLAS_MIN_WIDTH"] == "2^31 (never)" and rblas == 2**31
    usual = re.fullmatch(r"(\d+) \(2\^31, never, when the OpenBLAS it calls runs more than one thread\)",
                         table["GRADBENCH_C_RECURRENT_BLAS_MIN_WIDTH_F32"]).group(1)
    assert rblas32 == (int(usual) if threads == "1" else 2**31)
    for name, value in (("GRADBENCH_C_RECURRENT_PAR_MIN_WORK", rpar), ("GRADBENCH_C_RECURRENT_PAR_MIN_TOTAL", rtotal)):
        base, exp = table[name].split("^")
        assert int(base) ** int(exp) == value, name


def test_readme_recurrent_diagnosis_quote_is_what_it_prints():
    """The README quotes the recurrent example's diagnosis in words: every quoted piece (between
    the "..." cuts) appears in what gb.diagnose prints for that example."""
    import gradbench as gb

    text = " ".join(README.read_text().split())
    quote = re.search(r'`print\(gb\.diagnose\(res\)\)` says it in words: "(.*?)"', text).group(1)
    rnn = gb.Recurrent(cell="lstm", steps=1000, hidden=32, input_dim=8, forget_bias=1.0)
    res = gb.backprop(rnn, gb.init_params(rnn, seed=0), gb.sequence_input(rnn, batch=16, seed=1))
    said = " ".join(gb.diagnose(res).explanation.split())
    pieces = [p.strip(" ;") for p in quote.split("...") if p.strip(" ;")]
    assert len(pieces) >= 2
    for piece in pieces:
        assert piece in said, (piece, said)


def test_every_repository_path_the_docs_name_exists():
    """Paths such as `gradbench/params.py` or `csrc/philox.c` in README.md, docs/ and
    benchmarks/README.md name files of this repository (a renamed file left one naming nothing)."""
    root = README.parent
    docs = [README, root / "benchmarks" / "README.md", *sorted((root / "docs").glob("*.md"))]
    top = ("gradbench", "kernels", "csrc", "benchmarks", "tests", "docs", ".ci")
    pattern = re.compile(r"`((?:%s)/[\w./-]+\.(?:py|c|h|md|json|toml|txt|sh))[`:]" % "|".join(map(re.escape, top)))
    named = {(doc.name, path) for doc in docs for path in pattern.findall(doc.read_text())}
    assert len(named) > 10, named
    written = ("benchmarks/results/", "gradbench/_cbuild_error.txt")  # by runs and failed builds
    missing = sorted((doc, path) for doc, path in named
                     if not (root / path).exists() and not path.startswith(written))
    assert not missing, missing
