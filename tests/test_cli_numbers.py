"""Numbers on the command line are read as a user types them: ASCII digits, an optional sign,
a decimal point and an exponent. Python's int() and float() also take '1_000', blanks and other
scripts' digits, so a typo such as ``--depth 1_00`` ran 100 layers in silence."""

from __future__ import annotations

import pytest

from gradbench import cli
from gradbench.cli.common import strict_float, strict_int

SMALL = ["--width", "4", "--backend", "numpy"]


@pytest.mark.parametrize("text, value", [("12", 12), ("+3", 3), ("-7", -7), ("007", 7)])
def test_strict_int_takes_plain_integers(text, value):
    assert strict_int(text) == value


@pytest.mark.parametrize("text", ["1_000", " 12", "12 ", "\u0661\u0662", "\uff11\uff12", "1e3", "1.0", "", "+", "0x10"])
def test_strict_int_refuses_other_spellings(text):
    with pytest.raises(ValueError):
        strict_int(text)


@pytest.mark.parametrize("text, value", [("1", 1.0), ("-0.5", -0.5), (".5", 0.5), ("5.", 5.0), ("1e-3", 1e-3),
                                         ("2E+2", 200.0), ("+1.5e10", 1.5e10)])
def test_strict_float_takes_plain_numbers(text, value):
    assert strict_float(text) == value


@pytest.mark.parametrize("text", ["1_0.5", " 1.5", "\u0661.5", "1e", "e3", ".", "1.5f", "0x1p3"])
def test_strict_float_refuses_other_spellings(text):
    with pytest.raises(ValueError):
        strict_float(text)


@pytest.mark.parametrize("argv, option", [
    (["run", "--depth", "1_00"], "--depth"),
    (["run", "--depth", "\u0661\u0662"], "--depth"),
    (["run", "--depth", "12", "--sigma-w", "1_0.5"], "--sigma-w"),
    (["run", "--depth", "12", "--seed", "1_0"], "--seed"),
    (["sweep", "--depth", "1_0,20"], "--depth"),
    (["sweep", "--depth", "12", "--sigma-w", "0.5:1_0:3"], "--sigma-w"),
    (["sweep", "--depth", "12", "--seeds", "1_0"], "--seeds"),
])
def test_cli_refuses_underscored_and_non_ascii_numbers(argv, option, capsys):
    code = cli.main(argv + SMALL)
    err = capsys.readouterr().err
    assert code == 2, err
    assert option in err


def test_cli_says_how_to_write_the_number(capsys):
    assert cli.main(["run", "--depth", "1_00"] + SMALL) == 2
    assert "ASCII digits 0-9 (no '_'" in capsys.readouterr().err


def test_cli_takes_plain_numbers(capsys):
    assert cli.main(["run", "--depth", "12", "--sigma-w", "1.5", "--seed", "3"] + SMALL) == 0
    assert "depth 12, width 4, tanh, xavier_normal, sigma_w=1.5" in capsys.readouterr().out
