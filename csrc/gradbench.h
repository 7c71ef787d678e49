/* gradbench C kernels: the one header that cffi binds (API mode).
 *
 * Dimension letters: L depth, B batch, N width. Arrays are C-contiguous, of one dtype
 * (suffix _f64 for double, _f32 for float), owned by the caller; no function allocates
 * per layer or keeps global state. Every function returns GB_OK or an error code that
 * Python turns into an exception.
 *
 * Only the text between the cffi markers is given to ffibuilder.cdef(), so it must stay
 * plain declarations (no macros, no includes).
 */
#ifndef GRADBENCH_H
#define GRADBENCH_H

#include <stdint.h>

/* cffi-begin */
/* error codes */
#define GB_OK 0
#define GB_EBADACT 1
#define GB_EBADARG 2
#define GB_ENOMEM 3

/* activation codes, the order of gradbench.spec.ACTIVATIONS */
#define GB_IDENTITY 0
#define GB_SIGMOID 1
#define GB_TANH 2
#define GB_RELU 3
#define GB_LEAKY_RELU 4
#define GB_PRELU 5
#define GB_ELU 6
#define GB_SELU 7
#define GB_SWISH 8
#define GB_GELU 9

/* a = phi(z), elementwise over n entries.    a, z (n,) */
int gb_activation_forward_f64(double *a, const double *z, int64_t n, int act, double param);
int gb_activation_forward_f32(float *a, const float *z, int64_t n, int act, double param);
/* dz = da * phi'(z) (left derivative at the ReLU kink).    dz, da, z (n,) */
int gb_activation_backward_f64(double *dz, const double *da, const double *z, int64_t n, int act, double param);
int gb_activation_backward_f32(float *dz, const float *da, const float *z, int64_t n, int act, double param);
/* cffi-end */

#endif
