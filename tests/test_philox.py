"""csrc/philox.c (gb_philox_normals_f64/_f32, gb_philox_normals_at) against NumPy's own
Generator, bit for bit, at every instruction set the C code has (the `isa` fixture: the exported
functions at the best level this CPU runs, and each level forced through gb_philox_normals_at).

Every expected value here comes from ``numpy.random.Generator(numpy.random.Philox(...))``; the
rare paths of NumPy's ziggurat (wedge accepted, wedge rejected, tail, tail rejected once) are
found in NumPy's output itself: by the value (|x| > ziggurat_nor_r only from the tail) and by
how many 64-bit words NumPy's Philox consumed for one normal (its state: counter word 0 counts
blocks of four words, buffer_pos the words used of the last one).
"""

import numpy as np
import pytest

import gradbench as gb
from gradbench import params as gparams
from gradbench.params import KIND_B, KIND_W, GeneratedParams

_ck = pytest.importorskip("gradbench._ckernels", reason="C extension not built", exc_type=ImportError)
ffi, lib = _ck.ffi, _ck.lib

ZIGGURAT_NOR_R = 3.6541528853610088  # numpy ziggurat_constants.h ziggurat_nor_r
MASK64 = 2**64 - 1


def numpy_stream(seed, layer, kind, c0=0, c3=0):
    """NumPy's Philox(key=seed, counter=[c0, layer, kind, c3]) (words of up to 64 bits each)."""
    bg = np.random.Philox(key=seed, counter=c0 + layer * 2**64 + kind * 2**128 + c3 * 2**192)
    return bg, np.random.Generator(bg)


def numpy_normals(seed, first, layers, kind, n, scale=1.0, dtype=np.float64):
    """NumPy: scale * standard_normal(n) per layer, the float64 product cast to dtype."""
    out = np.empty((layers, n), dtype=dtype)
    with np.errstate(over="ignore"):  # float32 of a product beyond its range is inf
        for i in range(layers):
            out[i] = scale * numpy_stream(seed, first + i, kind)[1].standard_normal(n)
    return out


# 0: the exported gb_philox_normals_f64/_f32 (the best level this CPU runs); 1, 4: that level
# forced in gb_philox_normals_at (scalar, AVX-512; gb_opts.isa's values; level 3, AVX2, runs the
# scalar code)
ISA_NAMES = {0: "default", 1: "scalar", 4: "avx512"}


@pytest.fixture(params=sorted(ISA_NAMES), ids=ISA_NAMES.get)
def isa(request):
    level = request.param
    got = lib.gb_isa(ffi.new("gb_opts *", {"isa": level}))
    if level and got != level:
        pytest.skip(f"this CPU does not run the {ISA_NAMES[level]} level (gb_isa gives {got})")
    return level


def c_normals(seed, first, layers, kind, n, scale=1.0, dtype=np.float64, pad=0, isa=0, c0=0, c3=0):
    """The C function (isa 0 and counter words c0 = c3 = 0: the exported _f64/_f32 ones, else
    gb_philox_normals_at); ``pad`` sentinel entries on each side of the (layers, n) block are
    checked to stay untouched."""
    dtype = np.dtype(dtype)
    buf = np.full(layers * n + 2 * pad, 12345.5, dtype=dtype)
    out = buf[pad: pad + layers * n]
    ctype = "double *" if dtype == np.float64 else "float *"
    p = ffi.cast(ctype, ffi.from_buffer(out))
    if isa or c0 or c3:
        counter = ffi.new("uint64_t[4]", [c0, first, kind, c3])
        p64, p32 = (p, ffi.NULL) if dtype == np.float64 else (ffi.NULL, p)
        rc = lib.gb_philox_normals_at(seed & MASK64, seed >> 64, counter, layers, n, scale, p64, p32, isa)
    else:
        fn = lib.gb_philox_normals_f64 if dtype == np.float64 else lib.gb_philox_normals_f32
        rc = fn(seed & MASK64, seed >> 64, kind, first, layers, n, scale, p)
    assert rc == lib.GB_OK
    if pad:
        assert np.all(buf[:pad] == 12345.5) and np.all(buf[pad + layers * n:] == 12345.5)
    return out.reshape(layers, n)


def assert_same_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    u = np.uint64 if a.dtype == np.float64 else np.uint32
    np.testing.assert_array_equal(np.ascontiguousarray(a).view(u), np.ascontiguousarray(b).view(u))


def words_used(bg):
    """64-bit words a fresh NumPy Philox has handed out (it increments the counter before each block)."""
    st = bg.state
    return 4 * int(st["state"]["counter"][0]) - 4 + int(st["buffer_pos"])


_r = np.random.default_rng(20240601)
RANDOM_SEEDS = [int.from_bytes(_r.bytes(16), "little") for _ in range(3)]
SEEDS = [0, 1, 2**64 - 1, 2**64, 2**127 + 12345, 2**128 - 1, *RANDOM_SEEDS]
FIRST_LAYERS = [0, 1, 2**40, 2**63 - 3]


# ---------------------------------------------------------------- raw streams
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("first", FIRST_LAYERS)
def test_streams_equal_numpy_bit_for_bit(seed, first, isa):
    for kind in range(6):
        for n in (1, 3, 4, 5, 67):
            expect = numpy_normals(seed, first, 3, kind, n)
            assert_same_bits(c_normals(seed, first, 3, kind, n, pad=8, isa=isa), expect)


@pytest.mark.parametrize("n", [1, 3, 7, 8, 9, 31, 32, 33, 255, 4097])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lengths_off_the_vector_and_chunk_sizes(n, dtype, isa):
    # the vector code computes blocks (4 words) in groups of 32 (4 vectors of 8), 64 at most
    # per refill: lengths around and between those, and the normals a layer needs more
    seed = 2**127 + 12345
    assert_same_bits(c_normals(seed, 11, 4, KIND_W, n, 0.37, dtype, pad=8, isa=isa),
                     numpy_normals(seed, 11, 4, KIND_W, n, 0.37, dtype))


@pytest.mark.parametrize("c0_before_wrap", [1, 3, 8, 13, 31, 32, 33, 64, 70])
@pytest.mark.parametrize("words", [(7, 5, 0), (MASK64, 5, 2), (MASK64, MASK64, 9)])
def test_counter_carry_inside_a_group_of_blocks(c0_before_wrap, words, isa):
    # counter word 0 wraps after c0_before_wrap blocks: inside a vector, a group, or a refill,
    # carrying into word 1 (layer), through words 1 and 2 (both 2**64 - 1) into word 3; the
    # counters of a group are the ones philox_next makes, the carry included
    c1, c2, c3 = words
    c0 = 2**64 - c0_before_wrap
    for n in (5, 300):
        bg, g = numpy_stream(RARE_SEED, c1, c2, c0=c0, c3=c3)
        expect = g.standard_normal(n).reshape(1, n)
        assert int(bg.state["state"]["counter"][3]) == c3 + (n > 4 * c0_before_wrap and c1 == c2 == MASK64)
        assert_same_bits(c_normals(RARE_SEED, c1, 1, c2, n, pad=4, isa=isa, c0=c0, c3=c3), expect)


@pytest.mark.parametrize("seed", [0, 2**127 + 12345])
def test_last_layer_and_long_rows(seed, isa):
    # the largest layer number a stack can have, and 4096 normals (a 64 x 64 layer) per row
    assert_same_bits(c_normals(seed, 2**63 - 1, 1, 5, 4096, isa=isa), numpy_normals(seed, 2**63 - 1, 1, 5, 4096))
    assert_same_bits(c_normals(seed, 7, 4, KIND_W, 4096, isa=isa), numpy_normals(seed, 7, 4, KIND_W, 4096))


@pytest.mark.parametrize("scale", [0.17677669529663687, -3.7, 1e-310, 2.0**1000, 0.0])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_scale_is_one_rounding_and_float32_is_the_cast_product(scale, dtype, isa):
    # one multiply x * scale in float64 (NumPy's `std * standard_normal(...)`), then float32 of that
    seed = 2**100 + 99
    assert_same_bits(c_normals(seed, 3, 5, KIND_W, 257, scale, dtype, pad=4, isa=isa),
                     numpy_normals(seed, 3, 5, KIND_W, 257, scale, dtype))


def test_a_long_stream_with_tails_and_wedges(isa):
    # 2 048 000 normals: NumPy's ziggurat leaves the fast path about 1% of the time and takes
    # the tail (|x| > r) about 2.6e-4 of the time; both are counted in NumPy's own output
    seed, layers, n = 123, 500, 4096
    expect = numpy_normals(seed, 0, layers, KIND_W, n)
    extra_words = 0
    for l in (0, 1, 2):
        bg, g = numpy_stream(seed, l, KIND_W)
        g.standard_normal(n)
        extra_words += words_used(bg) - n
    assert extra_words > 50  # the slow paths draw extra words
    assert np.sum(np.abs(expect) > ZIGGURAT_NOR_R) > 100  # tail values
    assert np.any(expect > ZIGGURAT_NOR_R) and np.any(expect < -ZIGGURAT_NOR_R)
    assert_same_bits(c_normals(seed, 0, layers, KIND_W, n, isa=isa), expect)


# Layers of seed 20240601 (kind 0) whose first normal takes a given path of NumPy's ziggurat,
# found by searching NumPy's output (value, words consumed) and checked again below.
RARE_SEED = 20240601
RARE = {
    "wedge accepted": ([138, 169, 191], False, 2),          # word, uniform -> accepted
    "wedge rejected": ([107, 127, 327], False, 3),          # word, uniform -> rejected; word
    "two wedges": ([4547, 15004], False, 4),
    "three wedges": ([27979, 28040], False, 5),
    "tail": ([798, 2195, 16854], True, 3),                  # word (idx 0), two uniforms
    "tail rejected once": ([27250, 119413], True, 5),
}


@pytest.mark.parametrize("path", sorted(RARE))
def test_rare_paths_of_the_ziggurat(path, isa):
    layers, tail, words = RARE[path]
    for layer in layers:
        bg, g = numpy_stream(RARE_SEED, layer, KIND_W)
        x = g.standard_normal(1)
        assert (abs(x[0]) > ZIGGURAT_NOR_R) == tail and words_used(bg) == words, (path, layer)
        assert_same_bits(c_normals(RARE_SEED, layer, 1, KIND_W, 1, isa=isa), x.reshape(1, 1))
        # and the normals after it in the same stream
        expect = numpy_normals(RARE_SEED, layer, 1, KIND_W, 9)
        assert_same_bits(c_normals(RARE_SEED, layer, 1, KIND_W, 9, isa=isa), expect)


def test_first_normal_of_many_layers(isa):
    # one normal per layer over 30000 layers: every path above occurs several times
    layers = 30000
    expect = np.array([numpy_stream(RARE_SEED, l, KIND_W)[1].standard_normal() for l in range(layers)])
    assert np.sum(np.abs(expect) > ZIGGURAT_NOR_R) >= 3
    assert_same_bits(c_normals(RARE_SEED, 0, layers, KIND_W, 1, isa=isa)[:, 0], expect)


def test_empty_and_bad_arguments():
    out = np.full(8, 7.0)
    p = ffi.cast("double *", ffi.from_buffer(out))
    for layers, n in ((0, 4), (2, 0), (0, 0)):
        assert lib.gb_philox_normals_f64(1, 2, 0, 5, layers, n, 1.0, p) == lib.GB_OK
        assert lib.gb_philox_normals_f64(1, 2, 0, 5, layers, n, 1.0, ffi.NULL) == lib.GB_OK
    for first, layers, n in ((-1, 1, 1), (0, -1, 1), (0, 1, -1)):
        assert lib.gb_philox_normals_f64(1, 2, 0, first, layers, n, 1.0, p) == lib.GB_EBADARG
    assert lib.gb_philox_normals_f64(1, 2, 0, 0, 1, 1, 1.0, ffi.NULL) == lib.GB_EBADARG
    # gb_philox_normals_at: exactly one output, a counter
    ctr, p32 = ffi.new("uint64_t[4]"), ffi.cast("float *", p)
    for c, o64, o32 in ((ctr, ffi.NULL, ffi.NULL), (ctr, p, p32), (ffi.NULL, p, ffi.NULL)):
        assert lib.gb_philox_normals_at(1, 2, c, 1, 1, 1.0, o64, o32, 0) == lib.GB_EBADARG
    assert lib.gb_philox_normals_at(1, 2, ctr, -1, 1, 1.0, p, ffi.NULL, 0) == lib.GB_EBADARG
    assert lib.gb_philox_normals_at(1, 2, ctr, 1, -1, 1.0, p, ffi.NULL, 0) == lib.GB_EBADARG
    assert np.all(out == 7.0)


# ---------------------------------------------------------------- GeneratedParams
NORMAL = ["normal", "xavier_normal", "he_normal", "lecun_normal"]


def _numpy_path(monkeypatch, gp, start, stop):
    with monkeypatch.context() as m:
        m.setattr(gparams, "C_NORMALS", False)
        return gp.weights(start, stop), gp.biases(start, stop)


@pytest.mark.parametrize("init", NORMAL)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("sigma_b", [0.0, 0.3])
def test_generated_params_c_path_equals_numpy_path(monkeypatch, init, dtype, sigma_b):
    stack = gb.Stack(depth=40, width=13, init=init, sigma_w=1.3, sigma_b=sigma_b, dtype=dtype)
    gp = GeneratedParams(stack, seed=2**90 + 5)
    W_np, b_np = _numpy_path(monkeypatch, gp, 0, 40)
    assert gparams._c_philox()  # the C path is the one taken below: the NumPy streams are not used
    with monkeypatch.context() as m:
        m.setattr(gparams, "stream", lambda *a: pytest.fail("NumPy stream used on the C path"))
        W, b = gp.weights(0, 40), gp.biases(0, 40)
        W_seg = np.concatenate([gp.weights(a, a + 9) for a in range(0, 36, 9)] + [gp.weights(36, 40)])
        buf_w, buf_b = np.empty((5, 13, 13), dtype=dtype), np.empty((5, 13), dtype=dtype)
        W5, b5, *_ = gp.segment(30, 35, out=(buf_w, buf_b))
    assert W.dtype == np.dtype(dtype) and b.dtype == np.dtype(dtype)
    assert_same_bits(W, W_np)
    assert_same_bits(b, b_np)
    assert_same_bits(W_seg, W_np)
    assert_same_bits(W5, W_np[30:35])
    assert_same_bits(b5, b_np[30:35])
    assert (not np.any(b)) == (sigma_b == 0.0)


def test_generated_params_match_the_documented_numpy_expression():
    stack = gb.Stack(depth=3, width=64, init="he_normal", sigma_b=0.5)
    gp = GeneratedParams(stack, seed=2**127 + 12345)
    W, b = gp.weights(0, 3), gp.biases(0, 3)
    for l in range(3):
        g = np.random.Generator(np.random.Philox(key=gp.seed, counter=l * 2**64 + KIND_W * 2**128))
        assert_same_bits(W[l], np.sqrt(2.0) / np.sqrt(64) * g.standard_normal((64, 64)))
        g = np.random.Generator(np.random.Philox(key=gp.seed, counter=l * 2**64 + KIND_B * 2**128))
        assert_same_bits(b[l], 0.5 * g.standard_normal(64))


def test_biases_into_an_out_the_c_path_cannot_take(monkeypatch):
    stack = gb.Stack(depth=6, width=8, init="he_normal", sigma_b=0.2)
    gp = GeneratedParams(stack, seed=3)
    expect = _numpy_path(monkeypatch, gp, 0, 6)[1]
    strided = np.zeros((6, 16))[:, ::2]  # not contiguous: NumPy path, same numbers
    assert_same_bits(np.ascontiguousarray(gp.biases(0, 6, out=strided)), expect)


def test_without_the_extension_the_numpy_path_is_taken(monkeypatch):
    stack = gb.Stack(depth=4, width=6, init="lecun_normal", sigma_b=0.1, dtype="float32")
    gp = GeneratedParams(stack, seed=11)
    W, b = gp.weights(0, 4), gp.biases(0, 4)
    monkeypatch.setattr(gparams, "_c_philox_lib", False)
    assert not gparams._c_philox()
    assert_same_bits(gp.weights(0, 4), W)
    assert_same_bits(gp.biases(0, 4), b)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("group_bytes", [1, 2**20])  # one block at a time, several
def test_generated_sequence_steps_are_numpys_blocks(monkeypatch, dtype, group_bytes):
    """GeneratedSequence.steps draws its blocks in one C call (csrc/philox.c); every range, also
    one that starts or ends inside a block, is the documented NumPy expression's, cast to the dtype."""
    from gradbench.recurrent import params as rparams

    monkeypatch.setattr(rparams, "GROUP_BYTES", group_bytes)
    rnn = gb.Recurrent(cell="gru", steps=1500, hidden=4, input_dim=3, dtype=dtype)
    seq = gb.GeneratedSequence(rnn, 5, seed=2**70 + 12345)
    blocks = [np.random.Generator(np.random.Philox(key=2**70 + 12345, counter=[0, k, rparams.KIND_X, 0]))
              .standard_normal((rparams.BLOCK, 5, 3)) for k in range(-(-1500 // rparams.BLOCK))]
    want = np.concatenate(blocks)[:1500].astype(dtype)
    for a, b in [(0, 1500), (0, 1), (255, 257), (300, 1100), (1499, 1500), (700, 700)]:
        got = seq.steps(a, b)
        assert got.dtype == np.dtype(dtype) and got.tobytes() == want[a:b].tobytes(), (a, b)
