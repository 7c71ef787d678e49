"""The backend contract: one table (gradbench.abi), the same validation in every backend, and a C
header that declares the same layout and codes."""

from __future__ import annotations

import numpy as np
import pytest

import gradbench as gb
from gradbench import abi, spec
from gradbench.backends import get_backend
from tests.helpers import wrong_arrays

BACKENDS = gb.backends()
# The stack's contracts (gradbench.recurrent registers its own; tests/test_recurrent_abi.py).
STACK_FUNCTIONS = ("stack_forward", "stack_backward")


def _arrays(function: str, L=3, B=2, N=4, dtype="float64") -> dict:
    """Valid arrays for one call of ``function`` on a small tanh stack."""
    stack = gb.Stack(depth=L, width=N)
    p = gb.init_params(stack, 0)
    icfg, fcfg = abi.kernel_config(stack, False)
    a = abi.allocate(function, dict(L=L, B=B, N=N), dtype, fill=dict(bn_rstd=1.0, sig_e=0, row_e=0, fexp=0, info=-1))
    a.update(icfg=icfg, fcfg=fcfg, W=p.W.astype(dtype), gamma=p.gamma.astype(dtype), beta=p.beta.astype(dtype),
             slope=p.slope.astype(dtype))
    if "b" in a:
        a["b"] = p.b.astype(dtype)
    for k in ("H", "Z", "G"):
        if k in a:
            a[k][...] = np.random.default_rng(1).standard_normal(a[k].shape)
    return a


# ------------------------------------------------------------------ one check for every backend
def _wrong_inputs(function: str):
    """(label, name, replacement) for every array: wrong dtype, wrong shape, not contiguous,
    not aligned, read-only (for the arrays the kernel writes), not an array."""
    return wrong_arrays(_arrays(function), abi.CONTRACTS[function].args, short=True)


@pytest.mark.parametrize("function", ["stack_forward", "stack_backward"])
def test_every_backend_rejects_every_bad_array_with_the_same_message(function):
    """Numba does no bounds checks: a wrong shape reaching its kernel reads out of bounds (e.g.
    b of shape (L, 1)). Every backend must refuse it, before its kernel runs, with one message."""
    if len(BACKENDS) < 2:
        pytest.skip("needs two backends to compare")
    cases = list(_wrong_inputs(function))
    assert len(cases) > 5 * len(abi.CONTRACTS[function].args)
    for label, name, bad in cases:
        messages = {}
        for backend in BACKENDS:
            arrays = _arrays(function)
            before = {k: v.copy() for k, v in arrays.items() if isinstance(v, np.ndarray)}
            arrays[name] = bad
            with pytest.raises((TypeError, ValueError)) as err:
                getattr(get_backend(backend), function)(**arrays)
            messages[backend] = (type(err.value).__name__, str(err.value))
            for k, v in before.items():  # nothing was written: the kernel never ran
                if k != name:
                    np.testing.assert_array_equal(arrays[k], v, err_msg=f"[{backend}] {label}: {k} was written")
        assert len(set(messages.values())) == 1, f"{label}: backends disagree: {messages}"
        kind, text = next(iter(messages.values()))
        assert text.startswith(f"{function}: ") and name in text, f"{label}: {text}"


def test_the_numba_out_of_bounds_case_is_refused():
    arrays = _arrays("stack_forward")
    arrays["b"] = np.zeros((3, 1))
    for backend in BACKENDS:
        with pytest.raises(ValueError, match=r"stack_forward: b has shape \(3, 1\), expected \(3, 4\) = \(L, N\)"):
            get_backend(backend).stack_forward(**arrays)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_codes_and_arguments(backend):
    impl = get_backend(backend)
    arrays = _arrays("stack_forward")
    arrays["icfg"] = arrays["icfg"].copy()
    arrays["icfg"][abi.I_RESIDUAL] = 2  # does not divide L = 3
    with pytest.raises(ValueError, match=r"icfg\[I_RESIDUAL\]=2"):
        impl.stack_forward(**arrays)
    arrays["icfg"][abi.I_RESIDUAL] = 0
    arrays["icfg"][abi.I_ACT] = len(spec.ACTIVATIONS)
    with pytest.raises(ValueError, match="not an activation code"):
        impl.stack_forward(**arrays)
    with pytest.raises(TypeError, match="missing info"):
        impl.stack_forward(*list(_arrays("stack_forward").values())[:-1])
    with pytest.raises(TypeError, match="unexpected array 'bogus'"):
        impl.stack_forward(**_arrays("stack_forward"), bogus=np.zeros(1))
    with pytest.raises(TypeError, match="W has dtype float16"):
        a = _arrays("stack_forward")
        a["W"] = a["W"].astype(np.float16)
        impl.stack_forward(**a)


def test_valid_arrays_pass_and_give_dims():
    for function in STACK_FUNCTIONS:
        for dtype in ("float64", "float32"):
            assert abi.check(function, _arrays(function, L=5, B=3, N=7, dtype=dtype)) == dict(L=5, N=7, B=3)


# ------------------------------------------------------------------ the C header says the same
def test_c_header_declares_the_table_and_the_codes():
    cb = pytest.importorskip("gradbench.cbackend", reason="C extension not built", exc_type=ImportError)
    ffi, lib = cb.ffi, cb.lib
    fields = dict(ffi.typeof("gb_stack_arrays").fields)
    table = {}
    for contract in (abi.CONTRACTS[f] for f in STACK_FUNCTIONS):
        for arg in contract.args:
            table.setdefault(arg.name, arg)
    assert list(fields) == [*table, "L", "B", "N"], "gb_stack_arrays fields differ from abi.FORWARD/BACKWARD"
    want_c = {"T": "void", "f8": "double", "i8": "int64_t"}
    for name, arg in table.items():
        ctype = fields[name].type
        assert ctype.kind == "pointer", name
        # (cffi drops const qualifiers, so only the pointed-to type is compared)
        assert ffi.getctype(ctype.item) == want_c[arg.kind], (name, ffi.getctype(ctype))
    for name, code in abi.ACT_CODE.items():
        assert getattr(lib, f"GB_{name.upper()}") == code, name
    consts = ["CLIP_NONE", "CLIP_VALUE", "CLIP_NORM", "I_ACT", "I_BN", "I_RESIDUAL", "I_CLIP", "I_RESCALE_FWD",
              "I_SIZE", "F_ACT_PARAM", "F_RES_SCALE", "F_CLIP", "F_BN_EPS", "F_SAT", "F_SIZE", "INFO_FORWARD",
              "INFO_BACKWARD", "INFO_SIZE", "EXP_CLAMP", "BN_ROWS", "OK", "EBADACT", "EBADARG", "ENOMEM"]
    for c in consts:
        assert getattr(lib, f"GB_{c}") == getattr(abi, c), c


def test_kernel_config_layout():
    st = gb.Stack(depth=4, width=3, activation="elu", activation_param=0.5, residual=2, residual_scale=0.3,
                  clip="value", clip_threshold=2.0, bn_eps=1e-3, batch_norm=True)
    icfg, fcfg = abi.kernel_config(st, True)
    assert icfg.shape == (abi.I_SIZE,) and fcfg.shape == (abi.F_SIZE,)
    assert icfg[abi.I_ACT] == spec.ACTIVATIONS.index("elu") and icfg[abi.I_BN] == 1 and icfg[abi.I_RESIDUAL] == 2
    assert icfg[abi.I_CLIP] == abi.CLIP_VALUE and icfg[abi.I_RESCALE_FWD] == 1
    assert fcfg[abi.F_ACT_PARAM] == 0.5 and fcfg[abi.F_RES_SCALE] == 0.3 and fcfg[abi.F_CLIP] == 2.0
    assert fcfg[abi.F_BN_EPS] == 1e-3 and fcfg[abi.F_SAT] == 0.01
    assert abi.signal_clip(st.replace(clip_on="layer")) == abi.CLIP_NONE


def _imports() -> dict[str, set[str]]:
    """gradbench's import graph from the sources (every import, at module level or inside a function)."""
    import ast
    from pathlib import Path

    root = Path(gb.__file__).parent
    graph = {}
    for path in root.rglob("*.py"):
        mod = "gradbench." + ".".join(path.relative_to(root).with_suffix("").parts)
        mod = mod.removesuffix(".__init__")
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level:
                base = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
                names = [f"{base}.{node.module}" if node.module else base]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            deps |= {n for n in names if n.startswith("gradbench.")}
        graph[mod] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_spec_depends_on_no_backend_and_the_import_graph_has_no_cycle():
    graph = _imports()
    assert graph["gradbench.spec"] == set(), f"gradbench.spec imports {graph['gradbench.spec']}"
    # the package itself re-exports everything: leave it out of the cycle search
    graph = {m: d - {"gradbench"} for m, d in graph.items() if m != "gradbench"}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
