/* The exported elementwise activation kernels (phi and phi' are in gb_internal.h). */
#include "gradbench.h"
#include "gb_internal.h"

#define DEFINE_ACTIVATION_KERNELS(T, SUFFIX)                                                   \
    /* a (n,), z (n,) */                                                                       \
    int gb_activation_forward_##SUFFIX(T *a, const T *z, int64_t n, int act, double param) {   \
        if (act < GB_IDENTITY || act > GB_GELU) return GB_EBADACT;                             \
        if (n < 0) return GB_EBADARG;                                                          \
        if (act == GB_TANH) { /* the array version the stack drivers use */                    \
            gb_tanh_##SUFFIX(a, z, n);                                                         \
            return GB_OK;                                                                      \
        }                                                                                      \
        for (int64_t i = 0; i < n; i++) a[i] = gb_phi_##SUFFIX(z[i], act, (T)param);           \
        return GB_OK;                                                                          \
    }                                                                                          \
    /* dz (n,), da (n,), z (n,) */                                                             \
    int gb_activation_backward_##SUFFIX(T *dz, const T *da, const T *z, int64_t n, int act,    \
                                        double param) {                                        \
        if (act < GB_IDENTITY || act > GB_GELU) return GB_EBADACT;                             \
        if (n < 0) return GB_EBADARG;                                                          \
        if (act == GB_TANH) { /* phi' = 1 - t*t with t from the array tanh */                  \
            T t[256];                                                                          \
            for (int64_t i0 = 0; i0 < n; i0 += 256) {                                          \
                const int64_t m = n - i0 < 256 ? n - i0 : 256;                                 \
                gb_tanh_##SUFFIX(t, z + i0, m);                                                \
                for (int64_t i = 0; i < m; i++) dz[i0 + i] = da[i0 + i] * ((T)1 - t[i] * t[i]); \
            }                                                                                  \
            return GB_OK;                                                                      \
        }                                                                                      \
        for (int64_t i = 0; i < n; i++) dz[i] = da[i] * gb_dphi_##SUFFIX(z[i], act, (T)param); \
        return GB_OK;                                                                          \
    }

DEFINE_ACTIVATION_KERNELS(double, f64)
DEFINE_ACTIVATION_KERNELS(float, f32)

int gb_have_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
