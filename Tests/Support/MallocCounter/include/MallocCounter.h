#ifndef DISCO_MALLOC_COUNTER_H
#define DISCO_MALLOC_COUNTER_H
/// Counts heap allocations made by the calling thread between start and stop, by replacing
/// malloc & co. in the test binary (glibc allows it; the real work is done by __libc_*).
/// Test-only: proves the DNS answer path allocates nothing per query.
void disco_malloc_counting_start(void);
unsigned long disco_malloc_counting_stop(void);
#endif
