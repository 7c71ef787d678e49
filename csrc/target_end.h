/* Closes target_begin.h. */
#if defined(GB_TARGET_ON) && defined(__clang__)
#pragma clang attribute pop
#endif
