/* One core's floating-point peak, measured: 16 independent chains of float64 fused multiply-adds
 * on the widest vectors the compiler targets (built with -O2 -march=native -ffp-contract=fast by
 * benchmarks/target_runner.py, mode "fma"), best of 5 runs of 2e8 vector FMAs. Prints GF/s. */
#include <stdio.h>
#include <time.h>

typedef double vd __attribute__((vector_size(64))); /* 8 doubles: one AVX-512 register, two AVX2 */

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(void) {
    vd a[16], b, c;
    for (int j = 0; j < 8; j++) {
        b[j] = 1.0000001;
        c[j] = 1e-9;
    }
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 8; j++) a[i][j] = i + j;
    const long n = 12500000; /* x 16 chains = 2e8 vector FMAs */
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        const double t = now();
        for (long k = 0; k < n; k++) {
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) a[i] = a[i] * b + c;
        }
        const double gf = (double)n * 16 * 8 * 2 / (now() - t) / 1e9;
        best = gf > best ? gf : best;
    }
    double sum = 0;
    for (int i = 0; i < 16; i++) sum += a[i][0];
    printf("%.3f %g\n", best, sum); /* the sum keeps the loop alive */
    return 0;
}
