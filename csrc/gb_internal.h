/* Declarations shared between the C sources but not bound by cffi. */
#ifndef GB_INTERNAL_H
#define GB_INTERNAL_H

#include <stdint.h>
#include "activations.h"
#include "gradbench.h"

/* Exponent differences are clamped to +-GB_EXP_CLAMP (gradbench.h) before ldexp. */
static inline int gb_clamp_exp(int64_t e) {
    return e > GB_EXP_CLAMP ? GB_EXP_CLAMP : (e < -GB_EXP_CLAMP ? -GB_EXP_CLAMP : (int)e);
}

#endif
