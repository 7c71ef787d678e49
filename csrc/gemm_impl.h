/* The own matrix products' kernels, written once over the real type T: the register tiles and
 * the blocks of k they are cut into, shared by the stack drivers (csrc/stack_impl.h) and the
 * recurrent cells (csrc/recurrent_impl.h). The includer defines T, F (its instance's names),
 * TFMA and GB_MIN. Every C entry is one FMA chain over k in order (float32: in blocks of GB_KB),
 * whichever tile computes it: the drivers may split the rows or the columns of C between threads
 * and get the same bits. */
#ifdef __FMA__ /* hardware FMA: fma() compiles to one (vector) instruction */
#define MADD(a, b, c) TFMA(a, b, c)
#else
#define MADD(a, b, c) ((a) * (b) + (c))
#endif

/* ------------------------------------------------------------------ matrix products */
/* Register tile: C (R,NC) = [C +] A (R,K) Bm (K,NC) [+ bias (NC,)]; A(r,k) = A[r*sam + k*sak].
 * Each C entry is one FMA chain over k in order, then the bias. cin (a later block of k):
 * GB_CIN_ADD, C's own values are added to the chain (float32's blocks, gb_gemm_block);
 * GB_CIN_CHAIN, the chain starts from C's values: it goes on where the block before stopped,
 * so the blocks give the bits of one chain (float64's cache blocks, gb_gemm_own_pf). */
#define GB_CIN_ADD 1
#define GB_CIN_CHAIN 2
#define GB_TILE(R, NC)                                                                          \
    static inline void F(gb_tile_##R##x##NC)(T *C, int64_t ldc, const T *A, int64_t sam,       \
                                             int64_t sak, const T *Bm, int64_t ldb, int64_t K, \
                                             const T *bias, int cin) {                         \
        T acc[R][NC];                                                                          \
        for (int r = 0; r < R; r++)                                                            \
            for (int c = 0; c < NC; c++) acc[r][c] = cin == GB_CIN_CHAIN ? C[r * ldc + c] : 0; \
        for (int64_t k = 0; k < K; k++) {                                                      \
            const T *bk = Bm + k * ldb;                                                        \
            for (int r = 0; r < R; r++) {                                                      \
                const T a = A[r * sam + k * sak];                                              \
                for (int c = 0; c < NC; c++) acc[r][c] = MADD(a, bk[c], acc[r][c]);            \
            }                                                                                  \
        }                                                                                      \
        for (int r = 0; r < R; r++)                                                            \
            for (int c = 0; c < NC; c++) {                                                     \
                T out = cin == GB_CIN_ADD ? C[r * ldc + c] + acc[r][c] : acc[r][c];            \
                C[r * ldc + c] = bias ? out + bias[c] : out;                                   \
            }                                                                                  \
    }

GB_TILE(4, 16)
GB_TILE(4, 8)
GB_TILE(4, 1)
GB_TILE(1, 16)
GB_TILE(1, 8)
GB_TILE(1, 1)

#if defined(__GNUC__) && !defined(GB_PLAIN_C)
/* Vector tiles through the GCC/Clang vector extension: an R x NV*VL block of C lives in
 * R*NV vector registers over the whole k loop (plain C11 tiles above are the fallback and
 * the remainder). The vectors are the instance's own width (AVX-512: 64 bytes, 4 x 4 tiles
 * in 32 registers; AVX2 and the baseline's SSE2: 32 / 16 bytes, 4 x 3 tiles in 16), and a
 * half-width vector for the remainder. Contraction to FMA is switched on for these
 * functions (the build does it everywhere; this keeps it under GRADBENCH_CFLAGS too). */
#define GB_HAVE_VTILES 1
#if defined(__AVX512F__)
#define GB_VB 64
#define GB_NVW 4
#elif defined(__AVX__)
#define GB_VB 32
#define GB_NVW 3
#else
#define GB_VB 16
#define GB_NVW 3
#endif
typedef T F(gb_vw) __attribute__((vector_size(GB_VB)));     /* the instance's vector */
typedef T F(gb_vh) __attribute__((vector_size(GB_VB / 2))); /* half of it */
#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")
#define GB_VTILE(R, NV, V) GB_VTILE_(R, NV, V)
#define GB_VTILE_(R, NV, V)                                                                     \
    static void F(gb_vtile_##R##x##NV##_##V)(T *C, int64_t ldc, const T *A, int64_t sam,       \
                                             int64_t sak, const T *Bm, int64_t ldb, int64_t K, \
                                             const T *bias, int cin) {                         \
        typedef F(V) vt;                                                                       \
        enum { VL = sizeof(vt) / sizeof(T) };                                                  \
        vt acc[R][NV];                                                                         \
        _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                    \
            _Pragma("GCC unroll 8") for (int v = 0; v < NV; v++) {                             \
                acc[r][v] = (vt){0};                                                           \
                if (cin == GB_CIN_CHAIN) memcpy(&acc[r][v], C + r * ldc + v * VL, sizeof(vt)); \
            }                                                                                  \
        for (int64_t k = 0; k < K; k++) {                                                      \
            vt bv[NV];                                                                         \
            _Pragma("GCC unroll 8") for (int v = 0; v < NV; v++)                               \
                memcpy(&bv[v], Bm + k * ldb + v * VL, sizeof(vt));                             \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) {                              \
                const vt a = A[r * sam + k * sak] - (vt){0}; /* broadcast (x - 0 = x, -0 too) */ \
                _Pragma("GCC unroll 8") for (int v = 0; v < NV; v++) acc[r][v] += a * bv[v];   \
            }                                                                                  \
        }                                                                                      \
        _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                    \
            _Pragma("GCC unroll 8") for (int v = 0; v < NV; v++) {                             \
                vt out = acc[r][v];                                                            \
                if (cin == GB_CIN_ADD) {                                                       \
                    vt old;                                                                    \
                    memcpy(&old, C + r * ldc + v * VL, sizeof(vt));                            \
                    out = old + out;                                                           \
                }                                                                              \
                if (bias) {                                                                    \
                    vt bb;                                                                     \
                    memcpy(&bb, bias + v * VL, sizeof(vt));                                    \
                    out = out + bb;                                                            \
                }                                                                              \
                memcpy(C + r * ldc + v * VL, &out, sizeof(vt));                                \
            }                                                                                  \
    }
GB_VTILE(4, GB_NVW, gb_vw)
GB_VTILE(4, 2, gb_vw)
GB_VTILE(4, 1, gb_vw)
GB_VTILE(4, 1, gb_vh)
GB_VTILE(1, GB_NVW, gb_vw)
GB_VTILE(1, 2, gb_vw)
GB_VTILE(1, 1, gb_vw)
GB_VTILE(1, 1, gb_vh)
#endif

/* One block of at most 4 rows and nw columns and one block of k, cut into the register tiles
 * (cin: GB_CIN_ADD or GB_CIN_CHAIN for a later block of k). C's rows are ldc apart, Bm's ldb. */
static void F(gb_gemm_kblock)(T *C, const T *A, int64_t sam, int64_t sak, const T *Bm,
                              const T *bias, int64_t mr, int64_t nw, int64_t K, int64_t ldc, int64_t ldb,
                              int cin) {
#define GB_CALL(NAME, W)                                                                       \
    for (; c + (W) <= nw; c += (W))                                                            \
        NAME(C + c, ldc, A, sam, sak, Bm + c, ldb, K, bias ? bias + c : NULL, cin);
#ifdef GB_HAVE_VTILES
#define GB_VNAME(R, NV, V) GB_VNAME_(R, NV, V)
#define GB_VNAME_(R, NV, V) F(gb_vtile_##R##x##NV##_##V)
#define GB_ROWS(R)                                                                             \
    {                                                                                          \
        const int64_t VW = GB_VB / sizeof(T);                                                  \
        int64_t c = 0;                                                                         \
        GB_CALL(GB_VNAME(R, GB_NVW, gb_vw), GB_NVW * VW)                                       \
        GB_CALL(GB_VNAME(R, 2, gb_vw), 2 * VW)                                                 \
        GB_CALL(GB_VNAME(R, 1, gb_vw), VW)                                                     \
        GB_CALL(GB_VNAME(R, 1, gb_vh), VW / 2)                                                 \
        GB_CALL(F(gb_tile_##R##x1), 1)                                                         \
    }
#else
#define GB_ROWS(R)                                                                             \
    {                                                                                          \
        int64_t c = 0;                                                                         \
        GB_CALL(F(gb_tile_##R##x16), 16)                                                       \
        GB_CALL(F(gb_tile_##R##x8), 8)                                                         \
        GB_CALL(F(gb_tile_##R##x1), 1)                                                         \
    }
#endif
    if (mr == 4) {
        GB_ROWS(4)
    } else {
        for (int64_t r = 0; r < mr; r++, C += ldc, A += sam) GB_ROWS(1)
    }
#undef GB_ROWS
#undef GB_CALL
}

/* float32 sums k in blocks of GB_KB (each an FMA chain, added to C in order, then the bias):
 * the rounding error of one chain grows with its length (a bound of K eps, 1.2e-4 at K = 2048),
 * of blocks with GB_KB + K / GB_KB. K <= GB_KB is one chain, as float64 always is. Measured
 * against float64 on the same float32 weights (N = 512 / 700, batch norm over B = 4 / 8, 8 seeds,
 * max relative error of dW): blocks of 64 10^-5.76 / -5.49 median, -4.48 / -5.32 worst; BLAS
 * -5.51 / -5.31 and -4.46 / -5.11; one chain was up to 3.5x worse than BLAS. */
#define GB_KB(T_) (sizeof(T_) == sizeof(float) ? (int64_t)64 : INT64_MAX)

/* One block of at most 4 rows and nw columns over k in [k0, k1) of a product over K: float32 in
 * its GB_KB blocks (counted from k = 0; k0 a multiple of GB_KB), float64 one chain, continued
 * from C when k0 > 0; the bias after the last k. Bm holds B's rows k0, k0 + 1, ..., ldb apart.
 * beta: C's values before the product are added to its first block of k (C += A Bm). */
static void F(gb_gemm_block)(T *C, const T *A, int64_t sam, int64_t sak, const T *Bm, const T *bias,
                             int64_t mr, int64_t nw, int64_t k0, int64_t k1, int64_t K, int64_t ldc,
                             int64_t ldb, int beta) {
    int64_t k = k0;
    do { /* K = 0: one empty block, C = bias or 0 */
        const int64_t kb = GB_MIN(GB_KB(T), k1 - k);
        const int cin = k > 0 ? (sizeof(T) == sizeof(float) ? GB_CIN_ADD : GB_CIN_CHAIN) : beta ? GB_CIN_ADD : 0;
        F(gb_gemm_kblock)(C, A + k * sak, sam, sak, Bm + (k - k0) * ldb, k + kb == K ? bias : NULL, mr, nw, kb,
                          ldc, ldb, cin);
        k += kb;
    } while (k < k1);
}

/* Products over more than GB_KC rows of B (K > GB_KC) take B in panels of GB_KC rows x GB_PW
 * columns, copied next to each other into the calling thread's scratch block (gb_thread_scratch)
 * and used by every block of rows of C: a panel stays in L2 (256 KiB in float64), where B's own
 * rows, N apart, kept falling out of it (a power-of-two N maps them onto few cache sets). Each C
 * entry is still one FMA chain over k in order (float64: continued from C, GB_CIN_CHAIN; float32:
 * its GB_KB blocks, added in order), so the bits are those of the unpacked loop. Measured, one
 * thread, Zen 5, float64 M = 512, N = K = 2048: 28 GF/s unpacked, 78-91 GF/s packed, where
 * OpenBLAS's AVX2 kernels ran 59-61 GF/s. */
#define GB_KC 256
#define GB_PW 128
_Static_assert(GB_KC % 64 == 0, "a panel of k starts float32's blocks of GB_KB = 64");

#ifdef GB_HAVE_VTILES
#pragma GCC pop_options /* the tiles inline into gb_gemm_kblock: one contraction for both */
#endif
