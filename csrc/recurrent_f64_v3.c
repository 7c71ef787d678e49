/* The recurrent f64 kernels for x86-64 CPUs with AVX2 and FMA (x86-64-v3); recurrent_dispatch.c calls them there. */
#define GB_ISA v3
#define GB_ISA_LEVEL 3
#include "target_begin.h"
#ifdef GB_TARGET_ON
#include "recurrent_f64.c"
#include "target_end.h"
#else
typedef int gb_no_recurrent_f64_v3; /* another architecture: ISO C wants a declaration */
#endif
