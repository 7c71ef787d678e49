/* The histogram fill for x86-64 CPUs with AVX2 and FMA (x86-64-v3); gb_histogram_fill (histogram.c) calls it there. */
#define GB_ISA v3
#define GB_ISA_LEVEL 3
#include "target_begin.h"
#ifdef GB_TARGET_ON
#include "histogram.c"
#include "target_end.h"
#else
typedef int gb_no_histogram_v3; /* another architecture: ISO C wants a declaration */
#endif
