/* The histogram fill for x86-64 CPUs with AVX-512 (x86-64-v4); gb_histogram_fill (histogram.c) calls it there. */
#define GB_ISA v4
#define GB_ISA_LEVEL 4
#include "target_begin.h"
#ifdef GB_TARGET_ON
#include "histogram.c"
#include "target_end.h"
#else
typedef int gb_no_histogram_v4; /* another architecture: ISO C wants a declaration */
#endif
